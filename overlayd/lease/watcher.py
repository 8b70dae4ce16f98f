"""The peer table: turns lease snapshots and watch events into added/removed batches.

Pure code (like flannel's ``pkg/lease/watch.go``): the store's watch loop
feeds it a snapshot after every (re)listing and the events in between; it
keeps the table of subnets -> leases and reports only real changes, so a
re-list after a broken watch neither loses nor duplicates a peer. Our own
subnet is never reported as a peer, and neither is a lease that does not fit
the network config (another SubnetLen, outside SubnetMin..SubnetMax, such as
the Network's first subnet): those are reported in ``Batch.ignored`` so the
daemon can say so, and never reach a backend (a key ``0.0.0.0-0`` must not
become a route). A key without a TTL (a reservation) is a lease like any
other here: how long it lives is the lease manager's business.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable

from ..netconf import NetworkConfig
from .model import Lease


@dataclasses.dataclass(frozen=True)
class LeaseEvent:
    """One change seen by a watch: a lease put (``lease`` set) or deleted."""

    subnet: ipaddress.IPv4Network
    lease: Lease | None
    revision: int

    @property
    def deleted(self) -> bool:
        return self.lease is None


@dataclasses.dataclass
class Batch:
    """The peers that appeared (or changed) and disappeared in one step."""

    added: list[Lease] = dataclasses.field(default_factory=list)
    removed: list[Lease] = dataclasses.field(default_factory=list)
    ignored: list[Lease] = dataclasses.field(default_factory=list)  # do not fit the config

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.ignored)


def _same(a: Lease, b: Lease) -> bool:
    # The TTL moves on every renewal; only what the data plane uses matters.
    return a.attrs == b.attrs


class LeaseWatcher:
    """Holds the current peer table and diffs snapshots and events against it."""

    def __init__(self, own_subnet: ipaddress.IPv4Network | None = None,
                 config: NetworkConfig | None = None):
        """``config``: only leases it could hand out become peers (None: any)."""
        self.own_subnet = own_subnet
        self.config = config
        self.peers: dict[ipaddress.IPv4Network, Lease] = {}
        self.revision = 0  # the newest revision seen
        self._floor = 0  # the revision of the last snapshot: older events are stale

    def fits(self, subnet: ipaddress.IPv4Network) -> bool:
        """Whether ``subnet`` can be a peer's: of SubnetLen, between SubnetMin and SubnetMax."""
        return self.config is None or self.config.contains_subnet(subnet)

    def reset(self, snapshot: Iterable[Lease], revision: int) -> Batch:
        """Replace the table by a full listing taken at ``revision``."""
        batch = Batch()
        fresh = {}
        for lease in snapshot:
            if lease.subnet == self.own_subnet:
                continue
            if self.fits(lease.subnet):
                fresh[lease.subnet] = lease
            else:
                batch.ignored.append(lease)
        for subnet, old in list(self.peers.items()):
            if subnet not in fresh:
                batch.removed.append(old)
                del self.peers[subnet]
        for subnet, lease in fresh.items():
            old = self.peers.get(subnet)
            if old is None or not _same(old, lease):
                batch.added.append(lease)
            self.peers[subnet] = lease
        self.revision = self._floor = revision
        return batch

    def apply(self, events: Iterable[LeaseEvent]) -> Batch:
        """Apply watch events in order; events not newer than the last snapshot are skipped."""
        batch = Batch()
        for ev in events:
            if ev.revision <= self._floor:
                continue
            self.revision = max(self.revision, ev.revision)
            if ev.subnet == self.own_subnet:
                continue
            if not self.fits(ev.subnet):
                if ev.lease is not None:
                    batch.ignored.append(ev.lease)
                continue
            old = self.peers.get(ev.subnet)
            if ev.lease is None:
                if old is not None:
                    del self.peers[ev.subnet]
                    batch.removed.append(old)
                continue
            self.peers[ev.subnet] = ev.lease
            if old is None or not _same(old, ev.lease):
                batch.added.append(ev.lease)
        return batch
