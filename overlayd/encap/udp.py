"""The UDP backend's framing: the IP packet is the whole UDP payload, both ways."""

from __future__ import annotations

from . import ipv4
from .drops import Drop
from .table import Peer, PeerTable


def outbound(pkt: bytes, table: PeerTable) -> tuple[Peer, bytes] | Drop:
    """A packet read from tun0 -> (owning peer, UDP payload), or why it is dropped."""
    bad = ipv4.check(pkt)
    if bad is not None:
        return bad
    peer = table.lookup(pkt[16:20])
    if peer is None:
        return Drop.NO_LEASE
    return peer, pkt


def inbound(dgram: bytes, sender_ip: str, subnet_int: int, mask: int,
            table: PeerTable) -> bytes | Drop:
    """A datagram from ``sender_ip`` -> the packet to write to tun0, or why not.

    Accepted only from lease holders and only for our own subnet: anything
    else written to tun0 would be routed straight back out of it (a loop) or
    let an outsider inject traffic into the pod network.
    """
    if not table.is_node(sender_ip):
        return Drop.UNKNOWN_SENDER
    bad = ipv4.check(dgram)
    if bad is not None:
        return bad
    if ipv4.dst_int(dgram) & mask != subnet_int:
        return Drop.NOT_OUR_SUBNET
    return dgram
