"""The host-gw backend: no encapsulation, one route per peer subnet via the peer's node IP.

It only works between nodes on one L2 segment: the kernel refuses a route
whose gateway is not directly reachable, and we turn that refusal into a
warning and a counter for that peer (the others keep working) instead of an
error. The daemon refuses to start only if its own underlay interface cannot
carry host-gw at all (no Ethernet link layer).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from ..errors import ConfigError, PlumbingError
from ..lease.model import Lease
from ..lease.watcher import Batch
from ..plumbing.netlink import Netlink
from .base import Backend

log = logging.getLogger(__name__)


async def delete_peer_routes(nl: Netlink, backend: Backend) -> None:
    """Delete every route on ``backend``'s underlay to a peer-sized subnet of the Network, known or
    not (host-gw's routes, and VXLAN's direct routes)."""
    config, lease = backend.config, backend.lease
    for dst in await nl.routes(backend.underlay.iface):
        if dst.subnet_of(config.network) and dst.prefixlen == config.subnet_len \
                and (lease is None or dst != lease.subnet):
            await nl.delete_route(dst, dev=backend.underlay.iface)


class HostGwBackend(Backend):
    """Routes to peers' subnets through their node IPs."""

    type_name = "host-gw"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skipped = 0
        self.routes: dict[ipaddress.IPv4Network, ipaddress.IPv4Address] = {}  # peer subnet -> its node IP
        self._lock = asyncio.Lock()  # apply and reconcile: a route being removed is never put back

    async def preflight(self) -> None:
        async with Netlink() as nl:
            if not await nl.is_ethernet(self.underlay.iface):
                raise ConfigError(f"host-gw needs an Ethernet underlay; {self.underlay.iface} is not one")

    async def setup(self, lease: Lease) -> None:
        self.lease = lease
        async with Netlink() as nl:  # peer routes left from before a restart: the listing re-adds live ones
            await delete_peer_routes(nl, self)

    async def teardown(self, nl: Netlink) -> None:
        """``--cleanup-on-exit``: every peer route goes (there is no device)."""
        async with self._lock:
            await delete_peer_routes(nl, self)
            self.routes.clear()

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
                await self._forget(nl, lease.subnet)
            # one read for the whole batch, taken after the removals it must not see
            state = await nl.device_state(self.underlay.iface, peers=False) if batch.added else None
            for lease in batch.added:
                if lease.attrs.backend_type != self.type_name:
                    log.warning("peer %s uses backend %s, not host-gw: skipped", lease.subnet,
                                lease.attrs.backend_type)
                    self.skipped += 1
                    await self._forget(nl, lease.subnet)  # it may have been a host-gw peer before
                    continue
                try:
                    await nl.ensure_route(lease.subnet, self.underlay.iface, gateway=lease.public_ip,
                                          state=state)
                except PlumbingError as exc:
                    log.warning("peer %s on %s is not on this L2 segment, skipped: %s",
                                lease.subnet, lease.public_ip, exc)
                    self.skipped += 1
                    await self._forget(nl, lease.subnet)
                    continue
                self.routes[lease.subnet] = lease.public_ip

    async def _forget(self, nl: Netlink, subnet) -> None:
        if subnet in self.routes:
            await nl.delete_route(subnet, dev=self.underlay.iface)
            del self.routes[subnet]

    def peer_subnets(self) -> list[str]:
        # list() copies in C, under the GIL: the health server's thread reads this too
        return sorted(str(s) for s in list(self.routes))

    def stats(self) -> dict:
        return {"routes": len(self.routes), "skipped_peers": self.skipped}
