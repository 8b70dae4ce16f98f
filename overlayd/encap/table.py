"""The subnet -> peer table the data plane consults for every packet.

All leases share one subnet length, so a lookup is one mask and one dict
probe on the destination address: no longest-prefix search.
"""

from __future__ import annotations

import dataclasses
import ipaddress


@dataclasses.dataclass(frozen=True)
class Peer:
    """A node that owns a subnet: where to send (and, for VXLAN, which VTEP MAC)."""

    node_ip: str
    vtep_mac: bytes | None = None


class PeerTable:
    """Peers by subnet, plus the set of node IPs allowed to send to us."""

    def __init__(self, subnet_len: int):
        self.mask = (0xFFFFFFFF << (32 - subnet_len)) & 0xFFFFFFFF
        self.subnet_len = subnet_len
        self._by_subnet: dict[int, Peer] = {}
        self._senders: dict[str, int] = {}  # node IP -> number of subnets it holds

    def set(self, subnet: ipaddress.IPv4Network, peer: Peer) -> None:
        """Add or replace the peer owning ``subnet``."""
        if subnet.prefixlen != self.subnet_len:
            raise ValueError(f"{subnet} is not a /{self.subnet_len}")
        self.remove(subnet)
        self._by_subnet[int(subnet.network_address)] = peer
        self._senders[peer.node_ip] = self._senders.get(peer.node_ip, 0) + 1

    def remove(self, subnet: ipaddress.IPv4Network) -> None:
        """Forget ``subnet``'s peer (no-op when absent)."""
        peer = self._by_subnet.pop(int(subnet.network_address), None)
        if peer is None:
            return
        left = self._senders[peer.node_ip] - 1
        if left:
            self._senders[peer.node_ip] = left
        else:
            del self._senders[peer.node_ip]

    def lookup(self, dst: bytes) -> Peer | None:
        """The peer owning the 4-byte address ``dst``, or None."""
        return self._by_subnet.get(int.from_bytes(dst, "big") & self.mask)

    def is_node(self, ip: str) -> bool:
        """Whether ``ip`` is the node IP of some lease holder."""
        return ip in self._senders

    def subnets(self) -> list[str]:
        """The subnets with a peer, as ``a.b.c.d/len`` strings (for status output)."""
        return [f"{(n >> 24) & 255}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}/{self.subnet_len}"
                for n in sorted(self._by_subnet)]

    def __len__(self) -> int:
        return len(self._by_subnet)
