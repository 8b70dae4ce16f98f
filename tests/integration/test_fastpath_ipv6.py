"""TCP over IPv6 superpackets through the C engine on the UDP wire (issue 17), end to end without root
(the rig of test_fastpath_loop: a datagram socketpair stands in for the vnet_hdr tun, peers on
127.0.0.x): a TSO6 read leaves as the datagrams gso.segment cuts, a peer's consecutive IPv6 segments
are written as the one GSO_TCPV6 superpacket gso.coalesce makes, and a segment whose inner source
the peer does not lease is refused among them."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from overlayd.dataplane import fast
from overlayd.dataplane.codecs import UdpCodec
from overlayd.dataplane.loop import DataPlane, Sender
from overlayd.encap import gso
from overlayd.encap.drops import Drop
from overlayd.encap.table import Peer, PeerTable
from tests.integration.test_fastpath_loop import OFF_PORT, OWN, PEERS, ROGUE, drain, rigs  # noqa: F401 (a fixture)
from tests.unit.test_gso_ipv6 import tcp6, tso6

pytestmark = pytest.mark.skipif(not fast.available(), reason="the C fast path is not built")

MTU = 1472
MSS = MTU - 60
OWN6 = ipaddress.IPv6Network("fd00:10:244:1::/64")
PEER = "127.0.0.2"
SUBNET6 = {"127.0.0.2": "fd00:10:244:2::/64", "127.0.0.3": "fd00:10:244:3::/64"}


def ipv6_rig(rigs, udp_gso: bool, cls=fast.FastDataPlane, vnet_hdr: bool = True):
    """A UDP rig on a dual-stack table whose plane (``cls``) reads and writes the stand-in tun, with
    virtio headers when ``vnet_hdr``."""
    rig = rigs(cls, udp_gso=udp_gso)
    rig.table = PeerTable(24, 64)
    for ip, subnet in PEERS.items():
        rig.table.set(subnet, Peer(ip))
        rig.table.set(ipaddress.IPv6Network(SUBNET6[ip]), Peer(ip))
    rig.codec = UdpCodec(rig.table, OWN, rig.port, own_subnet6=OWN6, mtu=MTU)
    extra = {"udp_gso": udp_gso} if cls is fast.FastDataPlane else {}
    rig.plane = cls(rig.dev_ours.fileno(), rig.sock, rig.codec, Sender(rig.sock, rig.port, rig.counters),
                    rig.counters, vnet_hdr=vnet_hdr, **extra)
    return rig


@pytest.mark.parametrize("udp_gso", [False, True])
async def test_ipv6_superpackets_both_ways(rigs, udp_gso):
    rig = ipv6_rig(rigs, udp_gso)
    loop = asyncio.get_running_loop()
    hdr, pkt = tso6(bytes(range(256)) * 40, MSS, src="fd00:10:244:1::5", dst="fd00:10:244:2::7")
    rig.dev.send(hdr.pack() + pkt)
    back = [tcp6(bytes([i]) * MSS, seq=9000 + i * MSS, src="fd00:10:244:2::7", dst="fd00:10:244:1::5")
            for i in range(5)]
    spoofed = tcp6(b"s" * MSS, seq=9000 + 5 * MSS, src="fd00:10:244:3::7", dst="fd00:10:244:1::5")
    for seg in back + [spoofed]:
        rig.send_in(PEER, seg)
    rig.plane.start(loop)

    # out: the TSO6 read leaves as the segments gso.segment cuts, to the peer leasing the IPv6 destination
    want = gso.segment(hdr, pkt)
    assert len(want) == 8 and all(len(s) <= MTU for s in want)
    assert [await asyncio.to_thread(rig.peers[PEER].recv, 65535) for _ in want] == want
    # in: the peer's five segments as one GSO_TCPV6 write; the spoofed one refused
    (joined_hdr, joined), = gso.coalesce(back)
    assert joined_hdr.gso_type == gso.GSO_TCPV6
    assert await asyncio.wait_for(loop.sock_recv(rig.dev, 65535), 2) == joined_hdr.pack() + joined
    # the counters are published after the batch that sent: wait for all of them (KeyError under load)
    snap = await rig.wait_for(drop_spoofed_source=1, dev_tx_packets=1, tx_packets=8, dev_rx_superpackets=1,
                              dev_tx_superpackets=1)
    assert (snap["dev_rx_superpackets"], snap["tx_packets"], snap["dev_tx_superpackets"]) == (1, 8, 1)
    assert snap.get("tx_gso_sends", 0) == udp_gso


async def test_packet_too_big_from_the_engine_quotes_what_python_quotes(rigs):
    """A packet over the tunnel MTU is answered with ICMPv6 Packet Too Big quoting as much of it as fits
    in 1280 bytes (RFC 4443 2.4 (c)), from the C engine exactly as from the Python reference."""
    rig = ipv6_rig(rigs, False)
    loop = asyncio.get_running_loop()
    big = tcp6(bytes(range(256)) * 6, src="fd00:10:244:1::5", dst="fd00:10:244:2::7")
    assert len(big) > MTU
    rig.dev.send(gso.NO_OFFLOAD_HEADER + big)
    rig.plane.start(loop)
    answer = await asyncio.wait_for(loop.sock_recv(rig.dev, 65535), 2)
    want = UdpCodec(rig.table, OWN, rig.port, own_subnet6=OWN6, mtu=MTU).answer(Drop.TOO_BIG, big, 0.0)
    assert len(want) == 1280 and answer == gso.NO_OFFLOAD_HEADER + want
    assert (await rig.wait_for(drop_too_big=1))["drop_too_big"] == 1


def v6(src: str, dst: str, payload: bytes = b"y" * 16) -> bytes:
    return tcp6(payload, src=src, dst=dst)


async def run_ipv6_traffic(rig) -> tuple[dict, list[bytes], list[bytes]]:
    """IPv6 packets out and in covering every IPv6 verdict: (settled counters, device writes, datagrams
    the peer at 127.0.0.2 got)."""
    loop = asyncio.get_running_loop()
    out = [v6("fd00:10:244:1::5", "fd00:10:244:2::7"), v6("fd00:10:244:1::5", "fd00:10:244:3::7"),
           v6("fd00:10:244:1::5", "fd00:10:244:9::9"),                      # no_lease: unreachable answer
           v6("fd00:10:244:1::5", "fd00:10:244:2::7", b"b" * 1500),         # too_big: Packet Too Big answer
           v6("fd00:10:244:1::5", "ff02::16"),                              # no_lease, never answered
           v6("fd00:10:244:1::5", "fd00:10:244:2::7")[:50], b"\x60" + bytes(45)]  # truncated, jumbogram
    out += [v6("fd00:10:244:1::5", f"fd00:10:244:{2 + i % 2}::{i + 1:x}") for i in range(20)]
    inbound = [("127.0.0.2", v6("fd00:10:244:2::7", "fd00:10:244:1::5")),
               ("127.0.0.2", v6("fd00:10:244:3::7", "fd00:10:244:1::5")),     # spoofed_source
               ("127.0.0.3", v6("fd00:10:244:3::7", "fd00:10:244:2::5")),     # not_our_subnet
               ("127.0.0.2", v6("fd00:10:244:2::7", "fd00:10:244:1::5")[:45]),  # truncated
               (ROGUE, v6("fd00:10:244:2::7", "fd00:10:244:1::5")),           # unknown_sender
               (OFF_PORT, v6("fd00:10:244:2::7", "fd00:10:244:1::5")),        # wrong_source_port
               ("127.0.0.3", v6("fd00:10:244:3::7", "fd00:10:244:1::1"))]
    rig.plane.start(loop)
    for pkt in out:
        rig.dev.send(pkt)
    await rig.wait_for(dev_rx_packets=len(out))
    for sender, dgram in inbound:
        rig.send_in(sender, dgram)
    await rig.wait_for(rx_packets=len(inbound))
    snap = await rig.settled()
    rig.peers[PEER].setblocking(False)
    return snap, drain(rig.dev), drain(rig.peers[PEER])


async def test_the_c_plane_counts_ipv6_exactly_like_the_python_plane(rigs):
    """The same IPv6 traffic through the Python plane and the C engine: the same counters, the same
    device writes (accepted packets, the ICMPv6 answers) and the same datagrams to the peer."""
    python = ipv6_rig(rigs, False, DataPlane, vnet_hdr=False)
    c = ipv6_rig(rigs, False, fast.FastDataPlane, vnet_hdr=False)
    want, got = await run_ipv6_traffic(python), await run_ipv6_traffic(c)
    assert got == want
    snap, written, sent = got
    for reason in ("no_lease", "too_big", "truncated", "bad_ip_header", "spoofed_source", "not_our_subnet",
                   "unknown_sender", "wrong_source_port"):
        assert snap.get("drop_" + reason), reason
    assert snap["drop_no_lease"] == 2 and len(written) == 2 + 2  # two accepted, two answers (none to ff02::16)
    assert len(sent) == 1 + 10
