"""The Store interface: what the lease manager needs from a key-value store.

Two implementations: :mod:`.etcd` (etcd v3 through aetcd) and :mod:`.memory`
(in-process, with an injected clock, for unit tests). Keys and values follow
flannel's layout (:mod:`.model`); the store does the encoding so callers only
see :class:`Lease` objects.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from typing import Protocol

from .model import Lease, LeaseAttrs
from .watcher import LeaseEvent


class Store(Protocol):
    """Async access to the network config and the subnet leases."""

    async def probe(self) -> None:
        """One cheap request; :class:`StoreUnavailable` if the store does not answer."""

    async def get_config(self) -> bytes | None:
        """The raw config JSON, or None when no config has been written."""

    async def put_config(self, raw: bytes) -> None:
        """Write the raw config JSON (the caller validates it first)."""

    async def list_leases(self) -> tuple[list[Lease], int]:
        """Every lease that decodes, and the store revision of the listing."""

    async def create_lease(
        self, subnet: ipaddress.IPv4Network | ipaddress.IPv6Network, attrs: LeaseAttrs,
        ttl: int | None, reclaim_invalid: bool = False,
        subnet6: ipaddress.IPv6Network | None = None, unchanged_since: int | None = None,
    ) -> Lease | None:
        """Create the lease atomically if its key is free; None if somebody holds it.

        The key names ``subnet`` and ``subnet6`` as :class:`Lease` does (a dual-stack
        lease has both). ``ttl`` None creates a reservation (no TTL). Retrying after a
        lost reply must not create a second lease. With ``reclaim_invalid`` a key whose
        value is not a lease is overwritten (our own key, garbled). With
        ``unchanged_since`` (a listing's revision) the create also fails when any lease key
        was written after it: the pair was chosen from that listing, and only then is the
        half that is not the key known to be free.
        """

    async def update_lease(self, lease: Lease, attrs: LeaseAttrs, ttl: int) -> Lease | None:
        """Rewrite ``lease`` with ``attrs`` and a fresh TTL if it is unchanged since listed.

        A reservation (``lease.handle == 0``) stays one: no TTL. Returns None
        when the key was modified or deleted meanwhile.
        """

    async def renew_lease(self, lease: Lease) -> Lease:
        """Extend the lease's TTL and check the key is still bound to it.

        :class:`LeaseError` if it has expired, was deleted or was rewritten.
        A reservation is only checked.
        """

    async def revoke_lease(self, lease: Lease) -> bool:
        """Give up our own ``lease``: its key goes only if still bound to it. A reservation
        (``handle == 0``) is kept: False."""

    async def delete_lease(self, subnet: ipaddress.IPv4Network | ipaddress.IPv6Network,
                           revision: int | None = None,
                           subnet6: ipaddress.IPv6Network | None = None) -> bool:
        """Delete the lease whose key names ``subnet`` and ``subnet6``; True if it existed.
        With ``revision``, only if its key was last modified then (a key rewritten meanwhile
        is left alone: False)."""

    async def live_lease_ids(self) -> frozenset[int]:
        """The handles of every TTL lease alive now (a key deleted while its handle lives was
        deleted on purpose; one whose handle is gone expired or was revoked)."""

    def watch_leases(self, revision: int) -> AsyncIterator[list[LeaseEvent]]:
        """Lease changes after ``revision``, in batches.

        Ends by raising :class:`StoreUnavailable` or :class:`WatchReset`
        when the watch breaks (also at creation, for a compacted revision);
        the caller re-lists and watches again. A key whose value no longer
        decodes is reported as deleted.
        """

    async def close(self) -> None:
        """Release connections."""
