"""The node side of services: etcd -> the node's view -> one nftables table, kept in step.

:class:`ServiceProxy` is what the daemon runs (``run()`` beside the peer watch, ``cleanup()``
with ``--cleanup-on-exit``). Three loops:

* follow: list services and endpoints, render, apply; watch from the listing's revision and
  apply every batch (events that arrive while a batch is applied come as one batch). When
  the watch breaks it re-lists and applies only the difference, with the peer watch's rules
  (:func:`overlayd.lease.manager.follow_peers`): wait for etcd while it is away, back off
  while the watch flaps, re-list at once after a compaction;
* drift repair: at the end of a ``resync_interval`` in which nftables reported a change (or
  every few periods in any case, :mod:`overlayd.plumbing.kernelwatch`) the live table is
  listed and compared with what was applied; anything else (a missing table, a chain an
  operator flushed, a rule added) is replaced as a whole, one log line. Listing is nft's slow part (2.6 s for 1000 services
  of 10 endpoints here, 12,000 chains), so the pause is also at least :data:`DRIFT_DUTY`
  times the last check's duration: at most 2% of a core, whatever the scale;
* health: the endpoints this node owns are probed (:mod:`.health`) and their readiness
  published to etcd when it changes;
* spool: the endpoints the CNI plugin asked for (:mod:`.spool`) are published, bound to
  this node's etcd lease, and deleted when their pod goes.

After each change the UDP flows of endpoints the table no longer uses are cut
(:mod:`.conntrack`): their next datagram is load-balanced again.

:class:`KernelTable` applies a :class:`~.render.Ruleset` with the smallest nft script from
the last one applied (:func:`~.render.update_script`), falling back to replacing the table
when that fails (someone changed it under us). With no service at all there is no table:
its NAT hooks would make the kernel track every connection for nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from ..errors import OverlayError, PlumbingError, StoreError, StoreRetryable, StoreUnavailable, WatchReset
from ..lease.connectivity import Connectivity
from ..lease.manager import WatchFlaps, batched
from ..lease.model import Lease
from ..plumbing import nft
from ..plumbing.kernelwatch import KernelWatch
from .etcd import ServiceStore
from . import spool
from .conntrack import Backend, ConntrackFlusher, stale, udp_backends
from .health import HealthSettings, Verdicts, check_for, probe
from .model import Endpoint, Service
from .render import FAMILY, TABLE, NodeView, Ruleset, full_script, parse_listing, removal_script, render, same, \
    update_script
from .table import ServiceTable, Update

log = logging.getLogger(__name__)

DRIFT_DUTY = 50  # a drift check waits at least this many times its own last duration


class KernelTable:
    """Our nft table in this network namespace. Blocking (``nft`` is a subprocess): the
    proxy calls it in a thread. ``run`` and ``listing`` are nft's, replaceable in tests."""

    def __init__(self, run: Callable[[str], None] = nft.run_script,
                 listing: Callable[[], str | None] = lambda: nft.list_table(FAMILY, TABLE)):
        self.run, self.listing = run, listing
        self.applied: Ruleset | None = None  # what the kernel has (None: no table of ours)
        self.applies = self.repairs = 0

    def apply(self, want: Ruleset | None) -> str | None:
        """Make the kernel's table ``want`` (None: no table); what was done ("created",
        "updated", "removed"), or None when nothing had to be."""
        if want is None:
            if self.applied is None:
                return None
            self.remove()
            return "removed"
        if self.applied is None:
            self.run(full_script(want))
            done = "created"
        else:
            script = update_script(self.applied, want)
            if not script:
                return None
            try:
                self.run(script)
            except PlumbingError as exc:  # the live table is not what we applied: replace it
                log.warning("updating nft table %s %s failed (%s): replacing it", FAMILY, TABLE, exc)
                self.applied = None
                self.run(full_script(want))
            done = "updated"
        self.applied = want
        self.applies += 1
        return done

    def repair(self) -> str | None:
        """Put the applied table back if the live one differs; what was wrong, or None."""
        if self.applied is None:
            return None
        live = self.listing()
        if live is not None and same(parse_listing(live), self.applied):
            return None
        self.run(full_script(self.applied))
        self.repairs += 1
        return f"nft table {FAMILY} {TABLE} was {'different' if live is not None else 'missing'}"

    def remove(self) -> None:
        """Delete our table (whether we applied it or an earlier run did)."""
        self.run(removal_script())
        self.applied = None


class ServiceProxy:
    """Services on this node: follows etcd, programs the kernel, checks its own endpoints."""

    def __init__(self, store: ServiceStore, node: NodeView, connectivity: Connectivity,
                 resync_interval: float = 10.0, health: HealthSettings | None = HealthSettings(),
                 lease: Callable[[], Lease | None] | None = None, spool_dir: str | None = spool.DEFAULT_DIR,
                 kernel: KernelTable | None = None, conntrack: ConntrackFlusher | None = None,
                 watch: KernelWatch | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, rng: random.Random | None = None):
        """``health`` None: this node does not check its endpoints. ``lease`` gives this node's
        lease as it is now (the daemon's, renewed or re-acquired); with ``spool_dir`` the CNI
        plugin's endpoints are published bound to it (either None: not). ``kernel`` and
        ``conntrack`` are the nft table and the UDP flow cutter, ``watch`` says when drift repair is
        due (default: on nftables' change notices; all replaceable in tests)."""
        self.store, self.node, self.connectivity = store, node, connectivity
        self.resync_interval, self.health = resync_interval, health
        self.lease, self.spool_dir = lease, spool_dir
        self.kernel = kernel or KernelTable()
        self.conntrack = conntrack or ConntrackFlusher()
        self.watch = watch or KernelWatch(route=False)
        self._udp: frozenset[Backend] = frozenset()  # the UDP backends of the table applied last
        self.clock, self.sleep, self.rng = clock, sleep, rng
        self.table = ServiceTable()
        self._lock = asyncio.Lock()  # one kernel change at a time: follow's and drift repair's
        self.synced = asyncio.Event()  # set once the first listing is in the kernel

    def stats(self) -> dict[str, int]:
        """Counts for the status file: services, endpoints (ready), ruleset applies and repairs."""
        eps = self.table.endpoints
        return {"services": len(self.table.services), "endpoints": len(eps),
                "endpoints_ready": sum(ep.ready for ep in eps), "nft_applies": self.kernel.applies,
                "nft_repairs": self.kernel.repairs}

    def want(self) -> Ruleset | None:
        """The table the current view asks for (None: no service, no table)."""
        services = self.table.services
        return render(services, self.table.endpoints, self.node) if services else None

    async def _sync(self, update: Update) -> None:
        for line in update.errors:
            log.warning("ignoring %s", line)
        if update.changed or not self.synced.is_set():
            async with self._lock:
                want = self.want()
                started = time.monotonic()
                done = await asyncio.to_thread(self.kernel.apply, want)
                backends = udp_backends(self.table.services, self.table.endpoints)
                gone, self._udp = stale(self._udp, backends), backends
            if gone:
                await self._cut_flows(gone)
            if done:
                log.log(logging.INFO if done != "updated" else logging.DEBUG,
                        "nft table %s %s %s in %.0f ms: %d services, %d ready endpoints", FAMILY, TABLE, done,
                        (time.monotonic() - started) * 1000, len(self.table.services),
                        sum(ep.ready for ep in self.table.endpoints))
        self.synced.set()

    async def _cut_flows(self, gone: list[Backend]) -> None:
        """Delete the conntrack entries of UDP backends the table no longer uses (after the
        table changed: a datagram in between would make a new entry to the old endpoint)."""
        try:
            deleted = await asyncio.to_thread(self.conntrack.flush, gone)
        except PlumbingError as exc:
            log.warning("UDP flows to endpoints that left (%s) stay until they time out: %s",
                        ", ".join(map(str, gone)), exc)
            return
        if deleted:
            log.info("cut %d UDP flows to endpoints that left (%s)", deleted, ", ".join(map(str, gone)))

    async def follow(self) -> None:
        """Keep the kernel in step with etcd, forever (see the module note)."""
        flaps = WatchFlaps(self.rng, what="service watch")
        while True:
            try:
                changes, revision = await self.store.list()
                await self._sync(self.table.reset(changes, revision))
                flaps.started(self.clock())
                async for batch in batched(self.store.watch(revision)):
                    await self._sync(self.table.apply(batch))
            except StoreUnavailable as exc:
                if not await self.connectivity.check(exc):
                    await self.connectivity.wait_up()
                    flaps.steady()
                    continue
                delay, line = flaps.broke(self.clock(), exc)
            except (WatchReset, StoreRetryable) as exc:
                delay, line = flaps.broke(self.clock(), exc)
            if line:
                log.warning("%s", line)
            await self.sleep(delay)

    async def repair_drift(self) -> None:
        """Compare the live table with the applied one every ``resync_interval`` (or
        :data:`DRIFT_DUTY` times the last check's duration, if longer) when :attr:`watch` says a
        check is due, forever."""
        problem, took = None, 0.0
        with self.watch as watch:
            while True:
                await self.sleep(max(self.resync_interval, DRIFT_DUTY * took))
                if not watch.due():
                    continue
                try:
                    async with self._lock:
                        started = self.clock()
                        repaired = await asyncio.to_thread(self.kernel.repair)
                        took = self.clock() - started
                except OverlayError as exc:
                    watch.changed = True  # retried next period, change or not
                    if str(exc) != problem:
                        log.warning("services: drift repair failed, retrying in %gs: %s", self.resync_interval, exc)
                    problem = str(exc)
                    continue
                problem = None
                if repaired:
                    log.warning("repaired: %s", repaired)

    def _mine(self) -> list[tuple[str, Endpoint, Service]]:
        """The endpoints this node owns and checks, with their service."""
        services = {s.name: s for s in self.table.services}
        return [(key, ep, services[ep.service]) for key, ep in self.table.items.items()
                if isinstance(ep, Endpoint) and ep.node == self.node.subnet and ep.service in services]

    async def check_health(self) -> None:
        """Probe this node's endpoints every period and publish changes, forever."""
        settings = self.health
        verdicts = Verdicts(settings)
        while True:
            started = self.clock()
            checks = [(key, ep, check) for key, ep, service in self._mine()
                      if (check := check_for(service, ep)) is not None]
            verdicts.forget(key for key, _, _ in checks)
            results = await asyncio.gather(*(probe(check, settings.timeout) for _, _, check in checks))
            for (key, ep, check), passed in zip(checks, results):
                ready = verdicts.judge(key, ep.ready, passed)
                current = self.table.items.get(key)
                if ready is None or current is None or current.ready == ready:
                    continue
                try:
                    written = await self.store.set_ready(current, ready)
                except (StoreError, OverlayError) as exc:  # etcd away or busy: the next round tries again
                    log.debug("cannot publish %s: %s", key, exc)
                    continue
                if written is not None:
                    log.info("endpoint %s of service %s is %s (%s %s:%d)", ep.address, ep.service,
                             "ready" if ready else "NOT ready", "HTTP GET" if check.path else "TCP connect",
                             check.ip, check.port)
            await self.sleep(max(0.0, settings.period - (self.clock() - started)))

    async def publish_spool(self, interval: float = 1.0) -> None:
        """Publish what the CNI spool asks for every ``interval`` seconds, forever (see
        :mod:`.spool`): a pod of a service with a TCP port starts not ready (its first passed
        health check makes it ready), of a UDP-only one ready."""
        await self.synced.wait()  # judged against etcd as it is, never an empty view
        said: set[str] = set()
        while True:
            entries, problems = await asyncio.to_thread(spool.read_entries, self.spool_dir)
            lines = set(problems)
            lease = self.lease()
            if lease is not None:
                services = {s.name: s for s in self.table.services}
                todo = spool.plan(entries, self.table.endpoints, services, self.node.subnet)
                for name, ip in todo.add:
                    probe_it = self.health is not None and check_for(services[name], Endpoint(
                        name, self.node.subnet, ip)) is not None
                    try:
                        await self.store.add_endpoint(name, ip, ready=not probe_it, owner=lease, source=spool.SOURCE)
                    except OverlayError as exc:
                        lines.add(f"cannot add endpoint {ip} to service {name}: {exc}")
                    else:
                        log.info("endpoint %s joined service %s (CNI)", ip, name)
                for ep in todo.delete:
                    try:
                        await self.store.delete_endpoint(ep)
                    except OverlayError as exc:
                        lines.add(f"cannot remove endpoint {ep.address} from service {ep.service}: {exc}")
                    else:
                        log.info("endpoint %s left service %s (CNI)", ep.address, ep.service)
            for line in sorted(lines - said):
                log.warning("%s", line)
            said = lines
            await self.sleep(interval)

    async def run(self) -> None:
        """Follow etcd, repair drift and check health until cancelled; a loop that fails takes
        the others down and its error up (for the daemon's supervisor)."""
        jobs = [self.follow(), self.repair_drift()]
        if self.health is not None:
            jobs.append(self.check_health())
        if self.lease is not None and self.spool_dir is not None:
            jobs.append(self.publish_spool())
        tasks = [asyncio.create_task(job) for job in jobs]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises the failure
            raise OverlayError("service proxy: a loop ended unexpectedly")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def cleanup(self) -> None:
        """Remove our nft table (``--cleanup-on-exit``), also one an earlier run left."""
        await asyncio.to_thread(self.kernel.remove)
        log.info("removed nft table %s %s", FAMILY, TABLE)
