"""The subnet -> peer table the data plane consults for every packet.

All leases of one family share one subnet length, so a lookup is one mask
and one dict probe on the destination address: no longest-prefix search.
IPv6 subnets (issue 17) have their own length, mask and dict. Receiving asks
the other way round (which subnets, of either family, does the node at this
underlay address lease?), also one dict probe: :meth:`PeerTable.held_by`.

The contract with the C fast path (``overlayd/_fastpath.c`` reads these
attributes directly, so their shapes are part of this module's API):

* ``mask`` (int, 32 bits) and ``_by_subnet``: IPv4 network address as an
  int -> :class:`Peer`;
* ``mask6`` (int, 128 bits; 0 when the table has no IPv6 length) and
  ``_by_subnet6``: IPv6 network address as an int -> :class:`Peer`.

The C engine builds its own sender set from both dicts; ``_by_sender`` is
the Python plane's. In it an IPv6 subnet is keyed by its network address
with bit 128 set (:data:`V6_KEY`), so it can never meet an IPv4 key.
"""

from __future__ import annotations

import dataclasses
import ipaddress


@dataclasses.dataclass(frozen=True)
class Peer:
    """A node that owns a subnet: where to send (and, for VXLAN, which VTEP MAC)."""

    node_ip: str
    vtep_mac: bytes | None = None


#: added to an IPv6 subnet's network address in :meth:`PeerTable.held_by`'s dicts (IPv4 keys are below it)
V6_KEY = 1 << 128


class PeerTable:
    """Peers by subnet, and by node IP the subnets each node leases (who may send what).

    ``subnet_len6`` is the IPv6 pool's subnet length (``IPv6SubnetLen``), or None when the
    network has no IPv6 pool: IPv6 subnets are then refused by :meth:`set`. ``subnet_len`` None
    likewise for an IPv6-only network (``mask`` 0, no IPv4 subnet).
    """

    def __init__(self, subnet_len: int | None, subnet_len6: int | None = None):
        self.mask = 0 if subnet_len is None else (0xFFFFFFFF << (32 - subnet_len)) & 0xFFFFFFFF
        self.subnet_len = subnet_len
        self.subnet_len6 = subnet_len6
        self.mask6 = 0 if subnet_len6 is None else ((1 << 128) - 1) ^ ((1 << (128 - subnet_len6)) - 1)
        self._by_subnet: dict[int, Peer] = {}
        self._by_subnet6: dict[int, Peer] = {}
        # node IP -> {subnet key: Peer} for every subnet it leases, of both families (usually one or two)
        self._by_sender: dict[str, dict[int, Peer]] = {}

    def _slot(self, subnet: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[dict[int, Peer], int, int]:
        """(the family's dict, its key there, its key in a sender's dict) for ``subnet``."""
        if subnet.version == 4:
            return self._by_subnet, int(subnet.network_address), int(subnet.network_address)
        return self._by_subnet6, int(subnet.network_address), int(subnet.network_address) | V6_KEY

    def set(self, subnet: ipaddress.IPv4Network | ipaddress.IPv6Network, peer: Peer) -> None:
        """Add or replace the peer owning ``subnet`` (either family)."""
        length = self.subnet_len if subnet.version == 4 else self.subnet_len6
        if subnet.prefixlen != length:
            raise ValueError(f"{subnet} is not a /{length}" if length is not None
                             else f"{subnet}: this network has no IPv{subnet.version} pool")
        self.remove(subnet)
        by_subnet, key, held_key = self._slot(subnet)
        by_subnet[key] = peer
        self._by_sender.setdefault(peer.node_ip, {})[held_key] = peer

    def remove(self, subnet: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
        """Forget ``subnet``'s peer (no-op when absent)."""
        by_subnet, key, held_key = self._slot(subnet)
        peer = by_subnet.pop(key, None)
        if peer is None:
            return
        held = self._by_sender[peer.node_ip]
        del held[held_key]
        if not held:
            del self._by_sender[peer.node_ip]

    def lookup(self, dst: bytes) -> Peer | None:
        """The peer owning the 4-byte IPv4 address ``dst``, or None."""
        return self._by_subnet.get(int.from_bytes(dst, "big") & self.mask)

    def lookup6(self, dst: bytes) -> Peer | None:
        """The peer owning the 16-byte IPv6 address ``dst``, or None (always None without an IPv6 pool)."""
        return self._by_subnet6.get(int.from_bytes(dst, "big") & self.mask6) if self.mask6 else None

    def held_by(self, ip: str) -> dict[int, Peer] | None:
        """The subnets node ``ip`` leases, of both families, or None if none: an IPv4 subnet's network
        address as an int, an IPv6 one's plus :data:`V6_KEY` -> its Peer.

        The returned dict is the table's own: read it, do not keep it.
        """
        return self._by_sender.get(ip)

    def subnets(self) -> list[str]:
        """The subnets with a peer, IPv4 then IPv6, as ``network/len`` strings (for status output)."""
        return ([f"{(n >> 24) & 255}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}/{self.subnet_len}"
                 for n in sorted(self._by_subnet)]
                + [f"{ipaddress.IPv6Address(n)}/{self.subnet_len6}" for n in sorted(self._by_subnet6)])

    def __len__(self) -> int:
        return len(self._by_subnet) + len(self._by_subnet6)
