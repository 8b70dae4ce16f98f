"""The UDP backend's framing: the IP packet is the whole UDP payload, both ways.

Both inner families share the tunnel (issue 17): an IPv6 packet is routed by
the IPv6 subnet table, where the node has an IPv6 pool (the table's
``mask6``) and, inbound, an IPv6 subnet of its own; elsewhere IPv6 stays
``not_ipv4``, as before dual stack.
"""

from __future__ import annotations

from . import ipv4, ipv6, receive
from .drops import Drop
from .table import Peer, PeerTable


def is_ipv6(pkt: bytes, enabled: bool) -> bool:
    """Whether ``pkt`` is handled as IPv6: version 6 and IPv6 ``enabled`` (else it is refused as IPv4 is)."""
    return enabled and len(pkt) > 0 and pkt[0] >> 4 == 6


def route(pkt: bytes, table: PeerTable, mtu: int | None = None) -> Peer | Drop:
    """The peer owning IP packet ``pkt``'s destination, or why ``pkt`` is dropped.

    An IPv6 packet longer than ``mtu`` (the tunnel's; None: no limit) is
    :attr:`Drop.TOO_BIG`, once it has a peer (a router looks the route up
    first); an IPv4 one is left to the kernel's fragmentation as before.
    """
    if is_ipv6(pkt, table.mask6 != 0):
        bad = ipv6.check(pkt)
        if bad is not None:
            return bad
        peer = table.lookup6(pkt[24:40])
        if peer is not None and mtu is not None and ipv6.length(pkt) > mtu:
            return Drop.TOO_BIG
    else:
        bad = ipv4.check(pkt)
        if bad is not None:
            return bad
        peer = table.lookup(pkt[16:20])
    return Drop.NO_LEASE if peer is None else peer


def admit(pkt: bytes, held: dict[int, Peer], subnet_int: int, mask: int, subnet6_int: int | None,
          mask6: int) -> Peer | Drop:
    """Check IP packet ``pkt`` from a node leasing ``held`` and :func:`.receive.admit` (or
    :func:`.receive.admit6`) it: the sender's peer owning its source, or why it is refused.
    ``subnet6_int``: our IPv6 subnet (None: we have none, and IPv6 is refused as not IPv4)."""
    if is_ipv6(pkt, subnet6_int is not None):
        bad = ipv6.check(pkt)
        return bad if bad is not None else receive.admit6(pkt, held, subnet6_int, mask6)
    bad = ipv4.check(pkt)
    return bad if bad is not None else receive.admit(pkt, held, subnet_int, mask)


def outbound(pkt: bytes, table: PeerTable, mtu: int | None = None) -> tuple[Peer, bytes] | Drop:
    """A packet read from tun0 -> (owning peer, UDP payload), or why it is dropped (:func:`route`)."""
    peer = route(pkt, table, mtu)
    return peer if isinstance(peer, Drop) else (peer, pkt)


def inbound(dgram: bytes, sender: tuple[str, int], port: int, subnet_int: int, mask: int,
            table: PeerTable, subnet6_int: int | None = None) -> bytes | Drop:
    """A datagram from ``sender`` (its underlay address and port) -> the packet to write to tun0, or why not.

    Accepted only from a lease holder sending from ``port`` (our nodes send
    from the port they are bound to, the backend's Port), and only as
    :func:`.receive.admit` allows: for our subnet but not its broadcast
    address, from a subnet the sender leases. Anything else written to tun0 would be routed straight
    back out of it (a loop) or let a member or an outsider inject traffic
    into our pods. IPv6 likewise, for our IPv6 subnet ``subnet6_int`` (None: refused as not IPv4).
    """
    held = table.held_by(sender[0])
    if held is None:
        return Drop.UNKNOWN_SENDER
    if sender[1] != port:
        return Drop.WRONG_SOURCE_PORT
    verdict = admit(dgram, held, subnet_int, mask, subnet6_int, table.mask6)
    return verdict if isinstance(verdict, Drop) else dgram
