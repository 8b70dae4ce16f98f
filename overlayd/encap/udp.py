"""The UDP backend's framing: the IP packet is the whole UDP payload, both ways."""

from __future__ import annotations

from . import ipv4, receive
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


def inbound(dgram: bytes, sender: tuple[str, int], port: int, subnet_int: int, mask: int,
            table: PeerTable) -> bytes | Drop:
    """A datagram from ``sender`` (its underlay address and port) -> the packet to write to tun0, or why not.

    Accepted only from a lease holder sending from ``port`` (our nodes send
    from the port they are bound to, the backend's Port), and only as
    :func:`.receive.admit` allows: for our subnet but not its broadcast
    address, from a subnet the sender leases. Anything else written to tun0 would be routed straight
    back out of it (a loop) or let a member or an outsider inject traffic
    into our pods.
    """
    held = table.held_by(sender[0])
    if held is None:
        return Drop.UNKNOWN_SENDER
    if sender[1] != port:
        return Drop.WRONG_SOURCE_PORT
    bad = ipv4.check(dgram)
    if bad is not None:
        return bad
    verdict = receive.admit(dgram, held, subnet_int, mask)
    return verdict if isinstance(verdict, Drop) else dgram
