"""Lease policy: acquire a subnet, keep it renewed and ours, follow the peers.

Separated from the stores (flannel's manager/registry split) so that the same
policy runs against etcd and against the in-memory store in unit tests. Time
enters only through the ``clock`` and ``sleep`` callables.

Acquisition order (flannel's): a lease that already carries our public IP (a
reservation first: a key an operator wrote without a TTL), then the subnet
recorded in our subnet file if nothing overlaps it, then a random free
subnet. A lost create race re-lists and tries again (flannel gives up there:
a known bug).

Keeping the lease: the renew loop sleeps until the renewal is due, but wakes
at once when the peer watch sees our own key deleted or rewritten (flannel's
MonitorLease) and when etcd answers again after an outage (etcd may have
restarted and be counting our TTL down). Each wake-up renews and checks that
the key is still bound to our etcd lease; if it is not, the node re-acquires
*its own* subnet, and only that one: a node whose subnet went to another node
must restart (its pods are numbered from it), and it never takes a second
subnet on the way.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from ..errors import LeaseError, StoreError, StoreRetryable, StoreUnavailable, WatchReset
from ..netconf import NetworkConfig
from .allocator import choose_subnet, is_free
from .connectivity import Backoff, Connectivity, sleep_or, wait_to_retry
from .model import Lease, LeaseAttrs
from .store import Store
from .watcher import Batch, LeaseEvent, LeaseWatcher, Thaw

log = logging.getLogger(__name__)

DEFAULT_TTL = 24 * 3600
MAX_RENEW_MARGIN = 3600
RESERVATION_CHECK = 600  # seconds between checks that a reservation (no TTL) is still ours
RENEW_RETRY_CAP = 5.0  # longest pause between renewals etcd answered "busy"
THAW_GRACE_MIN, THAW_GRACE_MAX = 5.0, 30.0
WATCH_STEADY = 30.0  # a watch that lived this long before breaking was not flapping
WATCH_FLAPS = 3  # short-lived watches in a row that make a flapping watch
WATCH_RETRY_CAP = 5.0  # longest pause before re-listing a flapping watch


Pair = tuple  # (subnet, subnet6) as a Lease is keyed: (IPv4, IPv6 or None), or (IPv6, IPv6)


def _pair_of(config: NetworkConfig, subnet, subnet6) -> Pair | None:
    """The pair of ``config``'s families made of these subnets (None: nothing to prefer)."""
    if config.ipv4 is None:
        return None if subnet6 is None else (subnet6, subnet6)
    if subnet is None:
        return None
    return (subnet, subnet6 if config.ipv6 is not None else None)


def _show_pair(pair: Pair) -> str:
    subnet, subnet6 = pair
    return str(subnet) if subnet6 is None or subnet6 == subnet else f"{subnet} and {subnet6}"


def _show(lease: Lease) -> str:
    """A lease's subnets, for a log line: ``10.244.3.0/24`` or ``10.244.3.0/24 and fd00:...::/64``."""
    return _show_pair((lease.subnet, lease.subnet6))


def renew_margin(ttl: float) -> float:
    """How long before expiry to renew: min(60 min, TTL/3)."""
    return min(MAX_RENEW_MARGIN, ttl / 3)


def thaw_grace(ttl: float) -> float:
    """How long a peer whose key expired around an etcd outage keeps its route: one renew
    margin of the cluster's TTL, within [5 s, 30 s]. Owners put their keys back the moment
    their own probe sees etcd again (2 s apart at most, jittered) plus one round trip."""
    return min(THAW_GRACE_MAX, max(THAW_GRACE_MIN, renew_margin(ttl)))


class WatchFlaps:
    """Tells a flapping peer watch from one that broke once. Pure: time is passed in.

    A watch that lived :data:`WATCH_STEADY` seconds broke once: re-list at once. Watches
    that break sooner back off (jittered, doubling up to :data:`WATCH_RETRY_CAP`); the
    :data:`WATCH_FLAPS`-th short one in a row is reported, once per flapping episode.
    """

    def __init__(self, rng: random.Random | None = None, what: str = "peer watch"):
        self.what = what  # the watch, as the log lines name it
        self.backoff = Backoff(first=0.1, cap=WATCH_RETRY_CAP, rng=rng)
        self.since = 0.0  # when the current watch started
        self.short = 0  # short-lived watches in a row
        self.breaks = 0  # breaks since the watch was last steady

    def started(self, now: float) -> None:
        """A listing succeeded and a watch starts."""
        self.since = now

    def steady(self) -> None:
        """The watch ended for a reason of its own (etcd was away): not a flap."""
        self.short = self.breaks = 0
        self.backoff.reset()

    def broke(self, now: float, exc: BaseException) -> tuple[float, str | None]:
        """The pause before re-listing, and a line to log (None: nothing new to say)."""
        self.breaks += 1
        if now - self.since >= WATCH_STEADY:
            self.steady()
            self.breaks = 1
            return 0.0, f"{self.what} broke ({exc}); re-listing"
        self.short += 1
        delay = self.backoff.next()
        if self.short == WATCH_FLAPS:
            return delay, (f"{self.what} keeps breaking while etcd answers ({self.breaks} times, "
                           f"last: {exc}); re-listing with backoff up to {WATCH_RETRY_CAP:g}s")
        if self.short < WATCH_FLAPS:
            return delay, f"{self.what} broke ({exc}); re-listing in {delay:.1f}s"
        return delay, None


class LeaseManager:
    """Acquires, renews and guards this node's lease in a :class:`Store`."""

    def __init__(self, store: Store, config: NetworkConfig, attrs: LeaseAttrs,
                 ttl: int = DEFAULT_TTL, hint: ipaddress.IPv4Network | None = None,
                 hint6: ipaddress.IPv6Network | None = None,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rng: random.Random | None = None):
        self.store = store
        self.config = config
        self.attrs = attrs
        self.ttl = ttl
        # the subnet file's subnets, as a (subnet, subnet6) pair of the config's families
        self.hint: Pair | None = _pair_of(config, hint, hint6)
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.lease: Lease | None = None  # the lease we hold, once acquired
        self.attempts = 0  # list-and-create rounds the last acquisition took (1: no lost race)
        self.wake = asyncio.Event()  # set: verify the lease now (own key changed, etcd back)

    async def acquire(self, only: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None,
                      only6: ipaddress.IPv6Network | None = None) -> Lease:
        """Lease a subnet (a pair of them in a dual-stack network): ours from before if we
        have one, else a free one.

        With ``only`` (and ``only6``, a lease's ``subnet6``), take that lease's subnets or
        nothing: :class:`LeaseError` when another node holds either. Raises
        :class:`NetworkFullError` when no subnet is free, and :class:`StoreUnavailable`
        when etcd cannot be reached.
        """
        self.attempts = 0
        lost: set[Pair] = set()  # pairs whose create lost: taken, listed or not
        while True:
            self.attempts += 1
            leases, revision = await self.store.list_leases()
            lease, tried = await self._try_once(leases, revision, lost,
                                                None if only is None else (only, only6))
            if lease is not None:
                if self.attempts > 1:
                    log.info("acquired %s after %d attempts (lost races)", _show(lease), self.attempts)
                self.lease = lease
                return lease
            lost.add(tried)
            log.debug("lease attempt %d on %s lost a race; re-listing", self.attempts, tried[0])
            if self.attempts > 3:  # many nodes racing: spread them out
                await self.sleep(min(1.0, 0.05 * self.attempts) * self.rng.random())

    def _ours(self, lease: Lease) -> bool:
        """Whether ``lease`` carries our address: PublicIP, or PublicIPv6 on an IPv6-only node
        (flannel matches PublicIP alone, which is 0.0.0.0 on every IPv6-only node)."""
        if self.attrs.public_ip is not None:
            return lease.public_ip == self.attrs.public_ip
        return lease.attrs.public_ip6 == self.attrs.public_ip6

    def _fits(self, subnet, subnet6) -> bool:
        """Whether a lease on ``subnet``/``subnet6`` is one the config could hand out, in every
        family it has and no other (flannel's isSubnetConfigCompat/isIPv6SubnetConfigCompat)."""
        config = self.config
        if config.ipv4 is not None and (subnet.version != 4 or not config.contains_subnet(subnet)):
            return False
        if config.ipv6 is None:
            return subnet6 is None
        return subnet6 is not None and config.contains_subnet(subnet6)

    def _mine(self, ours: list[Lease]) -> list[Lease]:
        """Of ``ours`` (the leases that carry our public IP), those the config could hand out,
        reservations first."""
        return sorted((l for l in ours if self._fits(l.subnet, l.subnet6)), key=lambda l: l.handle != 0)

    @staticmethod
    def _taken(leases: list[Lease], lost: set[Pair]) -> tuple[list, list]:
        """The subnets (of either family) and the IPv6 subnets that ``leases`` and ``lost`` hold."""
        taken = [l.subnet for l in leases] + [s for s, _ in lost]
        taken6 = [l.subnet6 for l in leases if l.subnet6 is not None] + [s for _, s in lost if s is not None]
        return taken, taken6

    def _free(self, leases: list[Lease], lost: set[Pair], pair: Pair) -> bool:
        """Whether both halves of ``pair`` may be leased."""
        taken, taken6 = self._taken(leases, lost)
        subnet, subnet6 = pair
        return ((subnet.version == 6 or is_free(self.config, taken, subnet))
                and (subnet6 is None or is_free(self.config, taken6, subnet6)))

    def _choose(self, leases: list[Lease], lost: set[Pair], prefer: Pair | None) -> Pair:
        """A free pair of the config's families, ``prefer``'s halves where they are free."""
        taken, taken6 = self._taken(leases, lost)
        halves = []
        for pool, used, wanted in ((self.config.ipv4, taken, prefer and prefer[0]),
                                   (self.config.ipv6, taken6, prefer and prefer[1])):
            if pool is None:
                halves.append(None)
            elif wanted is not None and wanted.version == pool.network.version and is_free(pool, used, wanted):
                halves.append(wanted)
            else:
                halves.append(choose_subnet(pool, used, self.rng))
        four, six = halves
        return (four, six) if four is not None else (six, six)

    def _movable(self, lease: Lease) -> bool:
        """Our lease of another shape than the config's (made before IPv6 was enabled or
        disabled) whose subnets the config still has: the node keeps them in a new key."""
        if lease.handle == 0 or not self._ours(lease) or self._fits(lease.subnet, lease.subnet6):
            return False
        config, four = self.config, lease.subnet if lease.subnet.version == 4 else None
        return ((config.ipv4 is None or (four is not None and config.contains_subnet(four)))
                and (config.ipv6 is None or lease.subnet6 is None or config.contains_subnet(lease.subnet6)))

    async def _create(self, pair: Pair, revision: int, reclaim_invalid: bool = False) -> Lease | None:
        """Create the lease on ``pair``: with an IPv6 half, only from an unchanged listing
        (the key compare guards the IPv4 half alone)."""
        subnet, subnet6 = pair
        extra = {} if self.config.ipv6 is None else {"subnet6": subnet6, "unchanged_since": revision}
        if reclaim_invalid:
            extra["reclaim_invalid"] = True
        return await self.store.create_lease(subnet, self.attrs, self.ttl, **extra)

    async def _try_once(self, leases: list[Lease], revision: int, lost: set[Pair],
                        only: Pair | None) -> tuple[Lease | None, Pair]:
        """One attempt: (the lease, or None if the create lost a race; the pair tried).

        A pair we lost a race for stays taken for this acquisition even if
        the listing does not show it (a key whose value does not decode), so
        we never retry it forever.
        """
        ours = [l for l in leases if self._ours(l)]  # the one look at every lease but the allocator's
        mine = [l for l in self._mine(ours) if (l.subnet, l.subnet6) not in lost]
        if only is not None:
            mine = [l for l in mine if (l.subnet, l.subnet6) == only]
        if mine:
            lease = mine[0]
            kind = "reservation" if lease.handle == 0 else "lease"
            log.info("reusing our %s on %s", kind, _show(lease))
            return await self.store.update_lease(lease, self.attrs, self.ttl), (lease.subnet, lease.subnet6)
        if only is not None:
            if not self._free(leases, lost, only):
                holder = next((str(l.public_ip or l.attrs.public_ip6) for l in leases
                               if l.subnet.overlaps(only[0])
                               or (l.subnet6 is not None and only[1] is not None and l.subnet6.overlaps(only[1]))),
                              "another node")
                raise LeaseError(f"subnet {_show_pair(only)} is now held by {holder}")
            # our own key overwritten with garbage is still ours to take back
            return await self._create(only, revision, reclaim_invalid=True), only
        # our lease from before IPv6 was enabled (or disabled): keep its subnets in a key of
        # the config's shape and drop the old key once the new one is in (flannel deletes the
        # lease and allocates afresh: the node is renumbered)
        old = next((l for l in ours if self._movable(l) and (l.subnet, l.subnet6) not in lost), None)
        if old is not None:
            prefer = (old.subnet if old.subnet.version == 4 else None, old.subnet6)
        else:
            prefer = self.hint
        others = leases if old is None else [l for l in leases if l is not old]
        pair = self._choose(others, lost, prefer)
        if old is None and prefer is not None and pair == prefer:
            log.info("reclaiming %s from the subnet file", _show_pair(pair))
        lease = await self._create(pair, revision)
        if lease is not None and old is not None:
            log.info("moved our lease on %s to %s", _show(old), _show(lease))
            await self.store.delete_lease(old.subnet, old.revision, subnet6=old.subnet6)
        return lease, pair

    def renew_delay(self, lease: Lease) -> float:
        """Seconds to wait before renewing ``lease`` (checking it, for a reservation)."""
        if lease.expiration is None:
            return float(min(self.ttl, RESERVATION_CHECK))
        return max(0.0, lease.expiration - renew_margin(self.ttl) - self.clock())

    def own_key_seen(self, seen: Lease | None) -> None:
        """The peer watch saw our key (``None``: absent or not a lease): check it at once
        unless it is exactly the lease we hold."""
        held = self.lease
        if held is None:
            return
        if seen is None or seen.handle != held.handle or seen.attrs != held.attrs:
            self.wake.set()

    async def keep_renewed(self, lease: Lease, connectivity: Connectivity,
                           on_renew: Callable[[Lease], None] | None = None) -> None:
        """Renew ``lease`` before it expires, forever; see the module note.

        While etcd is unreachable it waits for ``connectivity`` (whose
        ``run()`` must be running) and renews the moment etcd answers. A node
        that cannot get its own subnet back raises :class:`LeaseError` (the
        data plane is configured for it: the daemon must restart).
        """
        self.lease = lease
        connectivity.notify_on_return(self.wake)
        busy = Backoff(first=0.25, cap=RENEW_RETRY_CAP, rng=self.rng)
        while True:
            await sleep_or(self.wake, self.renew_delay(lease), self.sleep)
            self.wake.clear()
            try:
                renewed = await self.store.renew_lease(lease)
            except StoreRetryable as exc:
                if not isinstance(exc, StoreUnavailable):
                    log.warning("renewing %s: %s; retrying", lease.subnet, exc)
                await wait_to_retry(exc, connectivity, busy, self.sleep)
                self.wake.set()  # renew the moment etcd answers
                continue
            except LeaseError as exc:
                log.warning("%s; re-acquiring %s", exc, lease.subnet)
                renewed = await self._reacquire(lease, connectivity)
                log.warning("lease on %s is ours again", renewed.subnet)
            if renewed.expiration is not None:
                log.debug("renewed %s, expires in %.0fs", renewed.subnet, renewed.expiration - self.clock())
            busy.reset()
            lease = self.lease = renewed
            if on_renew is not None:
                on_renew(lease)

    async def _reacquire(self, lease: Lease, connectivity: Connectivity) -> Lease:
        busy = Backoff(first=0.25, cap=RENEW_RETRY_CAP, rng=self.rng)
        while True:  # etcd tends to flap exactly when leases expire: outlast it
            try:
                return await self.acquire(only=lease.subnet, only6=lease.subnet6)
            except StoreRetryable as exc:
                await wait_to_retry(exc, connectivity, busy, self.sleep)
            except LeaseError as exc:
                raise LeaseError(f"lost subnet {_show(lease)}: {exc}; restarting") from None


async def follow_peers(store: Store, watcher: LeaseWatcher,
                       on_batch: Callable[[Batch], Awaitable[None] | None],
                       connectivity: Connectivity,
                       on_own: Callable[[Lease | None], None] | None = None,
                       sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                       grace: float = 0.0, rng: random.Random | None = None) -> None:
    """Keep ``watcher``'s peer table in step with the store, forever.

    List, apply the difference, watch from the listing's revision; when the
    watch breaks (etcd restart, compaction, an etcd restored from an older
    data dir whose revision went backwards), wait until etcd answers, list
    again and apply only the difference, so no peer is lost or reported
    twice. ``on_own`` gets our own key whenever a listing or an event shows
    it (None when it is absent or no longer decodes).

    With ``grace``, a peer whose key vanishes while etcd is away or within
    ``grace`` seconds of its return, with its etcd lease gone, keeps its route
    for ``grace`` seconds or until its owner puts the key back (see
    :mod:`.watcher`). A watch that breaks while etcd answers is re-listed
    with backoff (:class:`WatchFlaps`). A fatal store error ends the loop.
    """
    own = watcher.own_subnet
    clock = connectivity.clock
    flaps = WatchFlaps(rng)
    lock = asyncio.Lock()  # one batch at a time: the watch's and the grace timer's
    held = asyncio.Event()  # set: a peer was held, the timer looks at its deadline

    async def thaw(vanishing: list[Lease]) -> Thaw | None:
        if grace <= 0 or not vanishing or not connectivity.recently_down(grace):
            return None
        try:
            live = await store.live_lease_ids()
        except (StoreError, LeaseError) as exc:  # cannot tell: treat them as expired (for one grace)
            log.debug("cannot list live etcd leases (%s)", exc)
            live = frozenset()
        return Thaw(until=clock() + grace, live=live)

    async def step(apply, vanishing: list[Lease]) -> None:
        async with lock:
            batch = apply(await thaw(vanishing))
            if watcher.held:
                held.set()
            await _deliver(on_batch, batch)

    async def release_held() -> None:
        while True:
            due = watcher.next_expiry()
            if due is None:
                await held.wait()
            else:
                await sleep_or(held, due - clock())
            held.clear()
            async with lock:
                await _deliver(on_batch, watcher.expire(clock()))

    timer = asyncio.create_task(release_held())
    try:
        while True:
            try:
                leases, revision = await store.list_leases()
                if revision < watcher.revision:
                    log.warning("etcd revision went backwards (%d -> %d): etcd restored from "
                                "an older state? resynchronising the peer table",
                                watcher.revision, revision)
                if on_own is not None:
                    on_own(next((l for l in leases if l.subnet == own), None))
                await step(lambda t: watcher.reset(leases, revision, t), watcher.vanishing(leases))
                flaps.started(clock())
                async for events in batched(store.watch_leases(revision)):
                    if on_own is not None:
                        for ev in events:
                            if ev.subnet == own:
                                on_own(ev.lease)
                    await step(lambda t: watcher.apply(events, t), watcher.vanishing(events=events))
            except StoreUnavailable as exc:
                if not await connectivity.check(exc):  # etcd itself is away: wait, re-list at once
                    await connectivity.wait_up()
                    flaps.steady()
                    log.info("peer watch resumes")  # the outage itself was logged once, by connectivity
                    continue
                delay, line = flaps.broke(clock(), exc)
            except (WatchReset, StoreRetryable) as exc:
                delay, line = flaps.broke(clock(), exc)
            if line:
                log.warning("%s", line)
            await sleep(delay)
    finally:
        timer.cancel()
        await asyncio.gather(timer, return_exceptions=True)


async def batched(stream: AsyncIterator[list[LeaseEvent]]) -> AsyncIterator[list[LeaseEvent]]:
    """``stream``'s events, merged: everything that arrived while the previous batch was
    being applied comes as one batch.

    etcd's client hands events over one at a time; when 1000 nodes join at once,
    applying them one by one (a kernel-state read and a status-file write each)
    is quadratic. The order of events is kept; errors are passed on as raised.
    """
    queue: asyncio.Queue = asyncio.Queue()
    end = object()

    async def pump():
        try:
            async for events in stream:
                queue.put_nowait(events)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            queue.put_nowait(exc)
        else:
            queue.put_nowait(end)

    task = asyncio.create_task(pump())
    try:
        while True:
            items = [await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            merged = []
            for item in items:
                if item is end:
                    if merged:
                        yield merged
                    return
                if isinstance(item, BaseException):
                    if merged:
                        yield merged
                    raise item
                merged.extend(item)
            yield merged
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


async def _deliver(on_batch, batch: Batch) -> None:
    if batch:
        result = on_batch(batch)
        if asyncio.iscoroutine(result):
            await result
