"""The per-backend packet decisions the data plane loop delegates to (pure glue
over :mod:`overlayd.encap`): what to send where, what to accept, what to answer."""

from __future__ import annotations

import ipaddress

from ..encap import ether, icmp, udp, vxlan
from ..encap.drops import Drop
from ..encap.table import PeerTable

ICMP_RATE = 100.0  # unreachable answers per second, at most
ICMP_BURST = 20


class UdpCodec:
    """IP packets in UDP: the UDP backend. ``port`` is the backend's Port, which peers send from."""

    def __init__(self, table: PeerTable, own_subnet: ipaddress.IPv4Network, port: int):
        self.table = table
        self.subnet_int = int(own_subnet.network_address)
        self.mask = int(own_subnet.netmask)
        self.port = port
        self.limiter = icmp.RateLimiter(ICMP_RATE, ICMP_BURST)

    def outbound(self, frame: bytes):
        verdict = udp.outbound(frame, self.table)
        if isinstance(verdict, Drop):
            return verdict
        peer, payload = verdict
        return peer.node_ip, payload

    def inbound(self, payload: bytes, sender: tuple[str, int], mtu: int | None = None):
        """``mtu`` is not used: a UDP-backend peer sends packets cut to the MTU."""
        return udp.inbound(payload, sender, self.port, self.subnet_int, self.mask, self.table)

    def answer(self, drop: Drop, frame: bytes, now: float) -> bytes | None:
        """ICMP destination unreachable for a packet to a subnet nobody leases (or None)."""
        if drop is not Drop.NO_LEASE or not self.limiter.allow(now):
            return None
        return icmp.dest_unreachable(frame)


class VxlanCodec:
    """Ethernet frames in VXLAN (RFC 7348): the userspace VXLAN backend over a tap.

    The tap is NOARP, so the kernel addresses every frame to the tap's own MAC;
    we rewrite the destination to the owning peer's VTEP MAC (a kernel VTEP
    drops frames not addressed to its MAC) and wrap the frame in VXLAN.
    """

    def __init__(self, table: PeerTable, own_subnet: ipaddress.IPv4Network, vni: int, own_mac: bytes,
                 port: int = 0):
        self.table = table
        self.subnet_int = int(own_subnet.network_address)
        self.mask = int(own_subnet.netmask)
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
        return ether.tap_inbound(frame, held, self.own_mac, self.subnet_int, self.mask, mtu)

    def answer(self, drop: Drop, frame: bytes, now: float) -> bytes | None:
        """ICMP unreachable, in an Ethernet frame back to the sender's MAC."""
        if drop is not Drop.NO_LEASE or not self.limiter.allow(now):
            return None
        reply = icmp.dest_unreachable(frame[ether.ETH_HEADER_LEN:])
        if reply is None:
            return None
        _dst, src, ethertype = ether.parse_ethernet(frame)
        return ether.build_ethernet(src, self.own_mac, ethertype) + reply
