"""The UDP backend's C engine in a netns lab: 10 MB TCP transfers arrive
byte-identical between two engine nodes (both ways) and between an engine node
and a Python data-path node (both ways), with the tun's superpackets in use:
the engine segments TSO reads and writes coalesced superpackets (the old C
path, one packet per tun read and write, had neither counter). A node's
engine swaps peer tables live (a joining node is reachable at once)."""

from __future__ import annotations

import time

import pytest

from overlayd.dataplane import fast

from .tools import tcp_transfer, wait_for

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
