"""The node's view of services and endpoints, from listings and watch events. Pure.

The same resume rules as the peer table (:class:`overlayd.lease.watcher.LeaseWatcher`):
the watch loop feeds a full listing after every (re)listing and the events in between;
events not newer than the last listing are stale and skipped, so a re-list after a broken
watch (etcd restart, compaction, a failover) neither loses nor repeats a change. A key
whose value does not decode is gone (the lease watch treats a garbled lease so too), and
said once in :attr:`Update.errors`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from .model import Change, Endpoint, Service


@dataclasses.dataclass
class Update:
    """What one listing or batch of events changed: whether anything did (the kernel's
    ruleset must follow), and the garbled keys seen (``key: why``, for the log)."""

    changed: bool = False
    errors: list[str] = dataclasses.field(default_factory=list)


class ServiceTable:
    """The current services and endpoints, by etcd key."""

    def __init__(self):
        self.items: dict[str, Service | Endpoint] = {}
        self.revision = 0  # the newest revision seen
        self._floor = 0  # the last listing's revision: events at or below it are stale
        self._bad: dict[str, str] = {}  # garbled keys, reported once each

    @property
    def services(self) -> list[Service]:
        return [v for v in self.items.values() if isinstance(v, Service)]

    @property
    def endpoints(self) -> list[Endpoint]:
        return [v for v in self.items.values() if isinstance(v, Endpoint)]

    def _put(self, change: Change, update: Update) -> None:
        if change.value is None:
            if change.error is not None and self._bad.get(change.key) != change.error:
                update.errors.append(f"{change.key}: {change.error}")
                self._bad[change.key] = change.error
            update.changed |= self.items.pop(change.key, None) is not None
            return
        self._bad.pop(change.key, None)
        # equality leaves out revisions and etcd lease IDs: kept up to date, never a kernel change
        update.changed |= self.items.get(change.key) != change.value
        self.items[change.key] = change.value

    def reset(self, snapshot: Iterable[Change], revision: int) -> Update:
        """Replace the view by a full listing taken at ``revision``."""
        update = Update()
        fresh = list(snapshot)
        keys = {ch.key for ch in fresh}
        listed = {ch.key for ch in fresh if ch.value is not None}
        for key in [k for k in self.items if k not in listed]:
            del self.items[key]
            update.changed = True
        self._bad = {k: v for k, v in self._bad.items() if k in keys}
        for change in fresh:
            self._put(change, update)
        self.revision = self._floor = revision
        return update

    def apply(self, changes: Iterable[Change]) -> Update:
        """Apply watch events in order; those not newer than the last listing are skipped."""
        update = Update()
        for change in changes:
            if change.revision <= self._floor:
                continue
            self.revision = max(self.revision, change.revision)
            self._put(change, update)
        return update
