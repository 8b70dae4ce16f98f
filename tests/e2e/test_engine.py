"""The UDP backend's C engine in a netns lab: 10 MB TCP transfers arrive
byte-identical between two engine nodes (both ways) and between an engine node
and a Python data-path node (both ways), with the tun's superpackets in use:
the engine segments TSO reads and writes coalesced superpackets (the old C
path, one packet per tun read and write, had neither counter). A node's
engine swaps peer tables live (a joining node is reachable at once). A --udp-checksum
node (UDP GSO out, checksummed datagrams on the wire) and a default node
(checksum 0) exchange 10 MB both ways intact, as does a Python data-path node
with --udp-checksum: receivers take both wire forms."""

from __future__ import annotations

import time

import pytest
from scapy.layers.inet import UDP

from overlayd.dataplane import fast

from .tools import Capture, tcp_transfer, wait_for

pytestmark = [pytest.mark.root, pytest.mark.etcd,
              pytest.mark.skipif(not fast.available(), reason="the C fast path is not built")]


def stats(lab, node) -> dict:
    """The node's counters, from a status file written after this call (every 2 s)."""
    since = time.time()
    assert wait_for(lambda: lab.node_status(node)["updated"] > since, timeout=10)
    return lab.node_status(node)["stats"]


def test_tcp_through_the_engine_both_ways_and_with_the_python_path(make_lab, tmp_path):
    lab = make_lab("udp", nodes=3, variants=[{"datapath": "c"}, {"datapath": "c"}, {"datapath": "python"}])
    c1, c2, py = lab.nodes
    for src, dst in ((c1, c2), (c2, c1), (c1, py), (py, c2)):
        sent, received = tcp_transfer(lab, src.pods[0], dst.pods[0], tmp_path)
        assert sent == received, (src.name, dst.name)
    for node in (c1, c2):
        s = stats(lab, node)
        assert s.get("dev_rx_superpackets", 0) > 0, s   # TSO reads, segmented in C
        assert s.get("dev_tx_superpackets", 0) > 0, s   # GRO-style writes
        assert s["tx_packets"] > s["dev_rx_packets"], s  # more datagrams than tun reads
        assert not {k for k in s if k.startswith(("dev_write_error", "tx_error"))}, s
    assert "dev_rx_superpackets" not in stats(lab, py)

    late = lab.add_node(datapath="c", pods=1)
    assert lab.ping(c1.pods[0], late.pods[0].ip) and lab.ping(late.pods[0], c2.pods[0].ip)


def test_udp_checksum_node_and_default_node_interoperate(make_lab, tmp_path):
    csum = {"extra_args": ["--udp-checksum"]}
    lab = make_lab("udp", nodes=3, variants=[{"datapath": "c", **csum}, {"datapath": "c"},
                                             {"datapath": "python", **csum}])
    on, off, py = lab.nodes
    # the checksum node's data (GSO sends) and the default node's ACKs, as they cross the underlay
    with Capture(off.netns, "eth0", f"udp and src host {on.ip}", tmp_path / "from-csum.pcap") as from_on, \
            Capture(on.netns, "eth0", f"udp and src host {off.ip}", tmp_path / "from-default.pcap") as from_off:
        sent, received = tcp_transfer(lab, on.pods[0], off.pods[0], tmp_path)
    assert sent == received
    assert len(from_on.packets) == len(from_off.packets) == 50
    assert all(p[UDP].chksum != 0 for p in from_on.packets), [p[UDP].chksum for p in from_on.packets]
    assert all(p[UDP].chksum == 0 for p in from_off.packets), [p[UDP].chksum for p in from_off.packets]
    for src, dst in ((off, on), (py, on), (on, py)):
        sent, received = tcp_transfer(lab, src.pods[0], dst.pods[0], tmp_path)
        assert sent == received, (src.name, dst.name)
    s_on, s_off = stats(lab, on), stats(lab, off)
    assert s_on.get("tx_gso_sends", 0) > 0 and "tx_gso_sends" not in s_off, (s_on, s_off)
    assert s_off.get("rx_coalesced", 0) > 0, s_off  # the checksum node's GSO sends, split by the default node
    for s in (s_on, s_off):
        assert not {k for k in s if k.startswith(("dev_write_error", "tx_error", "drop_truncated", "drop_bad_ip",
                                                  "drop_spoofed", "drop_not_ipv4"))}, s  # split right
