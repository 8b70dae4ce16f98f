"""An in-memory :class:`Store` for unit tests: same contract as etcd, fake clock.

Time never moves by itself: tests pass a ``clock`` callable and call
:meth:`MemoryStore.expire` after moving it, which deletes expired leases and
emits delete events as etcd does when a TTL lease runs out.

Leases are kept by their key, ``(subnet, subnet6)`` as in :class:`Lease`, so that an
IPv4-only and a dual-stack lease on one IPv4 subnet are two keys, as in etcd.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import AsyncIterator, Callable

from ..errors import LeaseError, StoreUnavailable, WatchReset
from .model import Lease, LeaseAttrs
from .watcher import LeaseEvent


class MemoryStore:
    """A store kept in a dict, with revisions, TTLs and watches like etcd's."""

    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self._config: bytes | None = None
        self._leases: dict[tuple, Lease] = {}  # by (subnet, subnet6): the etcd key
        self._ttls: dict[int, int] = {}
        self._live: set[int] = set()  # handles not expired nor revoked (a key deletion keeps its handle)
        self._ids = itertools.count(1)
        self.revision = 1
        self._history: list[LeaseEvent] = []
        self._changed = asyncio.Condition()
        self.compacted = 0  # events at or below this revision are gone
        self.available = True  # set False to make every call fail as if etcd were down

    def _check(self) -> None:
        if not self.available:
            raise StoreUnavailable("memory store is unavailable")

    async def _record(self, event: LeaseEvent) -> None:
        self._history.append(event)
        async with self._changed:
            self._changed.notify_all()

    async def probe(self) -> None:
        self._check()

    async def get_config(self) -> bytes | None:
        self._check()
        return self._config

    async def put_config(self, raw: bytes) -> None:
        self._check()
        self._config = raw
        self.revision += 1

    async def list_leases(self) -> tuple[list[Lease], int]:
        self._check()
        return sorted(self._leases.values(), key=lambda l: (l.subnet.version, l.subnet)), self.revision

    async def _put(self, subnet, attrs: LeaseAttrs, ttl: int | None, subnet6=None) -> Lease:
        """Write a lease; ``ttl`` None writes a reservation (no TTL, handle 0)."""
        self.revision += 1
        if ttl is None:
            lease = Lease(subnet, attrs, None, 0, self.revision, subnet6)
        else:
            handle = next(self._ids)
            self._ttls[handle] = ttl
            self._live.add(handle)
            lease = Lease(subnet, attrs, self._clock() + ttl, handle, self.revision, subnet6)
        self._leases[(subnet, subnet6)] = lease
        await self._record(LeaseEvent(subnet, lease, self.revision, subnet6))
        return lease

    async def create_lease(self, subnet, attrs, ttl, reclaim_invalid=False, subnet6=None,
                           unchanged_since=None):
        self._check()  # (nothing here is ever garbled: reclaim_invalid has nothing to do)
        if (subnet, subnet6) in self._leases:
            return None
        if unchanged_since is not None and any(l.revision > unchanged_since for l in self._leases.values()):
            return None
        return await self._put(subnet, attrs, ttl, subnet6)

    async def update_lease(self, lease, attrs, ttl):
        self._check()
        current = self._leases.get((lease.subnet, lease.subnet6))
        if current is None or current.revision != lease.revision:
            return None
        return await self._put(lease.subnet, attrs, None if lease.handle == 0 else ttl, lease.subnet6)

    async def reserve(self, subnet, attrs: LeaseAttrs) -> Lease:
        """Write a reservation (a lease key without TTL), as an operator would."""
        self._check()
        return await self._put(subnet, attrs, None)

    async def renew_lease(self, lease):
        self._check()
        current = self._leases.get((lease.subnet, lease.subnet6))
        if current is None:
            raise LeaseError(f"lease on {lease.subnet} has expired or was deleted")
        if current.handle != lease.handle or current.public_ip != lease.public_ip:
            raise LeaseError(f"lease key for {lease.subnet} was rewritten by someone else")
        if lease.handle == 0:
            return current  # a reservation: nothing to extend
        renewed = dataclasses.replace(current, expiration=self._clock() + self._ttls[lease.handle])
        self._leases[(lease.subnet, lease.subnet6)] = renewed
        return renewed

    async def revoke_lease(self, lease):
        self._check()
        if not lease.handle:
            return False
        self._live.discard(lease.handle)
        current = self._leases.get((lease.subnet, lease.subnet6))
        if current is not None and current.handle == lease.handle:
            await self.delete_lease(lease.subnet, subnet6=lease.subnet6)
        return True

    async def delete_lease(self, subnet, revision=None, subnet6=None):
        self._check()
        current = self._leases.get((subnet, subnet6))
        if current is None or revision not in (None, current.revision):
            return False
        del self._leases[(subnet, subnet6)]
        self.revision += 1
        await self._record(LeaseEvent(subnet, None, self.revision, subnet6))
        return True

    async def expire(self) -> list:
        """Delete every lease whose TTL has run out by the clock; returns their subnets."""
        now = self._clock()
        gone = [l for l in self._leases.values() if l.expiration is not None and l.expiration <= now]
        for lease in gone:
            self._live.discard(lease.handle)
            await self.delete_lease(lease.subnet, subnet6=lease.subnet6)
        return [l.subnet for l in gone]

    async def live_lease_ids(self) -> frozenset[int]:
        self._check()
        return frozenset(self._live)

    async def break_watches(self) -> None:
        """Make every open watch fail, as an etcd restart does."""
        self.available = False
        async with self._changed:
            self._changed.notify_all()

    async def watch_leases(self, revision: int) -> AsyncIterator[list[LeaseEvent]]:
        self._check()
        if revision < self.compacted:
            raise WatchReset(f"revision {revision} has been compacted")
        seen = revision
        while True:
            async with self._changed:
                await self._changed.wait_for(
                    lambda: not self.available or any(e.revision > seen for e in self._history)
                )
            self._check()
            fresh = [e for e in self._history if e.revision > seen]
            seen = fresh[-1].revision
            yield fresh

    async def close(self) -> None:
        return None
