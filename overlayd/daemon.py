"""The node daemon: config -> lease -> backend -> subnet.env -> ready -> renew and watch.

Startup waits (with backoff, one log line per new problem) for what an
operator may still be fixing: an unreachable etcd, a missing or invalid
network config. It stops with an error only for what will not fix itself:
bad flags, an interface that does not exist, a full network. Once ready it
runs three tasks until a signal or a failure: lease renewal, the peer watch
(feeding the backend), and the backend's data plane. A clean stop keeps the
lease (as flannel does) so a restart gets the same subnet straight back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable

from . import health, sdnotify, subnetenv
from .atomicfile import write_atomic
from .backend import create_backend
from .backend.base import Backend, NodeOptions, Underlay
from .backend.userspace import UserspaceBackend
from .errors import ConfigError, LeaseError, OverlayError, PlumbingError, StoreError, StoreRetryable, TaskDied
from .lease.connectivity import Backoff, Connectivity
from .lease.etcd import EtcdCredentials, EtcdStore
from .lease.audit import misfit
from .lease.manager import LeaseManager, follow_peers, thaw_grace
from .lease.model import Lease, config_key
from .netconf import NetworkConfig, parse_config
from .plumbing import guard, nft, sysctl
from .plumbing.netlink import Netlink
from .watchdog import Liveness, LoopHeartbeat, SystemdNotifier, watchdog_interval

log = logging.getLogger("overlayd")

BRIDGE = "cni0"
STATUS_INTERVAL = 2.0  # seconds between status-file refreshes (also written on every peer change)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclasses.dataclass(frozen=True)
class DaemonOptions:
    """Everything the daemon's flags decide."""

    etcd_endpoints: str
    etcd_prefix: str
    etcd_credentials: EtcdCredentials = EtcdCredentials()  # TLS files, etcd user
    iface: tuple[str, ...] = ()  # --iface, in order: names or IPs
    iface_regex: tuple[str, ...] = ()
    iface_can_reach: str | None = None
    public_ip: str | None = None
    subnet_file: str = "/run/flannel/subnet.env"
    status_file: str = "/run/overlayd/status.json"
    lease_ttl: int = 24 * 3600
    ip_masq: bool = False
    node: NodeOptions = NodeOptions()
    resync_interval: float = 10.0  # seconds between drift checks of the kernel state we own
    cleanup_on_exit: bool = False  # a clean stop revokes the lease and removes all we made
    healthz_addr: tuple[str, int] | None = None  # where to serve /healthz, /readyz, /metrics

    @property
    def sysctl_journal(self) -> str:
        """Where the host-wide sysctl values we changed are noted (next to the status file)."""
        return os.path.join(os.path.dirname(self.status_file), "sysctl-journal.json")


class _Reporter:
    """Logs a recurring problem once, and again only when it changes."""

    def __init__(self):
        self.last = None

    def __call__(self, message: str) -> None:
        if message != self.last:
            log.warning("%s", message)
            self.last = message


async def wait_for_config(store, prefix: str, sleep=asyncio.sleep) -> NetworkConfig:
    """Read and validate the network config, retrying until it is there and valid."""
    backoff, report = Backoff(cap=10.0), _Reporter()
    while True:
        try:
            raw = await store.get_config()
            if raw is None:
                report(f"no network config at {config_key(prefix)} yet; waiting "
                       "(write one with 'overlayctl config set FILE')")
            else:
                return parse_config(raw)
        except StoreRetryable as exc:
            report(f"{exc}; retrying")
        except ConfigError as exc:
            report(f"invalid network config at {config_key(prefix)}: {exc}; waiting for a fix")
        await sleep(backoff.next())


async def retry_unavailable(fn, what: str, sleep=asyncio.sleep):
    """``await fn()``, retrying with jittered backoff while etcd is unreachable or busy
    (:class:`StoreRetryable`)."""
    backoff, report = Backoff(), _Reporter()
    while True:
        try:
            return await fn()
        except StoreRetryable as exc:
            report(f"{what}: {exc}; retrying")
            await sleep(backoff.next())


async def prepare_node(nl: Netlink, config: NetworkConfig, lease: Lease, mtu: int,
                       ip_masq: bool, sysctl_journal: str | None = None) -> None:
    """What every backend needs: forwarding, the Network's guard route (no pod traffic leaves
    unencapsulated while overlayd is down, see :mod:`overlayd.plumbing.guard`), the cni0 bridge
    with .1 and loose rp_filter, and the firewall rules. The host's own rp_filter is left alone.

    Idempotent, and writes only what differs (``nl.changes`` says what), so drift repair runs it again.
    """
    sysctl.enable_forwarding(sysctl_journal)
    await guard.ensure(nl, config.network)
    gateway = ipaddress.IPv4Interface(f"{lease.subnet.network_address + 1}/{lease.subnet.prefixlen}")
    await nl.ensure_bridge(BRIDGE, mtu=mtu)
    sysctl.set_rp_filter(BRIDGE, 2)
    await nl.ensure_address(BRIDGE, gateway)
    repaired = await asyncio.to_thread(nft.ensure, config.network, lease.subnet, ip_masq)  # nft: a subprocess
    if repaired:
        nl.changes.append(repaired)


async def repair_drift(backend: Backend, lease: Lease, ip_masq: bool) -> list[str]:
    """Put back the kernel state this node owns where someone removed or changed it; what was repaired."""
    async with Netlink() as nl:
        await backend.reconcile(nl)
        await prepare_node(nl, backend.config, lease, backend.mtu, ip_masq)
        return nl.changes


async def supervise(jobs: dict[str, Awaitable[None]]) -> None:
    """Run the daemon's long-lived loops until one of them ends, which is fatal.

    Every loop is meant to run until the daemon stops: one that returns, is
    cancelled by something other than our own shutdown, or raises, takes the
    daemon down with a one-line error naming it, so systemd restarts the
    daemon instead of leaving a node whose renewals or watch died silently.
    """
    tasks = {asyncio.create_task(job, name=name): name for name, job in jobs.items()}
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        task = next(iter(done))
        name = tasks[task]
        if task.cancelled():
            raise TaskDied(f"{name} task was cancelled unexpectedly")
        exc = task.exception()
        if isinstance(exc, OverlayError):
            raise exc
        if exc is not None:
            raise TaskDied(f"{name} task failed: {type(exc).__name__}: {exc}") from exc
        raise TaskDied(f"{name} task ended unexpectedly")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Daemon:
    """One overlayd process on one node."""

    def __init__(self, options: DaemonOptions):
        self.options = options
        self.store = EtcdStore(options.etcd_endpoints, options.etcd_prefix,
                               credentials=options.etcd_credentials)
        self.connectivity = Connectivity(self.store.probe)
        self.backend: Backend | None = None
        self.lease: Lease | None = None
        self._status_problem = _Reporter()
        self.ready = False  # READY=1 sent: lease, devices, routes and subnet.env in place
        self.lease_lost = False  # our key seen gone or rebound, until the lease is ours again
        self.manager: LeaseManager | None = None
        self.watcher: health.CountingLeaseWatcher | None = None
        self.liveness = Liveness()  # heartbeats of the event loops (watchdog, /healthz)
        self.health: health.HealthServer | None = None
        self.peers_seen: dict[ipaddress.IPv4Network, tuple[Lease, float]] = {}  # lease, first seen
        self._peers_json: str | None = None  # the status file's peer fields, until peers change
        self._peers_routed: list[str] = []  # the backend's peer list they were built from

    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT (exit 0) or a fatal error (exit 1).

        A second SIGTERM/SIGINT while stopping exits at once with 128 + its
        number (143, 130), skipping the rest of the cleanup. SIGHUP is logged
        and ignored: there is no config file to reload and logs go to stderr.
        On the way out the status file (if this run wrote one) says
        ``stopped`` or ``failed``, so ``overlayctl status`` stops reporting
        the node as running.
        """
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._stop_requested, sig, stop)
        loop.add_signal_handler(signal.SIGHUP, log.info, "SIGHUP ignored: nothing to reload "
                                "(the network config lives in etcd, logs go to stderr)")
        main = asyncio.create_task(self._main())
        stopper = asyncio.create_task(stop.wait())
        error = None
        try:
            await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if main.done():
                main.result()  # raises the failure
                return 0
            sdnotify.notify("STOPPING=1")
            if self.options.cleanup_on_exit:
                main.cancel()
                await asyncio.gather(main, return_exceptions=True)
                await self.clean_up()
            return 0
        except OverlayError as exc:
            error = str(exc)
            log.error("%s", error)
            return 1
        except Exception as exc:  # a bug, not a user mistake: one line, the traceback with -v
            error = f"internal error: {type(exc).__name__}: {exc}"
            log.error("%s", error, exc_info=log.isEnabledFor(logging.DEBUG))
            return 1
        finally:
            for task in (main, stopper):
                task.cancel()
            await asyncio.gather(main, stopper, return_exceptions=True)
            if self.health is not None:
                await asyncio.to_thread(self.health.close)
            if self.lease is not None:  # this run has a status file: say it no longer runs
                self.write_status("failed" if error else "stopped", error)
            if self.backend is not None:
                await self.backend.close()
            await self.store.close()
            for sig in (*STOP_SIGNALS, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def _stop_requested(self, sig: signal.Signals, stop: asyncio.Event) -> None:
        """The first SIGTERM/SIGINT: stop cleanly; from now on the next one exits at once."""
        held = "no lease is held"
        if self.lease and self.options.cleanup_on_exit:
            held = f"--cleanup-on-exit: the lease on {self.lease.subnet} is revoked and this node's setup removed"
        elif self.lease:
            held = f"the lease on {self.lease.subnet} is kept for the next start"
        log.info("%s: stopping; %s (%s again exits at once)", sig.name, held, sig.name)
        stop.set()
        for each in STOP_SIGNALS:  # a plain handler: runs even while the loop is blocked in cleanup
            signal.signal(each, _exit_now)

    async def _main(self) -> None:
        opts = self.options
        self.liveness.watch("control loop", LoopHeartbeat().start(asyncio.get_running_loop()))
        if opts.healthz_addr is not None:  # before any lease: a port in use stops us here
            self.health = health.HealthServer(opts.healthz_addr, self)
        config = await wait_for_config(self.store, opts.etcd_prefix)
        log.info("network %s, /%d subnets, backend %s", config.network, config.subnet_len,
                 config.backend.type)
        async with Netlink() as nl:
            chosen = await nl.underlay(opts.iface, opts.public_ip, regexes=opts.iface_regex,
                                       can_reach=opts.iface_can_reach)
        underlay = Underlay(chosen.iface, chosen.public_ip, chosen.mtu, chosen.address)
        log.info("underlay %s (%s), public IP %s, MTU %d", underlay.iface, underlay.address, underlay.public_ip,
                 underlay.mtu)
        self.backend = backend = create_backend(config, underlay, opts.node)
        await backend.preflight()

        previous = subnetenv.read(opts.subnet_file)
        hint = previous.subnet if previous and previous.network == config.network else None
        self.manager = manager = LeaseManager(self.store, config, backend.lease_attrs(), ttl=opts.lease_ttl, hint=hint)
        self.lease = lease = await retry_unavailable(manager.acquire, "cannot lease a subnet")
        log.info("leased %s (TTL %ds)", lease.subnet, opts.lease_ttl)

        await backend.setup(lease)
        async with Netlink() as nl:
            await prepare_node(nl, config, lease, backend.mtu, opts.ip_masq, opts.sysctl_journal)
        try:
            subnetenv.write(opts.subnet_file, subnetenv.SubnetEnv(
                config.network, lease.subnet, backend.mtu, opts.ip_masq))
        except OSError as exc:
            raise ConfigError(f"--subnet-file: cannot write {opts.subnet_file}: {exc.strerror}") from None
        log.info("wrote %s; ready", opts.subnet_file)
        self.ready = True
        sdnotify.notify("READY=1")  # STATUS= follows from the notifier below

        self.watcher = watcher = health.CountingLeaseWatcher(own_subnet=lease.subnet, config=config,
                                                             own_ip=lease.public_ip)
        if isinstance(backend, UserspaceBackend):  # from now: its grace to start is the stall limit
            self.liveness.watch("data plane", backend.heartbeat)
        await supervise({
            "etcd probe": self.connectivity.run(),
            "lease renewal": manager.keep_renewed(lease, self.connectivity, self._renewed),
            "peer watch": follow_peers(self.store, watcher, self._peers_changed, self.connectivity,
                                       on_own=self._own_key_seen, grace=thaw_grace(opts.lease_ttl)),
            "data plane": backend.run(),
            "status file": self._status_loop(),
            "resync": self._resync_loop(),
            "systemd notifier": SystemdNotifier(self.liveness, lambda: health.status_line(self),
                                                watchdog_interval()).run(),
        })

    async def clean_up(self) -> None:
        """``--cleanup-on-exit``, after a clean stop: revoke the lease first (peers drop this node
        at once instead of routing to it until the TTL runs out), then remove the backend's
        device or routes, the guard route, cni0 (pods still attached lose their network: drain
        the node first), the nft table, the sysctl values we changed and subnet.env.

        Every step is tried; the first failure is raised afterwards.
        """
        failures: list[OverlayError] = []
        if self.lease is not None:
            try:
                if await self.store.revoke_lease(self.lease):
                    log.info("revoked the lease on %s", self.lease.subnet)
                else:
                    log.info("the reservation of %s is kept (remove it with 'overlayctl lease "
                             "delete')", self.lease.subnet)
            except StoreError as exc:
                failures.append(StoreError(f"cannot revoke the lease on {self.lease.subnet}: {exc}"))
        async with Netlink() as nl:
            steps = [nl.delete_link(BRIDGE), asyncio.to_thread(nft.remove),
                     asyncio.to_thread(sysctl.restore, self.options.sysctl_journal)]
            if self.backend is not None:
                steps = [self.backend.teardown(nl), guard.remove(nl, self.backend.config.network), *steps]
            for step in steps:
                try:
                    await step
                except OverlayError as exc:
                    failures.append(exc)
        try:
            os.unlink(self.options.subnet_file)
        except FileNotFoundError:
            pass
        except OSError as exc:
            failures.append(PlumbingError(f"cannot remove {self.options.subnet_file}: {exc.strerror}"))
        for exc in failures[1:]:
            log.error("%s", exc)
        if failures:
            raise failures[0]
        log.info("cleaned up: no device, route, nft table, sysctl change or subnet file of ours is left")

    def _renewed(self, lease: Lease) -> None:
        self.lease = lease
        self.lease_lost = False

    def _own_key_seen(self, seen: Lease | None) -> None:
        """The peer watch saw our key: gone or bound to another etcd lease means the lease is
        lost (``/readyz`` 503) until the manager has it back (:meth:`_renewed`)."""
        if seen is None or seen.handle != self.lease.handle:
            self.lease_lost = True
        self.manager.own_key_seen(seen)

    async def _stray_seen(self, stray: Lease) -> None:
        """A key for another subnet names our PublicIP: every peer routes that subnet here. Said
        once per key (the watcher reports each once); deleted when it hangs on our own etcd
        lease, which we renew, so it would live as long as we do. Anything else is the
        operator's to remove: it may be a reservation for a node that has not started yet."""
        own = self.lease
        if not stray.handle or stray.handle != own.handle:
            log.warning("lease key %s names this node (%s) but is not its lease (%s): every peer routes "
                        "%s here, where nothing answers; remove it ('overlayctl lease delete %s --yes')",
                        stray.subnet, stray.public_ip, own.subnet, stray.subnet, stray.subnet)
            return
        try:
            deleted = await self.store.delete_lease(stray.subnet, stray.revision)
        except (StoreError, LeaseError) as exc:
            outcome = f"cannot delete it: {exc}"
        else:
            outcome = "deleted it" if deleted else "it changed meanwhile: left alone"
        log.warning("lease key %s names this node (%s) but is not its lease (%s) and hangs on this "
                    "node's etcd lease: %s", stray.subnet, stray.public_ip, own.subnet, outcome)

    def write_status(self, state: str = "running", error: str | None = None) -> None:
        """Write the node's view (lease, reachable peers, :func:`peer_table`, counters) as JSON.

        ``state`` is ``running`` (refreshed every ``interval`` seconds: an
        older ``updated`` means the daemon died or hangs), ``stopped`` or
        ``failed`` (with ``error``), written once on the way out.
        """
        backend, lease = self.backend, self.lease
        # the peer fields are built again only when they change (at 1000 peers that costs ~10 ms,
        # and the file is rewritten every 2 s): after a peer change, or when the backend's own
        # list moves (a data plane on another thread applies changes a moment later)
        routed = backend.peer_subnets()
        if self._peers_json is None or routed != self._peers_routed:
            self._peers_routed = routed
            self._peers_json = json.dumps({"peers": routed, "peer_table": peer_table(self.peers_seen, routed)})
        status = {
            "state": state, "subnet": str(lease.subnet), "public_ip": str(lease.public_ip),
            "backend": backend.type_name, "device": getattr(backend, "device", None),
            "mtu": backend.mtu, "stats": backend.stats(),
            "updated": time.time(), "interval": STATUS_INTERVAL,
        }
        if error is not None:
            status["error"] = error
        # compact, and the cached peer fields spliced into the object (both are JSON objects)
        text = json.dumps(status)[:-1] + ", " + self._peers_json[1:] + "\n"
        try:
            write_atomic(self.options.status_file, text)
        except OSError as exc:
            self._status_problem(f"cannot write {self.options.status_file}: {exc.strerror}")
        else:
            self._status_problem.last = None

    async def _status_loop(self) -> None:
        while True:
            self.write_status()
            await asyncio.sleep(STATUS_INTERVAL)

    async def _resync_loop(self) -> None:
        """Drift repair every ``resync_interval`` (flannel rechecks every 10 s): one line per
        repair; a failed pass is logged (once per distinct error) and tried again next period."""
        problem = _Reporter()
        while True:
            await asyncio.sleep(self.options.resync_interval)
            try:
                for change in await repair_drift(self.backend, self.lease, self.options.ip_masq):
                    log.warning("repaired: %s", change)
            except Exception as exc:  # this task must outlive any one failed pass, bugs included
                problem(f"drift repair failed, retrying in {self.options.resync_interval:g}s: "
                        f"{exc if isinstance(exc, OverlayError) else f'{type(exc).__name__}: {exc}'}")
            else:
                problem.last = None

    async def _peers_changed(self, batch) -> None:
        for lease in batch.ignored:
            log.warning("ignoring lease %s on %s: %s", lease.subnet, lease.public_ip,
                        misfit(lease.subnet, self.backend.config))
        for lease in batch.strays:
            await self._stray_seen(lease)
        for lease in batch.held:
            log.info("peer %s on %s: its key expired with etcd's outage; its route stays until its "
                     "owner puts the key back (or for %.0fs)", lease.subnet, lease.public_ip,
                     thaw_grace(self.options.lease_ttl))
        for lease in batch.removed:
            log.info("peer gone: %s on %s", lease.subnet, lease.public_ip)
            self.peers_seen.pop(lease.subnet, None)
        for lease in batch.added:
            log.info("peer: %s on %s (%s)", lease.subnet, lease.public_ip, lease.attrs.backend_type)
            first = self.peers_seen.get(lease.subnet)
            since = first[1] if first and first[0].public_ip == lease.public_ip else time.time()
            self.peers_seen[lease.subnet] = (lease, since)
        await self.backend.apply(batch)
        self._peers_json = None  # after apply: a status write during it keeps the old, whole table
        self.write_status()


def peer_table(seen: dict[ipaddress.IPv4Network, tuple[Lease, float]], routed: list[str]) -> list[dict]:
    """The status file's ``peer_table`` (read by ``overlayctl peers``): for every peer lease,
    its subnet, node IP, backend, VTEP MAC (vxlan, else None), ``since`` (epoch seconds: when
    this daemon first saw that node on that subnet) and ``routed`` (the backend reaches it;
    host-gw skips peers off our segment)."""
    reached = set(routed)  # a list lookup per peer made this quadratic: 1M compares at 1000 peers
    return [{"subnet": str(subnet), "public_ip": str(lease.public_ip), "backend": lease.attrs.backend_type,
             "vtep_mac": (lease.attrs.backend_data or {}).get("VtepMAC"), "since": since,
             "routed": str(subnet) in reached}
            for subnet, (lease, since) in sorted(seen.items())]


def _exit_now(signum: int, _frame) -> None:
    """A second SIGTERM/SIGINT while stopping: exit at once with 128 + the signal's number."""
    log.warning("%s again while stopping: exiting now (status %d)", signal.Signals(signum).name, 128 + signum)
    os._exit(128 + signum)


def run(options: DaemonOptions) -> int:
    """Run the daemon on a fresh asyncio loop; returns the exit status.

    The control plane (etcd, netlink) always runs on the standard loop; with
    ``--event-loop uvloop`` only the data plane moves to a uvloop thread
    (see :mod:`overlayd.backend.userspace`).
    """
    return asyncio.run(Daemon(options).serve())
