"""The subnet -> peer table the data plane consults for every packet.

All leases share one subnet length, so a lookup is one mask and one dict
probe on the destination address: no longest-prefix search. Receiving asks
the other way round (which subnets does the node at this underlay address
lease?), also one dict probe: :meth:`PeerTable.held_by`. The C fast path
reads both dicts directly (``_by_subnet``, ``_by_sender``), so their shapes
are part of this module's contract with ``overlayd/_fastpath.c``.
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
    """Peers by subnet, and by node IP the subnets each node leases (who may send what)."""

    def __init__(self, subnet_len: int):
        self.mask = (0xFFFFFFFF << (32 - subnet_len)) & 0xFFFFFFFF
        self.subnet_len = subnet_len
        self._by_subnet: dict[int, Peer] = {}
        # node IP -> {subnet network address: Peer} for every subnet it leases (usually one)
        self._by_sender: dict[str, dict[int, Peer]] = {}

    def set(self, subnet: ipaddress.IPv4Network, peer: Peer) -> None:
        """Add or replace the peer owning ``subnet``."""
        if subnet.prefixlen != self.subnet_len:
            raise ValueError(f"{subnet} is not a /{self.subnet_len}")
        self.remove(subnet)
        key = int(subnet.network_address)
        self._by_subnet[key] = peer
        self._by_sender.setdefault(peer.node_ip, {})[key] = peer

    def remove(self, subnet: ipaddress.IPv4Network) -> None:
        """Forget ``subnet``'s peer (no-op when absent)."""
        key = int(subnet.network_address)
        peer = self._by_subnet.pop(key, None)
        if peer is None:
            return
        held = self._by_sender[peer.node_ip]
        del held[key]
        if not held:
            del self._by_sender[peer.node_ip]

    def lookup(self, dst: bytes) -> Peer | None:
        """The peer owning the 4-byte address ``dst``, or None."""
        return self._by_subnet.get(int.from_bytes(dst, "big") & self.mask)

    def held_by(self, ip: str) -> dict[int, Peer] | None:
        """The subnets node ``ip`` leases (network address as int -> its Peer), or None if none.

        The returned dict is the table's own: read it, do not keep it.
        """
        return self._by_sender.get(ip)

    def subnets(self) -> list[str]:
        """The subnets with a peer, as ``a.b.c.d/len`` strings (for status output)."""
        return [f"{(n >> 24) & 255}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}/{self.subnet_len}"
                for n in sorted(self._by_subnet)]

    def __len__(self) -> int:
        return len(self._by_subnet)
