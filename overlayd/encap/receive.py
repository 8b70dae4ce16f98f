"""What a node accepts from the underlay: anti-spoofing for decapsulated packets.

Design note (issue 9). Knowing that the outer source is a lease holder is not
enough: any process on a member node, or anyone who can forge a member's
underlay address, could otherwise inject packets into our pods claiming to
come from another node's pod, from our own pods, or from the Internet. So a
decapsulated IPv4 packet is accepted only when

* its destination is in our subnet (else it would be routed straight back
  out of the overlay device, a loop) and is not the subnet's broadcast
  address (a directed broadcast into our pods; /31 and /32 subnets have
  none, RFC 3021);
* its source lies inside a subnet leased by the node that sent it (the
  outer source address; a node may hold more than one lease).

The subnet's network address (the overlay device's own ``.0``) stays
accepted, although issue 9 asked to refuse it too: it is the source of
everything the node itself sends into the overlay, and of all pod traffic
the bridge plugin masquerades (the default, without ``--ip-masq``), so the
replies to that traffic come back to ``.0``. Refusing it broke pod-to-pod
traffic in the lab (measured: every reply dropped). A packet to ``.0``
reaches the node's own stack, which the sender can reach over the underlay
anyway. Refusing it needs the node to source its overlay traffic from
another address first.

The outer checks (which node sent it, from which port, the VXLAN header and
MAC) belong to the backends' framing (:mod:`.udp`, :mod:`.ether`); this is
the inner part they share. The C fast path has the twin of
:func:`admit` (``table_admit`` in ``overlayd/csrc/table.c``).

IPv6 (issue 17): :func:`admit6`, the same rules with the IPv6 subnet's
length. An IPv6 subnet has no broadcast address; its network address (the
Subnet-Router anycast address) stays accepted as ``.0`` is, for the same
reason.
"""

from __future__ import annotations

from . import ipv4, ipv6
from .drops import Drop
from .table import V6_KEY, Peer


def admit(pkt: bytes, held: dict[int, Peer], subnet_int: int, mask: int) -> Peer | Drop:
    """The sender's :class:`Peer` owning ``pkt``'s source, or why ``pkt`` is refused.

    ``pkt`` is a checked IPv4 packet (:func:`.ipv4.check`) from a node that
    leases ``held`` (:meth:`.table.PeerTable.held_by`); ``subnet_int`` and
    ``mask`` are our own subnet, whose length every lease shares.
    """
    dst = ipv4.dst_int(pkt)
    if dst & mask != subnet_int:
        return Drop.NOT_OUR_SUBNET
    host_bits = ~mask & 0xFFFFFFFF
    if host_bits > 1 and dst == subnet_int | host_bits:
        return Drop.TO_BROADCAST_ADDRESS
    peer = held.get(ipv4.src_int(pkt) & mask)
    return Drop.SPOOFED_SOURCE if peer is None else peer


def admit6(pkt: bytes, held: dict[int, Peer], subnet6_int: int, mask6: int) -> Peer | Drop:
    """:func:`admit` for a checked IPv6 packet (:func:`.ipv6.check`): ``subnet6_int`` and ``mask6``
    are our own IPv6 subnet, whose length every IPv6 lease shares."""
    if ipv6.dst_int(pkt) & mask6 != subnet6_int:
        return Drop.NOT_OUR_SUBNET
    peer = held.get((ipv6.src_int(pkt) & mask6) | V6_KEY)
    return Drop.SPOOFED_SOURCE if peer is None else peer
