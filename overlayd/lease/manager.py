"""Lease policy: acquire a subnet, keep it renewed, follow the peers.

Separated from the stores (flannel's manager/registry split) so that the same
policy runs against etcd and against the in-memory store in unit tests. Time
enters only through the ``clock`` and ``sleep`` callables.

Acquisition order (flannel's): a lease that already carries our public IP,
then the subnet recorded in our subnet file, then a random free subnet. A lost
create race re-lists and tries again (flannel gives up there: a known bug).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import time
from collections.abc import Awaitable, Callable

from ..errors import LeaseError, StoreUnavailable, WatchReset
from ..netconf import NetworkConfig
from .allocator import choose_subnet
from .model import Lease, LeaseAttrs
from .store import Store
from .watcher import Batch, LeaseWatcher

log = logging.getLogger(__name__)

DEFAULT_TTL = 24 * 3600
MAX_RENEW_MARGIN = 3600


def renew_margin(ttl: float) -> float:
    """How long before expiry to renew: min(60 min, TTL/3)."""
    return min(MAX_RENEW_MARGIN, ttl / 3)


class Backoff:
    """Exponential backoff with a cap: 0.5 s, 1 s, 2 s ... ``cap``; ``reset()`` after success."""

    def __init__(self, first: float = 0.5, cap: float = 30.0):
        self.first, self.cap = first, cap
        self._next = first

    def next(self) -> float:
        delay, self._next = self._next, min(self.cap, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self.first


class LeaseManager:
    """Acquires and renews this node's lease in a :class:`Store`."""

    def __init__(self, store: Store, config: NetworkConfig, attrs: LeaseAttrs,
                 ttl: int = DEFAULT_TTL, hint: ipaddress.IPv4Network | None = None,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rng: random.Random | None = None):
        self.store = store
        self.config = config
        self.attrs = attrs
        self.ttl = ttl
        self.hint = hint
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()

    async def acquire(self) -> Lease:
        """Lease a subnet: ours from before if we have one, else a free one.

        Raises :class:`NetworkFullError` when no subnet is free, and
        :class:`StoreUnavailable` when etcd cannot be reached.
        """
        attempts = 0
        lost: set[ipaddress.IPv4Network] = set()  # subnets whose create lost: taken, listed or not
        while True:
            attempts += 1
            leases, _ = await self.store.list_leases()
            lease, tried = await self._try_once(leases, lost)
            if lease is not None:
                if attempts > 1:
                    log.info("acquired %s after %d attempts (lost races)", lease.subnet, attempts)
                return lease
            lost.add(tried)
            log.debug("lease attempt %d on %s lost a race; re-listing", attempts, tried)
            if attempts > 3:  # many nodes racing: spread them out
                await self.sleep(min(1.0, 0.05 * attempts) * self.rng.random())

    async def _try_once(self, leases: list[Lease], lost: set[ipaddress.IPv4Network]
                        ) -> tuple[Lease | None, ipaddress.IPv4Network]:
        """One attempt: (the lease, or None if the create lost a race; the subnet tried).

        A subnet we lost a race for stays taken for this acquisition even if
        the listing does not show it (a key whose value does not decode), so
        we never retry it forever.
        """
        mine = [l for l in leases
                if l.public_ip == self.attrs.public_ip and self.config.contains_subnet(l.subnet)]
        mine = [l for l in mine if l.subnet not in lost]
        if mine:
            log.info("reusing our lease on %s", mine[0].subnet)
            return await self.store.update_lease(mine[0], self.attrs, self.ttl), mine[0].subnet
        taken = {l.subnet for l in leases} | lost
        if self.hint is not None and self.config.contains_subnet(self.hint) and self.hint not in taken:
            log.info("reclaiming %s from the subnet file", self.hint)
            return await self.store.create_lease(self.hint, self.attrs, self.ttl), self.hint
        subnet = choose_subnet(self.config, taken, self.rng)
        return await self.store.create_lease(subnet, self.attrs, self.ttl), subnet

    def renew_delay(self, lease: Lease) -> float:
        """Seconds to wait before renewing ``lease``."""
        if lease.expiration is None:
            return float(self.ttl)
        return max(0.0, lease.expiration - renew_margin(self.ttl) - self.clock())

    async def keep_renewed(self, lease: Lease, on_renew: Callable[[Lease], None] | None = None) -> None:
        """Renew ``lease`` before it expires, forever.

        If etcd is unreachable it retries with backoff until the lease would
        have expired. If the lease is gone (expired, or deleted by an
        operator) it re-acquires, insisting on the same subnet; a node that
        cannot get its own subnet back raises :class:`LeaseError` (the data
        plane is configured for it: the daemon must restart).
        """
        backoff = Backoff()
        while True:
            await self.sleep(self.renew_delay(lease))
            try:
                lease = await self.store.renew_lease(lease)
                backoff.reset()
                log.debug("renewed %s, expires in %.0fs", lease.subnet, lease.expiration - self.clock())
            except StoreUnavailable as exc:
                log.warning("cannot renew lease on %s: %s", lease.subnet, exc)
                await self.sleep(backoff.next())
                continue
            except LeaseError as exc:
                log.warning("%s; re-acquiring %s", exc, lease.subnet)
                lease = await self._reacquire(lease.subnet)
            if on_renew is not None:
                on_renew(lease)

    async def _reacquire(self, subnet: ipaddress.IPv4Network) -> Lease:
        self.hint = subnet
        backoff = Backoff()
        while True:  # etcd tends to flap exactly when leases expire: outlast it
            try:
                lease = await self.acquire()
                break
            except StoreUnavailable as exc:
                log.warning("cannot re-acquire %s: %s", subnet, exc)
                await self.sleep(backoff.next())
        if lease.subnet != subnet:
            raise LeaseError(f"lost subnet {subnet} to another node (got {lease.subnet}); restarting")
        return lease


async def follow_peers(store: Store, watcher: LeaseWatcher,
                       on_batch: Callable[[Batch], Awaitable[None] | None],
                       sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
    """Keep ``watcher``'s peer table in step with the store, forever.

    List, apply the difference, watch from the listing's revision; when the
    watch breaks (etcd restart, compaction, an etcd restored from an older
    data dir whose revision went backwards), list again and apply only the
    difference, so no peer is lost or reported twice.
    """
    backoff = Backoff()
    while True:
        try:
            leases, revision = await store.list_leases()
            if revision < watcher.revision:
                log.warning("etcd revision went backwards (%d -> %d): etcd restored from "
                            "an older state? resynchronising the peer table",
                            watcher.revision, revision)
            await _deliver(on_batch, watcher.reset(leases, revision))
            backoff.reset()
            async for events in store.watch_leases(revision):
                await _deliver(on_batch, watcher.apply(events))
        except (StoreUnavailable, WatchReset) as exc:
            delay = backoff.next()
            log.warning("peer watch interrupted (%s); re-listing in %.1fs", exc, delay)
            await sleep(delay)


async def _deliver(on_batch, batch: Batch) -> None:
    if batch:
        result = on_batch(batch)
        if asyncio.iscoroutine(result):
            await result
