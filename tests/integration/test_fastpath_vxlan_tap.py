"""Userspace VXLAN on the C engine with a vnet_hdr tap, end to end without root (the rig of
test_fastpath_loop: a datagram socketpair stands in for the tap, peers on 127.0.0.x): a TSO frame
read from the tap leaves as the VXLAN datagrams gso.segment_frame cuts, a peer's consecutive
segments are written as the one superpacket gso.coalesce_frames makes, and a kernel VTEP's TCP
superpacket (one datagram, partial checksum) is written whole with the GSO header for the tap's MTU."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from overlayd.dataplane import fast
from overlayd.dataplane.loop import Sender
from overlayd.encap import gso
from overlayd.encap.gso import NEEDS_CSUM, VnetHdr
from tests.integration.test_fastpath_loop import OWN_MAC, VNI, peer_mac, rigs  # noqa: F401 (a fixture)
from tests.unit.test_gso_parity import tcp, tso

pytestmark = pytest.mark.skipif(not fast.available(), reason="the C fast path is not built")

MTU = 1450
VX = bytes([8, 0, 0, 0, 0, 0, VNI, 0])
PEER = "127.0.0.2"
FROM_PEER = OWN_MAC + peer_mac(PEER) + b"\x08\x00"  # a frame's Ethernet header, as the peer sends it


def tap_rig(rigs, udp_gso: bool = False):
    """A VXLAN rig whose plane reads and writes the stand-in tap with virtio headers."""
    rig = rigs(vxlan=True, udp_gso=udp_gso)
    rig.plane = fast.FastDataPlane(rig.dev_ours.fileno(), rig.sock, rig.codec, Sender(rig.sock, rig.port, rig.counters),
                                   rig.counters, vnet_hdr=True, mtu=MTU, udp_gso=udp_gso)
    return rig


@pytest.mark.parametrize("udp_gso", [False, True])
async def test_superpackets_both_ways_through_a_vnet_hdr_tap(rigs, udp_gso):
    """With udp_gso (--udp-checksum) the 8 datagrams leave in one UDP GSO send, which the peer's
    kernel cuts back into the same datagrams (its socket has no UDP_GRO)."""
    rig = tap_rig(rigs, udp_gso)
    loop = asyncio.get_running_loop()
    hdr, pkt = tso(bytes(range(256)) * 40, MTU - 40)
    tap_hdr = dataclasses.replace(hdr, hdr_len=hdr.hdr_len + 14, csum_start=hdr.csum_start + 14)
    frame = OWN_MAC + OWN_MAC + b"\x08\x00" + pkt  # NOARP tap: addressed to its own MAC
    rig.dev.send(tap_hdr.pack() + frame)
    back = [tcp(bytes([i]) * (MTU - 40), seq=9000 + i * (MTU - 40), src="10.244.2.7", dst="10.244.1.5")
            for i in range(5)]
    for seg in back:
        rig.send_in(PEER, VX + FROM_PEER + seg)
    kernel = tcp(bytes(range(256)) * 80, seq=20000, src="10.244.2.7", dst="10.244.1.5", partial=True)
    rig.send_in(PEER, VX + FROM_PEER + kernel)
    rig.plane.start(loop)

    # out: the TSO frame leaves as the frames gso.segment_frame cuts, each re-addressed and in VXLAN
    want = [VX + peer_mac(PEER) + f[6:] for f in gso.segment_frame(tap_hdr, frame)]
    assert len(want) == 8
    assert [await asyncio.to_thread(rig.peers[PEER].recv, 65535) for _ in want] == want
    # in: the peer's segments as one coalesced write, then the kernel VTEP's superpacket whole
    (joined_hdr, joined), = gso.coalesce_frames([FROM_PEER + seg for seg in back])
    assert joined_hdr.gso_type == gso.GSO_TCPV4
    assert await asyncio.wait_for(loop.sock_recv(rig.dev, 65535), 2) == joined_hdr.pack() + joined
    whole = VnetHdr(NEEDS_CSUM, gso.GSO_TCPV4, 14 + 40, MTU - 40, 14 + 20, 16)
    assert await asyncio.wait_for(loop.sock_recv(rig.dev, 65535), 2) == whole.pack() + FROM_PEER + kernel
    snap = await rig.wait_for(dev_tx_packets=6)
    assert (snap["dev_rx_superpackets"], snap["tx_packets"], snap["dev_tx_superpackets"]) == (1, 8, 2)
    assert snap.get("tx_gso_sends", 0) == udp_gso

    # a UDP packet past the MTU is no superpacket the tap can take: dropped, as in Python
    big_udp = bytearray(kernel)
    big_udp[9] = 17
    rig.send_in(PEER, VX + FROM_PEER + bytes(big_udp))
    assert (await rig.wait_for(drop_bad_ip_header=1))["dev_tx_packets"] == 6


def test_a_vxlan_engine_on_a_vnet_hdr_tap_needs_its_mtu(rigs):
    rig = rigs(vxlan=True)
    with pytest.raises(ValueError, match="mtu"):
        fast.FastDataPlane(rig.dev_ours.fileno(), rig.sock, rig.codec, None, rig.counters, vnet_hdr=True, mtu=0)
