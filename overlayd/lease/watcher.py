"""The peer table: turns lease snapshots and watch events into added/removed batches.

Pure code (like flannel's ``pkg/lease/watch.go``): the store's watch loop
feeds it a snapshot after every (re)listing and the events in between; it
keeps the table of subnets -> leases and reports only real changes, so a
re-list after a broken watch neither loses nor duplicates a peer. Our own
subnet is never reported as a peer, and neither is a lease that does not fit
the network config (another SubnetLen, outside SubnetMin..SubnetMax, such as
the Network's first subnet): those are reported in ``Batch.ignored`` so the
daemon can say so, and never reach a backend (a key ``0.0.0.0-0`` must not
become a route). Which leases fit is :mod:`.audit`'s rule, shared with
``overlayctl subnets``; so is a stray: a key for another subnet that names
our PublicIP, reported once in ``Batch.strays`` and never a peer. A key without a TTL (a reservation) is a lease like any
other here: how long it lives is the lease manager's business.

Design note: holding peers through an etcd thaw (issue 16). A single etcd
member that was frozen (SIGSTOP, a paused VM) longer than the TTL expires
every lease the moment it resumes. The first node back re-listed, found the
other nodes' keys gone and dropped their routes until each owner put its key
back a second later: a traffic gap of ~0.9 s after every such outage. A
DELETE event does not say why a key went, so the caller tells us two things
(:class:`Thaw`): that etcd was unreachable for us a moment ago (or still is),
and which etcd leases are alive now. A peer key that vanished in that window
while its etcd lease is gone (expired, or revoked: etcd cannot tell the two
apart afterwards) keeps its route until its owner puts it back or
``Thaw.until`` passes (:meth:`LeaseWatcher.expire`). A key deleted while its
etcd lease still lives (``etcdctl del``), a reservation (no etcd lease) and
any deletion outside the window are removed at once, as before. The cost: a
node that really died during the outage, or revoked its lease inside the
window, stays routed for one grace period; its traffic was lost anyway.
Pure: time and liveness are passed in.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable

from ..netconf import NetworkConfig
from .audit import misfit, stray
from .model import Lease


@dataclasses.dataclass(frozen=True)
class LeaseEvent:
    """One change seen by a watch: a lease put (``lease`` set) or deleted. ``subnet`` and
    ``subnet6`` are what the key names (as in :class:`Lease`): a dual-stack and an IPv4-only
    key of one subnet are two keys, and deleting one leaves the other's peer alone."""

    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network
    lease: Lease | None
    revision: int
    subnet6: ipaddress.IPv6Network | None = None

    def names(self, lease: Lease) -> bool:
        """Whether this event's key is ``lease``'s."""
        return (self.subnet, self.subnet6) == (lease.subnet, lease.subnet6)

    @property
    def deleted(self) -> bool:
        return self.lease is None


@dataclasses.dataclass(frozen=True)
class Thaw:
    """The caller's view right after an etcd outage (see the module note): peers that vanish
    now with their etcd lease gone keep their route until ``until``; ``live`` are the etcd
    lease IDs alive now (a key deleted under a live lease was deleted on purpose)."""

    until: float
    live: frozenset[int] = frozenset()


def holds(lease: Lease, thaw: Thaw | None) -> bool:
    """Whether ``lease``, whose key just vanished, keeps its route for a grace period."""
    return thaw is not None and lease.handle != 0 and lease.handle not in thaw.live


@dataclasses.dataclass
class Batch:
    """The peers that appeared (or changed) and disappeared in one step."""

    added: list[Lease] = dataclasses.field(default_factory=list)
    removed: list[Lease] = dataclasses.field(default_factory=list)
    ignored: list[Lease] = dataclasses.field(default_factory=list)  # do not fit the config
    held: list[Lease] = dataclasses.field(default_factory=list)  # vanished, kept through a thaw
    strays: list[Lease] = dataclasses.field(default_factory=list)  # new keys naming us, not ours
    listed: bool = False  # from a full listing (ours at start, or after a broken watch), not from events

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.ignored or self.held or self.strays)


def _same(a: Lease, b: Lease) -> bool:
    # The TTL moves on every renewal; only what the data plane uses matters.
    return a.attrs == b.attrs


class LeaseWatcher:
    """Holds the current peer table and diffs snapshots and events against it."""

    def __init__(self, own_subnet: ipaddress.IPv4Network | None = None,
                 config: NetworkConfig | None = None, own_ip: ipaddress.IPv4Address | None = None):
        """``config``: only leases it could hand out become peers (None: any). ``own_ip``:
        our PublicIP; a key naming it for another subnet is a stray, never a peer."""
        self.own_subnet = own_subnet
        self.own_ip = own_ip
        self.config = config
        self.strays: dict[ipaddress.IPv4Network, Lease] = {}  # keys naming us that are not ours
        self.peers: dict[ipaddress.IPv4Network, Lease] = {}
        self.revision = 0  # the newest revision seen
        self._floor = 0  # the revision of the last snapshot: older events are stale
        self.held: dict[ipaddress.IPv4Network, float] = {}  # vanished peers kept until then

    def fits(self, subnet: ipaddress.IPv4Network) -> bool:
        """Whether ``subnet`` can be a peer's (:func:`.audit.misfit`)."""
        return self.config is None or misfit(subnet, self.config) is None

    def _stray(self, lease: Lease, batch: Batch, known: dict[ipaddress.IPv4Network, Lease]) -> bool:
        """Whether ``lease`` is a stray (reported in ``batch`` unless ``known`` has it as it is)."""
        if self.own_ip is None or not stray(lease, self.own_subnet, self.own_ip):
            return False
        old = known.get(lease.subnet)
        if old is None or old.handle != lease.handle or not _same(old, lease):
            batch.strays.append(lease)
        self.strays[lease.subnet] = lease
        return True

    def vanishing(self, snapshot: Iterable[Lease] | None = None,
                  events: Iterable[LeaseEvent] = ()) -> list[Lease]:
        """The peers that ``snapshot`` (a full listing) or the DELETEs among ``events`` would
        remove: the caller asks etcd which of their leases live before judging them."""
        if snapshot is not None:
            listed = {l.subnet for l in snapshot}
            return [l for s, l in self.peers.items() if s not in listed]
        return [self.peers[ev.subnet] for ev in events
                if ev.lease is None and ev.revision > self._floor and ev.subnet in self.peers
                and ev.names(self.peers[ev.subnet])]

    def _vanish(self, old: Lease, thaw: Thaw | None, batch: Batch) -> None:
        """``old``'s key is gone: drop the peer, or hold it through a thaw."""
        if old.subnet in self.held:
            return  # held already: its grace runs on
        if holds(old, thaw):
            self.held[old.subnet] = thaw.until
            batch.held.append(old)
            return
        del self.peers[old.subnet]
        batch.removed.append(old)

    def expire(self, now: float) -> Batch:
        """Remove the held peers whose grace has ended by ``now``."""
        batch = Batch()
        for subnet, until in list(self.held.items()):
            if until <= now:
                del self.held[subnet]
                batch.removed.append(self.peers.pop(subnet))
        return batch

    def next_expiry(self) -> float | None:
        """When the first held peer's grace ends (None: none is held)."""
        return min(self.held.values(), default=None)

    def reset(self, snapshot: Iterable[Lease], revision: int, thaw: Thaw | None = None) -> Batch:
        """Replace the table by a full listing taken at ``revision``; a peer missing from it
        is held through ``thaw`` when :func:`holds` says so."""
        snapshot = list(snapshot)
        batch = Batch(listed=True)
        fresh = {}
        known, self.strays = self.strays, {}
        for lease in snapshot:
            if lease.subnet == self.own_subnet:
                continue
            if not self.fits(lease.subnet):
                batch.ignored.append(lease)
            elif not self._stray(lease, batch, known):
                fresh[lease.subnet] = lease
        for subnet, old in list(self.peers.items()):
            if subnet not in fresh:
                self._vanish(old, None if subnet in self.strays else thaw, batch)
        for subnet, lease in fresh.items():
            self.held.pop(subnet, None)  # back: its owner re-asserted it
            old = self.peers.get(subnet)
            if old is None or not _same(old, lease):
                batch.added.append(lease)
            self.peers[subnet] = lease
        self.revision = self._floor = revision
        return batch

    def apply(self, events: Iterable[LeaseEvent], thaw: Thaw | None = None) -> Batch:
        """Apply watch events in order; events not newer than the last snapshot are skipped.
        A deleted peer is held through ``thaw`` when :func:`holds` says so."""
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
                stray_ = self.strays.get(ev.subnet)
                if stray_ is not None and ev.names(stray_):
                    del self.strays[ev.subnet]
                if old is not None and ev.names(old):  # not another key of the same subnet
                    self._vanish(old, thaw, batch)
                continue
            if self._stray(ev.lease, batch, self.strays):
                if old is not None:  # a peer's key now names us: no longer a peer
                    self.held.pop(ev.subnet, None)
                    del self.peers[ev.subnet]
                    batch.removed.append(old)
                continue
            self.strays.pop(ev.subnet, None)
            self.held.pop(ev.subnet, None)  # back: its owner re-asserted it
            self.peers[ev.subnet] = ev.lease
            if old is None or not _same(old, ev.lease):
                batch.added.append(ev.lease)
        return batch
