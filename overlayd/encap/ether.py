"""Ethernet framing for the userspace VXLAN backend's tap, and VTEP MACs.

The tap is NOARP (see :mod:`overlayd.backend.vxlan_user`): every IPv4 frame
the kernel writes to it is addressed to the tap's own MAC, and we rewrite the
destination to the owning peer's VTEP MAC before encapsulating. Inbound we
accept IPv4 frames addressed to our VTEP MAC (or broadcast), from the
sender's VTEP MAC, that :func:`.receive.admit` allows (our subnet but not its
broadcast address as destination, a subnet the sender leases as source); ARP never crosses
the overlay.

IPv6 (issue 17): frames of EtherType 0x86DD take the same paths where the node
has an IPv6 pool (outbound: the table's ``mask6``) and an IPv6 subnet of its
own (inbound), routed by :meth:`.table.PeerTable.lookup6` and admitted by
:func:`.receive.admit6`; elsewhere they stay ``not_ipv4``, as before dual
stack. Neighbour discovery is ARP's twin, and needs nothing either: on a
NOARP device the kernel's ndisc gives every unicast IPv6 neighbour the
device's own MAC without a solicitation (``ndisc_constructor``: NUD_NOARP),
so IPv6 frames reach us addressed to the tap's MAC like IPv4 ones, no NDP
crosses the overlay and no neighbour entry is installed. Multicast frames
(MLD reports, the link-local noise of an IPv6 link) find no peer and are
counted as ``no_lease``, never answered (:func:`.icmp.dest_unreachable6`).
Partial checksums and superpackets below hold for IPv6 with its
pseudo-header (RFC 8200 8.1); IPv6 has no header checksum to check.

Partial checksums (design note, issue 10 item 5). A kernel VTEP with transmit
checksum offload on (the kernel's default for a VXLAN device) leaves the
inner TCP/UDP checksum to "the hardware": the skb is CHECKSUM_PARTIAL and
the checksum field holds only the folded pseudo-header sum. A physical NIC
finishes it on the way out; a veth or bridge underlay never does, and a
kernel receiver does not mind (the skb keeps its "partial" mark across veth
and the stack trusts it), but we read the raw bytes: without help the pod's
kernel drops every such segment. :func:`complete_partial_checksum` finishes
what the NIC would have: it is applied to every frame :func:`tap_inbound`
accepts, so kernel VTEPs can keep their offload (3-5x faster between two
kernel nodes than with it off). Only a checksum that is wrong AND equals
the pseudo-header sum is completed; a valid checksum is never touched, and
any other wrong checksum is left for the pod's kernel to refuse. The price:
a segment corrupted in transit whose checksum field happens to equal its
pseudo-header sum (about 1 in 65536 corrupted segments) is made valid, the
same trust a kernel receiver puts in the offload mark. The C engine mirrors
this function (same name, same vectors).

Superpackets (the same issue). Such a VTEP also sends TCP as GSO
superpackets, for the NIC to cut: over a virtual underlay our UDP socket
receives one datagram whose inner frame holds up to 64 KB of one TCP flow
(IP total length past the MTU, the partial checksum mark). Given the tap's
MTU, :func:`tap_inbound` has :func:`cut_superpacket` cut such a packet, once
it has passed every check a frame passes, into MTU-sized segments as the
NIC's TSO would (:func:`.gso.segment`, the tun path's segmenter); anything
else longer than the MTU is dropped. (A pod's UDP GSO superpacket never
gets here: its segment size is not in the bytes, so our socket must not take
it whole; without UDP_GRO on the socket, the kernel cuts it into VXLAN
datagrams first.) The segments' checksums are computed over the bytes as
received: the same trust in the offload mark as completing. The C engine
writes the superpacket to its vnet_hdr tap as one GSO write instead, which
the kernel cuts into the same segments (held by the parity tests).
"""

from __future__ import annotations

import hashlib
import re

from ..errors import EncapError
from . import gso, ipv4, ipv6, receive
from .drops import Drop
from .table import Peer, PeerTable

ETH_HEADER_LEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
# IP protocol -> (smallest header, offset of the checksum field in it)
L4_CHECKSUM = {6: (20, 16), 17: (8, 6)}
BROADCAST = b"\xff" * 6
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def mac_to_str(mac: bytes) -> str:
    """``aa:bb:cc:dd:ee:ff`` for 6 bytes."""
    if len(mac) != 6:
        raise EncapError(f"a MAC is 6 bytes, got {len(mac)}")
    return ":".join(f"{b:02x}" for b in mac)


def mac_to_bytes(text: str) -> bytes:
    """6 bytes for ``aa:bb:cc:dd:ee:ff``; :class:`EncapError` for anything else."""
    if not isinstance(text, str) or not _MAC_RE.match(text):
        raise EncapError(f"not a MAC address: {text!r}")
    return bytes.fromhex(text.replace(":", ""))


def stable_mac(seed: bytes) -> bytes:
    """A unicast, locally administered MAC derived from ``seed`` (same seed, same MAC)."""
    digest = bytearray(hashlib.sha256(seed).digest()[:6])
    digest[0] = (digest[0] & 0xFE) | 0x02
    return bytes(digest)


def parse_ethernet(frame: bytes) -> tuple[bytes, bytes, int]:
    """(destination MAC, source MAC, ethertype) of ``frame``."""
    if len(frame) < ETH_HEADER_LEN:
        raise EncapError(f"an Ethernet header needs {ETH_HEADER_LEN} bytes, got {len(frame)}")
    return frame[0:6], frame[6:12], (frame[12] << 8) | frame[13]


def build_ethernet(dst: bytes, src: bytes, ethertype: int) -> bytes:
    """A 14-byte Ethernet header."""
    return dst + src + ethertype.to_bytes(2, "big")


def is_ipv6(frame: bytes, enabled: bool) -> bool:
    """Whether ``frame`` is handled as IPv6: EtherType 0x86DD and IPv6 ``enabled`` (else it is refused
    as any frame that is not IPv4 is)."""
    return enabled and frame[12:14] == b"\x86\xdd"


def _ip_payload_check(frame: bytes, v6: bool) -> Drop | None:
    """Why ``frame`` holds no usable IP packet: an IPv6 one when ``v6`` (:func:`is_ipv6`), else IPv4."""
    if len(frame) < ETH_HEADER_LEN:
        return Drop.TRUNCATED
    if v6:
        return ipv6.check(frame[ETH_HEADER_LEN:])
    if frame[12:14] != b"\x08\x00":
        return Drop.NOT_IPV4
    return ipv4.check(frame[ETH_HEADER_LEN:])



def _partial_field(pkt: bytes) -> tuple[int, int, int, int] | None:
    """(protocol, L4 offset, L4 length, offset of the TCP/UDP checksum field) of checked IP packet
    ``pkt`` when that field
    holds what a kernel with checksum offload writes there: the folded pseudo-header sum (source,
    destination, protocol, L4 length), not 0. None for fragments, other protocols (for IPv6: TCP or
    UDP right behind the fixed header), short L4 headers and any other value."""
    v6 = pkt[0] >> 4 == 6
    if v6:
        proto, ihl, total = pkt[6], ipv6.HEADER_LEN, ipv6.length(pkt)
    else:
        proto, ihl, total = pkt[9], (pkt[0] & 0x0F) * 4, (pkt[2] << 8) | pkt[3]
        if (pkt[6] & 0x3F) or pkt[7]:  # MF or a fragment offset
            return None
    if proto not in L4_CHECKSUM:
        return None
    min_len, offset = L4_CHECKSUM[proto]
    l4len = min(total, len(pkt)) - ihl  # the bytes held, should a caller not check
    if l4len < min_len:
        return None
    at = ihl + offset
    field = (pkt[at] << 8) | pkt[at + 1]
    pseudo = ipv6.pseudo_sum(pkt[8:24], pkt[24:40], l4len, proto) if v6 else ipv4.pseudo_sum(pkt, l4len)
    if field != pseudo or field == 0:
        return None
    return proto, ihl, l4len, at


def complete_partial_checksum(pkt: bytes) -> bytes | None:
    """``pkt`` with its CHECKSUM_PARTIAL TCP/UDP checksum completed, or None to leave it as it is.

    ``pkt`` is a checked IPv4 or IPv6 packet (:func:`.gso.check`). Partial means: the
    checksum is wrong and its field equals the folded pseudo-header sum
    (source, destination, protocol, L4 length), which is what a kernel with
    checksum offload writes there. Completing is then the NIC's job: the
    ones'-complement of the sum over the L4 bytes as they are (the field
    already carries the pseudo-header). None for fragments, other protocols,
    UDP without checksum (0), valid checksums and any other wrong one.
    """
    found = _partial_field(pkt)
    if found is None:
        return None
    proto, ihl, l4len, at = found
    body = ipv4.ones_sum(pkt[ihl:ihl + l4len])
    if ipv4.fold(((pkt[at] << 8) | pkt[at + 1]) + body) == 0xFFFF:
        return None  # valid as it is: the field only happens to equal the pseudo-header sum
    full = ~body & 0xFFFF
    if proto == 17 and full == 0:
        full = 0xFFFF  # RFC 768: a computed 0 is sent as all ones
    return pkt[:at] + full.to_bytes(2, "big") + pkt[at + 2:]


def cut_superpacket(pkt: bytes, mtu: int) -> list[bytes] | Drop:
    """The packets of at most ``mtu`` bytes a NIC's TSO would have cut ``pkt`` into, or why not.

    ``pkt`` is a checked IPv4 or IPv6 packet longer than ``mtu``. Only a TCP
    superpacket with the partial checksum mark (:func:`_partial_field`) is
    cut, by :func:`.gso.segment` with the header a TSO sender would pass
    (:func:`.gso.tso_header`: MSS = ``mtu`` less the IP and TCP headers):
    per segment the IPv4 total length, ID and checksum (IPv6: the payload length), the sequence number and
    a full TCP checksum; FIN and PSH on the last only, CWR on the first only.
    Anything else that long is :attr:`Drop.BAD_IP_HEADER`, as for a
    superpacket the tun path cannot segment, and so is one whose IP header
    checksum is wrong (the cut rewrites it; the C engine writes the packet
    whole, which the pod's kernel would drop).
    """
    found = _partial_field(pkt)
    ok = found is not None and found[0] == gso.PROTO_TCP
    if ok and pkt[0] >> 4 == 4:
        ok = ipv4.ones_sum(pkt[:(pkt[0] & 0x0F) * 4]) == 0xFFFF
    hdr = gso.tso_header(pkt, mtu) if ok else None
    if hdr is None:
        return Drop.BAD_IP_HEADER
    return gso.segment(hdr, pkt)


def tap_outbound(frame: bytes, table: PeerTable) -> tuple[Peer, bytes] | Drop:
    """A frame read from the tap -> (owning peer, frame re-addressed to its VTEP MAC). IPv6 frames
    where the table has IPv6 subnets (``mask6``)."""
    v6 = is_ipv6(frame, table.mask6 != 0)
    bad = _ip_payload_check(frame, v6)
    if bad is not None:
        return bad
    if v6:
        peer = table.lookup6(frame[ETH_HEADER_LEN + 24:ETH_HEADER_LEN + 40])
    else:
        peer = table.lookup(frame[ETH_HEADER_LEN + 16:ETH_HEADER_LEN + 20])
    if peer is None or peer.vtep_mac is None:
        return Drop.NO_LEASE
    return peer, peer.vtep_mac + frame[6:]


def tap_inbound(frame: bytes, held: dict[int, Peer], own_mac: bytes, subnet_int: int,
                mask: int, mtu: int | None = None, subnet6_int: int | None = None,
                mask6: int = 0) -> bytes | list[bytes] | Drop:
    """A decapsulated frame from a node leasing ``held`` -> the frame(s) to write to the tap, or why not.

    When the peer owning the inner source has a VTEP MAC, the frame's
    Ethernet source must be it (a VTEP sends from its own MAC). With the
    tap's ``mtu``, an inner packet longer than it is a kernel VTEP's
    superpacket, cut into a list of frames (:func:`cut_superpacket`), or
    dropped; without (None), any length passes. A partial inner checksum is
    completed (:func:`complete_partial_checksum`). IPv6 frames are taken when we have an IPv6
    subnet (``subnet6_int``, of the table's ``mask6``; None: refused as not IPv4) and admitted
    by :func:`.receive.admit6`.
    """
    v6 = is_ipv6(frame, subnet6_int is not None)
    bad = _ip_payload_check(frame, v6)
    if bad is not None:
        return bad
    if frame[0:6] != own_mac and frame[0:6] != BROADCAST:
        return Drop.NOT_FOR_US
    pkt = frame[ETH_HEADER_LEN:]
    peer = receive.admit6(pkt, held, subnet6_int, mask6) if v6 else receive.admit(pkt, held, subnet_int, mask)
    if isinstance(peer, Drop):
        return peer
    if peer.vtep_mac is not None and frame[6:12] != peer.vtep_mac:
        return Drop.WRONG_SOURCE_MAC
    if mtu is not None and (ipv6.length(pkt) if v6 else (pkt[2] << 8) | pkt[3]) > mtu:
        cut = cut_superpacket(pkt, mtu)
        return cut if isinstance(cut, Drop) else [frame[:ETH_HEADER_LEN] + seg for seg in cut]
    completed = complete_partial_checksum(pkt)
    return frame if completed is None else frame[:ETH_HEADER_LEN] + completed
