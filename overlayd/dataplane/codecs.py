"""The per-backend packet decisions the data plane loop delegates to (pure glue
over :mod:`overlayd.encap`): what to send where, what to accept, what to answer."""

from __future__ import annotations

import ipaddress

from ..encap import ether, icmp, udp, vxlan
from ..encap.drops import Drop
from ..encap.table import PeerTable

ICMP_RATE = 100.0  # unreachable answers per second, at most
ICMP_BURST = 20


#: the IPv4 subnet and mask of a codec on an IPv6-only network: no destination is in it (``dst & 0`` is
#: never 1), so every IPv4 packet from a peer is :attr:`Drop.NOT_OUR_SUBNET`, in Python and in C alike
NO_SUBNET4 = (1, 0)


def ip_answer(drop: Drop, pkt: bytes, subnet_int: int | None, subnet6_int: int | None,
              mtu: int | None) -> bytes | None:
    """The ICMP or ICMPv6 error answering IP packet ``pkt`` dropped for ``drop`` (not rate-limited), from
    our gateway of its family, or None: unreachable for :attr:`Drop.NO_LEASE`, Packet Too Big (``mtu``)
    for :attr:`Drop.TOO_BIG` (only ever an IPv6 packet's). ``subnet_int`` None: we have no IPv4
    subnet, and no gateway to answer IPv4 from."""
    if drop is Drop.TOO_BIG:
        return icmp.packet_too_big(pkt, icmp.gateway6(subnet6_int), mtu)
    if drop is not Drop.NO_LEASE:
        return None
    if udp.is_ipv6(pkt, subnet6_int is not None):
        return icmp.dest_unreachable6(pkt, icmp.gateway6(subnet6_int))
    return None if subnet_int is None else icmp.dest_unreachable(pkt, icmp.gateway(subnet_int))


def _subnet4(own_subnet: ipaddress.IPv4Network | None) -> tuple[int, int]:
    """(network address, mask) of our IPv4 subnet as the codecs compare them (:data:`NO_SUBNET4`: none)."""
    return NO_SUBNET4 if own_subnet is None else (int(own_subnet.network_address), int(own_subnet.netmask))


class UdpCodec:
    """IP packets in UDP: the UDP backend. ``port`` is the backend's Port, which peers send from.

    Dual stack (issue 17): ``own_subnet6`` is our IPv6 subnet (None: IPv6 is refused as before) and
    ``mtu`` the tunnel's MTU, tun0's (None: no IPv6 packet is too big). The table must have been made
    with the IPv6 subnet length (``PeerTable(subnet_len, subnet_len6)``) for IPv6 to be routed out.
    ``own_subnet`` None: an IPv6-only network (:data:`NO_SUBNET4`).
    """

    def __init__(self, table: PeerTable, own_subnet: ipaddress.IPv4Network | None, port: int,
                 own_subnet6: ipaddress.IPv6Network | None = None, mtu: int | None = None):
        self.table = table
        self.has_subnet4 = own_subnet is not None
        self.subnet_int, self.mask = _subnet4(own_subnet)
        self.subnet6_int = None if own_subnet6 is None else int(own_subnet6.network_address)
        self.mtu = mtu
        self.port = port
        self.limiter = icmp.RateLimiter(ICMP_RATE, ICMP_BURST)

    def outbound(self, frame: bytes):
        verdict = udp.outbound(frame, self.table, self.mtu)
        if isinstance(verdict, Drop):
            return verdict
        peer, payload = verdict
        return peer.node_ip, payload

    def inbound(self, payload: bytes, sender: tuple[str, int], mtu: int | None = None):
        """``mtu`` is not used: a UDP-backend peer sends packets cut to the MTU."""
        return udp.inbound(payload, sender, self.port, self.subnet_int, self.mask, self.table, self.subnet6_int)

    def answer(self, drop: Drop, frame: bytes, now: float) -> bytes | None:
        """ICMP(v6) destination unreachable for a packet to a subnet nobody leases, ICMPv6 Packet Too Big for
        one over the tunnel MTU (or None), from our gateway (:func:`ip_answer`)."""
        if drop not in (Drop.NO_LEASE, Drop.TOO_BIG) or not self.limiter.allow(now):
            return None
        return ip_answer(drop, frame, self.subnet_int if self.has_subnet4 else None, self.subnet6_int, self.mtu)


class VxlanCodec:
    """Ethernet frames in VXLAN (RFC 7348): the userspace VXLAN backend over a tap.

    The tap is NOARP, so the kernel addresses every frame to the tap's own MAC (IPv6 ones too:
    see :mod:`overlayd.encap.ether`); we rewrite the destination to the owning peer's VTEP MAC (a
    kernel VTEP drops frames not addressed to its MAC) and wrap the frame in VXLAN.

    Dual stack (issue 17): ``own_subnet6`` is our IPv6 subnet (None: IPv6 frames are refused as
    before); the table must have been made with the IPv6 subnet length for IPv6 to be routed out.
    ``own_subnet`` None: an IPv6-only network (:data:`NO_SUBNET4`).
    """

    def __init__(self, table: PeerTable, own_subnet: ipaddress.IPv4Network | None, vni: int, own_mac: bytes,
                 port: int = 0, own_subnet6: ipaddress.IPv6Network | None = None):
        self.table = table
        self.has_subnet4 = own_subnet is not None
        self.subnet_int, self.mask = _subnet4(own_subnet)
        self.subnet6_int = None if own_subnet6 is None else int(own_subnet6.network_address)
        self.port = port  # the backend's Port, where peers listen (any source port is accepted)
        self.vni = vni
        self.own_mac = own_mac
        self.limiter = icmp.RateLimiter(ICMP_RATE, ICMP_BURST)

    def outbound(self, frame: bytes):
        verdict = ether.tap_outbound(frame, self.table)
        if isinstance(verdict, Drop):
            return verdict
        peer, rewritten = verdict
        return peer.node_ip, vxlan.encapsulate(rewritten, self.vni)

    def inbound(self, payload: bytes, sender: tuple[str, int], mtu: int | None = None):
        """Any source port: kernel VTEPs pick one per flow (ECMP entropy). With the tap's ``mtu``, a
        kernel VTEP's TCP superpacket comes back as a list of frames (:func:`.ether.tap_inbound`)."""
        held = self.table.held_by(sender[0])
        if held is None:
            return Drop.UNKNOWN_SENDER
        frame = vxlan.decapsulate(payload, self.vni)
        if isinstance(frame, Drop):
            return frame
        return ether.tap_inbound(frame, held, self.own_mac, self.subnet_int, self.mask, mtu, self.subnet6_int,
                                 self.table.mask6)

    def answer(self, drop: Drop, frame: bytes, now: float) -> bytes | None:
        """ICMP (ICMPv6 for an IPv6 frame) unreachable, in an Ethernet frame back to the sender's MAC."""
        if drop is not Drop.NO_LEASE or not self.limiter.allow(now):
            return None
        v6 = self.subnet6_int if ether.is_ipv6(frame, self.subnet6_int is not None) else None
        reply = ip_answer(drop, frame[ether.ETH_HEADER_LEN:], self.subnet_int if self.has_subnet4 else None, v6, None)
        if reply is None:
            return None
        _dst, src, ethertype = ether.parse_ethernet(frame)
        return ether.build_ethernet(src, self.own_mac, ethertype) + reply
