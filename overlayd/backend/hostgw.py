"""The host-gw backend: no encapsulation, one route per peer subnet via the peer's node IP.

Dual stack (as flannel's host-gw): a peer's IPv6 subnet is routed via its
PublicIPv6, its IPv4 subnet via its PublicIP, for each family both nodes
have (:func:`peer_routes`); an IPv6-only peer gets its IPv6 route alone.

It only works between nodes on one L2 segment: the kernel refuses a route
whose gateway is not directly reachable, and we turn that refusal into a
warning and a counter for that peer (the others keep working, and so does
the peer's other family if its route was taken) instead of an error. The
daemon refuses to start only if its own underlay interface cannot carry
host-gw at all (no Ethernet link layer).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from ..errors import ConfigError, PlumbingError
from ..lease.model import Lease
from ..lease.watcher import Batch
from ..netconf import BackendConfig
from ..plumbing.netlink import Netlink
from .base import Backend, delete_peer_routes, lease_subnets
from .registry import BackendSpec

log = logging.getLogger(__name__)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

TYPE = "host-gw"


def node_versions(backend: Backend) -> frozenset[int]:
    """The IP versions this node routes to peers directly: those with a pool in the config and an
    underlay address of the family (its PublicIP, its PublicIPv6)."""
    config, underlay = backend.config, backend.underlay
    return frozenset(version for version, pool, address in (
        (4, config.ipv4, underlay.public_ip), (6, config.ipv6, underlay.public_ip6))
        if pool is not None and address is not None)


def peer_routes(lease: Lease, versions: frozenset[int]) -> list[tuple[Network, ipaddress.IPv4Address
                                                                     | ipaddress.IPv6Address]]:
    """A peer's direct routes, (its subnet, its underlay address) per family in ``versions`` that
    the lease has both of (pure)."""
    attrs = lease.attrs
    return [(subnet, gateway) for version, subnet, gateway in (
        (4, lease.subnet if lease.subnet.version == 4 else None, attrs.public_ip),
        (6, lease.subnet6, attrs.public_ip6))
        if version in versions and subnet is not None and gateway is not None]


class HostGwBackend(Backend):
    """Routes to peers' subnets through their node IPs."""

    type_name = TYPE

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skipped: set[Network] = set()  # peers (by lease.subnet) not routed to: a gauge, not a tally
        self.routes: dict[Network, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}  # peer subnet -> its node IP
        self.leases: dict[Network, Lease] = {}  # peer (lease.subnet) -> the lease its routes came from
        self._lock = asyncio.Lock()  # apply and reconcile: a route being removed is never put back

    async def preflight(self) -> None:
        async with Netlink() as nl:
            if not await nl.is_ethernet(self.underlay.iface):
                raise ConfigError(f"host-gw needs an Ethernet underlay; {self.underlay.iface} is not one")

    async def setup(self, lease: Lease) -> None:
        self.lease = lease  # routes left from before a restart are gone (delete_peer_routes, by the daemon)

    async def teardown(self, nl: Netlink) -> None:
        """``--cleanup-on-exit``: every peer route goes (there is no device)."""
        async with self._lock:
            await delete_peer_routes(nl, self.config, self.lease)
            self.routes.clear()
            self.leases.clear()

    async def reconcile(self, nl: Netlink) -> None:
        async with self._lock:
            state = await nl.device_state(self.underlay.iface, peers=False)  # one route dump a pass
            for subnet, gateway in self.routes.items():
                try:
                    await nl.ensure_route(subnet, self.underlay.iface, gateway=gateway, state=state)
                except PlumbingError as exc:  # the other peers are still repaired
                    log.warning("peer %s on %s: cannot repair: %s", subnet, gateway, exc)

    async def apply(self, batch: Batch) -> None:
        async with self._lock, Netlink() as nl:
            for lease in batch.removed:
                await self._forget(nl, lease)
            # one read for the whole batch, taken after the removals it must not see
            state = await nl.device_state(self.underlay.iface, peers=False) if batch.added else None
            for lease in batch.added:
                if lease.attrs.backend_type != self.type_name:
                    log.warning("peer %s uses backend %s, not host-gw: skipped", lease.subnet,
                                lease.attrs.backend_type)
                    await self._forget(nl, lease)  # it may have been a host-gw peer before
                    self.skipped.add(lease.subnet)
                    continue
                routes = peer_routes(lease, node_versions(self))
                # a changed lease may have lost a family: its old route goes
                await self._drop(nl, lease_subnets(self.leases.get(lease.subnet)) - {s for s, _ in routes})
                self.leases[lease.subnet] = lease
                refused = False
                for subnet, gateway in routes:  # each family alone, as flannel's
                    try:
                        await nl.ensure_route(subnet, self.underlay.iface, gateway=gateway, state=state)
                    except PlumbingError as exc:
                        log.warning("peer %s on %s is not on this L2 segment, skipped: %s", subnet, gateway, exc)
                        await self._drop(nl, {subnet})
                        refused = True
                        continue
                    self.routes[subnet] = gateway
                (self.skipped.add if refused else self.skipped.discard)(lease.subnet)

    async def _forget(self, nl: Netlink, lease: Lease) -> None:
        """Forget a peer: the routes of its lease (and of the one they came from)."""
        self.skipped.discard(lease.subnet)
        await self._drop(nl, lease_subnets(lease) | lease_subnets(self.leases.pop(lease.subnet, None)))

    async def _drop(self, nl: Netlink, subnets: set[Network]) -> None:
        """Delete our routes to ``subnets``."""
        for subnet in subnets & self.routes.keys():
            await nl.delete_route(subnet, dev=self.underlay.iface)
            del self.routes[subnet]

    def peer_subnets(self) -> list[str]:
        # list() copies in C, under the GIL: the health server's thread reads this too
        return sorted(str(s) for s in list(self.routes))

    def stats(self) -> dict:
        return {"routes": len(self.routes), "skipped_peers": len(self.skipped)}


def parse(raw: dict, notes: list[str]) -> BackendConfig:
    """host-gw has no settings but its ``Type`` (no encapsulation, so no ``MTU`` either)."""
    return BackendConfig(type=TYPE)


SPEC = BackendSpec(TYPE, frozenset({"Type"}), 0, parse, lambda options: HostGwBackend)
