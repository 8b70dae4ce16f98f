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
import math
import os
import signal
import time
from collections.abc import Awaitable, Callable

from . import __version__, health, privileges, sdnotify, subnetenv
from .atomicfile import write_atomic
from .backend import create_backend, registry
from .backend.base import Backend, NodeOptions, Underlay, delete_peer_routes
from .backend.userspace import UserspaceBackend
from .errors import (ConfigError, LeaseError, OverlayError, PlumbingError, StoreError, StoreRetryable,
                     StoreUnavailable, TaskDied)
from .lease.connectivity import Backoff, Connectivity
from .lease.etcd import EtcdCredentials, EtcdStore
from .lease.audit import misfit
from .lease.manager import LeaseManager, follow_peers, thaw_grace
from .lease.model import Lease, config_key
from .netconf import NetworkConfig, parse_config
from .plumbing import guard, nft, sysctl
from .plumbing.iface import families
from .plumbing.kernelwatch import KernelWatch
from .plumbing.netlink import Netlink
from .service.etcd import ServiceStore
from .service.proxy import ServiceProxy
from .service.render import NodeView
from .watchdog import Liveness, LoopHeartbeat, SystemdNotifier, watchdog_interval

log = logging.getLogger("overlayd")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

BRIDGE = "cni0"
STATUS_INTERVAL = 2.0  # seconds between status-file refreshes (also written on every peer change)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

# The status file's "phase": what the daemon is doing (state "starting" until it is set up, then "running")
STARTING = "starting"  # checking flags and privileges
WAITING_FOR_ETCD = "waiting for etcd"
WAITING_FOR_CONFIG = "waiting for config"
LEASING = "acquiring a lease"
SETTING_UP = "setting up"  # devices, routes, subnet.env
RUNNING = "running"


def _no_phase(phase: str, detail: str | None) -> None:
    """The default ``on_wait`` of the startup waits: nobody to tell."""


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
    public_ip6: str | None = None  # --public-ipv6
    subnet_file: str = "/run/flannel/subnet.env"
    status_file: str = "/run/overlayd/status.json"
    lease_ttl: int = 24 * 3600
    ip_masq: bool = False
    node: NodeOptions = NodeOptions()
    resync_interval: float = 10.0  # seconds between drift checks of the kernel state we own (on a change)
    full_resync_interval: float = 60.0  # the longest time without a drift check, change or not
    cleanup_on_exit: bool = False  # a clean stop revokes the lease and removes all we made
    healthz_addr: tuple[str, int] | None = None  # where to serve /healthz, /readyz, /metrics

    @property
    def full_resync_periods(self) -> int:
        """``full_resync_interval`` in resync periods (at least one)."""
        return max(1, math.ceil(self.full_resync_interval / self.resync_interval - 1e-9))

    @property
    def endpoints_dir(self) -> str:
        """The CNI plugin's endpoint spool, its endpointsDir (next to the status file)."""
        return os.path.join(os.path.dirname(self.status_file), "endpoints")

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


class _StartupWait:
    """What the startup waits share: one log line per new problem, and an unreachable etcd
    reported through ``connectivity`` (once per outage, "etcd back" when it answers)."""

    def __init__(self, connectivity: Connectivity | None, on_wait: Callable[[str, str | None], None]):
        self.report, self.connectivity, self.on_wait = _Reporter(), connectivity, on_wait

    def etcd_failed(self, exc: StoreRetryable, what: str = "") -> None:
        self.on_wait(WAITING_FOR_ETCD, f"{what}{exc}")
        if isinstance(exc, StoreUnavailable) and self.connectivity is not None:
            self.connectivity.failed(exc)
            self.report.last = None
        else:
            self.report(f"{what}{exc}; retrying")

    def etcd_answered(self) -> None:
        if self.connectivity is not None:
            self.connectivity.answered()


async def wait_for_config(store, prefix: str, sleep=asyncio.sleep, connectivity: Connectivity | None = None,
                          on_wait: Callable[[str, str | None], None] = _no_phase) -> NetworkConfig:
    """Read and validate the network config, retrying until it is there and valid.

    ``on_wait(phase, detail)`` hears what it waits for (:data:`WAITING_FOR_ETCD` or
    :data:`WAITING_FOR_CONFIG`, and why), for the status file.
    """
    backoff, wait = Backoff(cap=10.0), _StartupWait(connectivity, on_wait)
    while True:
        try:
            raw = await store.get_config()
            wait.etcd_answered()
            if raw is None:
                problem = (f"no network config at {config_key(prefix)} yet; waiting "
                           "(write one with 'overlayctl config set FILE')")
            else:
                return parse_config(raw)
        except StoreRetryable as exc:
            wait.etcd_failed(exc)
            problem = None
        except ConfigError as exc:
            problem = f"invalid network config at {config_key(prefix)}: {exc}; waiting for a fix"
        if problem:
            on_wait(WAITING_FOR_CONFIG, problem)
            wait.report(problem)
        await sleep(backoff.next())


async def retry_unavailable(fn, what: str, sleep=asyncio.sleep, connectivity: Connectivity | None = None,
                            on_wait: Callable[[str, str | None], None] = _no_phase):
    """``await fn()``, retrying with jittered backoff while etcd is unreachable or busy
    (:class:`StoreRetryable`); ``connectivity`` and ``on_wait`` as for :func:`wait_for_config`."""
    backoff, wait = Backoff(), _StartupWait(connectivity, on_wait)
    while True:
        try:
            result = await fn()
        except StoreRetryable as exc:
            wait.etcd_failed(exc, f"{what}: ")
            await sleep(backoff.next())
        else:
            wait.etcd_answered()
            return result


def pod_networks(config: NetworkConfig, lease: Lease) -> list[tuple[Network, Network]]:
    """``(Network, leased subnet)`` for each family this node has pods of: IPv4 (unless the network
    is IPv6-only), then IPv6 (with EnableIPv6)."""
    pairs: list[tuple[Network, Network]] = []
    if config.ipv4 is not None and lease.subnet.version == 4:
        pairs.append((config.ipv4.network, lease.subnet))
    if config.ipv6 is not None and lease.subnet6 is not None:
        pairs.append((config.ipv6.network, lease.subnet6))
    return pairs


async def prepare_node(nl: Netlink, config: NetworkConfig, lease: Lease, mtu: int,
                       ip_masq: bool, sysctl_journal: str | None = None, underlay: str | None = None) -> None:
    """What every backend needs, for each family of the node's pods: forwarding (IPv6's keeps
    ``underlay``'s router advertisements), the Network's guard route (no pod traffic leaves
    unencapsulated while overlayd is down, see :mod:`overlayd.plumbing.guard`), the cni0 bridge
    with the subnet's first address and loose rp_filter, and the firewall rules; the firewall table
    of a family the node no longer has (IPv6 turned off) goes. The host's own rp_filter is left alone.

    Idempotent, and writes only what differs (``nl.changes`` says what), so drift repair runs it again.
    """
    pairs = pod_networks(config, lease)
    versions = [network.version for network, _ in pairs]
    sysctl.enable_forwarding(sysctl_journal, families=versions, underlay=underlay)
    for network, _ in pairs:
        await guard.ensure(nl, network)
    await nl.ensure_bridge(BRIDGE, mtu=mtu)
    sysctl.set_rp_filter(BRIDGE, 2)
    for network, subnet in pairs:
        await nl.ensure_address(BRIDGE, ipaddress.ip_interface(f"{subnet[1]}/{subnet.prefixlen}"))
    for version in (4, 6):  # nft: a subprocess
        pair = next((pair for pair in pairs if pair[0].version == version), None)
        repaired = await asyncio.to_thread(nft.ensure, *pair, ip_masq) if pair else \
            await asyncio.to_thread(nft.ensure_absent, version)
        if repaired:
            nl.changes.append(repaired)


async def remove_leftover_devices(backend_type: str) -> None:
    """Delete the devices another backend left that outlive a daemon (the network's backend was
    switched): one line each. Before the preflight: a kernel VXLAN device holds the UDP port."""
    async with Netlink() as nl:
        for name, owner in registry.leftovers(await nl.link_names(), backend_type):
            await nl.delete_link(name)
            log.info("removed %s, a device of the %s backend (the network's backend is now %s)",
                     name, owner, backend_type)


async def repair_drift(backend: Backend, lease: Lease, ip_masq: bool) -> list[str]:
    """Put back the kernel state this node owns where someone removed or changed it; what was repaired."""
    async with Netlink() as nl:
        await backend.reconcile(nl)
        await prepare_node(nl, backend.config, lease, backend.mtu, ip_masq, underlay=backend.underlay.iface)
        return nl.changes


async def supervise(jobs: dict[str, Awaitable[None] | asyncio.Task]) -> None:
    """Run the daemon's long-lived loops (coroutines, or tasks already started) until one of
    them ends, which is fatal.

    Every loop is meant to run until the daemon stops: one that returns, is
    cancelled by something other than our own shutdown, or raises, takes the
    daemon down with a one-line error naming it, so systemd restarts the
    daemon instead of leaving a node whose renewals or watch died silently.
    """
    tasks = {job if isinstance(job, asyncio.Task) else asyncio.create_task(job, name=name): name
             for name, job in jobs.items()}
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
        self.notifier: SystemdNotifier | None = None  # STATUS= and WATCHDOG=1, once ready
        self.services: ServiceProxy | None = None  # issue 22: ClusterIPs/NodePorts in the kernel
        self.lease: Lease | None = None
        self._status_problem = _Reporter()
        self.ready = False  # READY=1 sent: lease, devices, routes and subnet.env in place
        self.lease_lost = False  # our key seen gone or rebound, until the lease is ours again
        self.manager: LeaseManager | None = None
        self.watcher: health.CountingLeaseWatcher | None = None
        self.liveness = Liveness()  # heartbeats of the event loops (watchdog, /healthz)
        # drift repair checks when the kernel reports a change
        self.kernel_watch = KernelWatch(full_every=options.full_resync_periods)
        self.health: health.HealthServer | None = None
        self.peers_seen: dict[ipaddress.IPv4Network, tuple[Lease, float]] = {}  # lease, first seen
        self._peers_json: str | None = None  # the status file's peer fields (the object's tail), until peers change
        self._peers_routed: list[str] = []  # the backend's peer list they were built from
        self.started = time.time()
        self.phase, self.phase_detail, self.phase_since = STARTING, None, self.started
        self.stop_reason: str | None = None  # the signal that stopped us

    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT (exit 0) or a fatal error (exit 1).

        A second SIGTERM/SIGINT while stopping exits at once with 128 + its
        number (143, 130), skipping the rest of the cleanup. SIGHUP is logged
        and ignored: there is no config file to reload and logs go to stderr.
        On the way out the status file says ``stopped`` or ``failed``, so
        ``overlayctl status`` stops reporting the node as running, and the
        last log line says ``stopped`` with the reason.
        """
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._stop_requested, sig, stop)
        loop.add_signal_handler(signal.SIGHUP, log.info, "SIGHUP ignored: nothing to reload "
                                "(the network config lives in etcd, logs go to stderr)")
        main = asyncio.create_task(self._main())
        stopper = asyncio.create_task(stop.wait())
        error, code = None, 1
        try:
            await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if main.done():
                main.result()  # raises the failure
                code = 0
                return 0
            sdnotify.notify("STOPPING=1")
            if self.options.cleanup_on_exit:
                main.cancel()
                await asyncio.gather(main, return_exceptions=True)
                await self.clean_up()
            code = 0
            return 0
        except OverlayError as exc:
            error = str(exc)
            log.error("%s", error)
            return 1
        except Exception as exc:  # a bug, not a user mistake: one line, the traceback with --log-level debug
            error = f"internal error: {type(exc).__name__}: {exc}"
            log.error("%s", error, exc_info=log.isEnabledFor(logging.DEBUG))
            return 1
        finally:
            for task in (main, stopper):
                task.cancel()
            await asyncio.gather(main, stopper, return_exceptions=True)
            if self.health is not None:
                await asyncio.to_thread(self.health.close)
            self.write_status("failed" if error else "stopped", error)
            if self.backend is not None:
                await self.backend.close()
            await self.store.close()
            for sig in (*STOP_SIGNALS, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            log.info("stopped (%s), exit status %d", stop_reason(self.stop_reason, error, self.phase), code)

    def _stop_requested(self, sig: signal.Signals, stop: asyncio.Event) -> None:
        """The first SIGTERM/SIGINT: stop cleanly; from now on the next one exits at once."""
        held = "no lease is held"
        if self.lease and self.options.cleanup_on_exit:
            held = f"--cleanup-on-exit: the lease on {self.lease.subnet} is revoked and this node's setup removed"
        elif self.lease:
            held = f"the lease on {self.lease.subnet} is kept for the next start"
        log.info("%s: stopping; %s (%s again exits at once)", sig.name, held, sig.name)
        self.stop_reason = sig.name
        stop.set()
        for each in STOP_SIGNALS:  # a plain handler: runs even while the loop is blocked in cleanup
            signal.signal(each, _exit_now)

    def set_phase(self, phase: str, detail: str | None = None) -> None:
        """Say what the daemon is doing now (and why, while it waits): the status file's
        ``phase`` and ``detail``, written at once."""
        if (phase, detail) == (self.phase, self.phase_detail):
            return
        if phase != self.phase:
            self.phase_since = time.time()
        self.phase, self.phase_detail = phase, detail
        log.debug("phase: %s%s", phase, f" ({detail})" if detail else "")
        self.write_status()

    async def _main(self) -> None:
        status = asyncio.create_task(self._status_loop(), name="status file")  # from the first second
        try:
            await self._start_and_run(status)
        finally:
            status.cancel()
            await asyncio.gather(status, return_exceptions=True)

    async def _start_and_run(self, status: asyncio.Task) -> None:
        opts = self.options
        self.liveness.watch("control loop", LoopHeartbeat().start(asyncio.get_running_loop()))
        privileges.check_start(opts.subnet_file)  # before etcd: an unprivileged start writes nothing there
        if opts.healthz_addr is not None:  # before any lease: a port in use stops us here
            self.health = health.HealthServer(opts.healthz_addr, self)
        self.set_phase(WAITING_FOR_ETCD, f"reading the network config from {opts.etcd_endpoints}")
        config = await wait_for_config(self.store, opts.etcd_prefix, connectivity=self.connectivity,
                                       on_wait=self.set_phase)
        log.info("network %s, backend %s", describe_pools(config), config.backend.type)
        async with Netlink() as nl:
            chosen = await nl.underlay(opts.iface, opts.public_ip, regexes=opts.iface_regex,
                                       can_reach=opts.iface_can_reach, public_ip6=opts.public_ip6,
                                       families=families(config))
        underlay = Underlay.from_choice(chosen)
        log.info("underlay %s (%s), public IP %s, MTU %d", underlay.iface,
                 ", ".join(str(a) for a in (underlay.address, underlay.address6) if a is not None),
                 ", ".join(str(a) for a in (underlay.public_ip, underlay.public_ip6) if a is not None), underlay.mtu)
        self.backend = backend = create_backend(config, underlay, opts.node)
        if isinstance(backend, UserspaceBackend):
            privileges.check_tun()
        await remove_leftover_devices(config.backend.type)
        await backend.preflight()

        previous = subnetenv.read(opts.subnet_file)
        hint = hint6 = None
        if previous is not None:  # the subnets of the families whose Network has not changed
            hint = previous.subnet if config.ipv4 and previous.network == config.ipv4.network else None
            hint6 = previous.subnet6 if config.ipv6 and previous.network6 == config.ipv6.network else None
        self.manager = manager = LeaseManager(self.store, config, backend.lease_attrs(), ttl=opts.lease_ttl,
                                              hint=hint, hint6=hint6)
        self.set_phase(LEASING)
        self.lease = lease = await retry_unavailable(manager.acquire, "cannot lease a subnet",
                                                     connectivity=self.connectivity, on_wait=self.set_phase)
        log.info("leased %s (TTL %ds)", " and ".join(str(s) for _, s in pod_networks(config, lease)), opts.lease_ttl)

        self.set_phase(SETTING_UP)
        async with Netlink() as nl:  # what an earlier run left, or an earlier config (another backend, a Network)
            await delete_peer_routes(nl, config, lease)
            await guard.retire_others(nl, [network for network, _ in pod_networks(config, lease)], BRIDGE)
        await backend.setup(lease)
        async with Netlink() as nl:
            await prepare_node(nl, config, lease, backend.mtu, opts.ip_masq, opts.sysctl_journal, underlay.iface)
        subnets = dict((network.version, (network, subnet)) for network, subnet in pod_networks(config, lease))
        network, subnet = subnets.get(4, (None, None))
        network6, subnet6 = subnets.get(6, (None, None))
        try:
            subnetenv.write(opts.subnet_file, subnetenv.SubnetEnv(network, subnet, backend.mtu, opts.ip_masq,
                                                                  network6, subnet6))
        except OSError as exc:
            raise ConfigError(f"--subnet-file: cannot write {opts.subnet_file}: {exc.strerror}") from None
        log.info("wrote %s; ready", opts.subnet_file)
        self.ready = True
        self.set_phase(RUNNING)
        sdnotify.notify("READY=1")  # STATUS= follows from the notifier below

        self.notifier = SystemdNotifier(self.liveness, lambda: health.status_line(self), watchdog_interval())
        self.watcher = watcher = health.CountingLeaseWatcher(own_subnet=lease.subnet, config=config,
                                                             own_ip=lease.public_ip)
        if isinstance(backend, UserspaceBackend):  # from now: its grace to start is the stall limit
            self.liveness.watch("data plane", backend.heartbeat)
        jobs = {
            "etcd probe": self.connectivity.run(),
            "lease renewal": manager.keep_renewed(lease, self.connectivity, self._renewed),
            "peer watch": follow_peers(self.store, watcher, self._peers_changed, self.connectivity,
                                       on_own=self._own_key_seen, grace=thaw_grace(opts.lease_ttl)),
            "data plane": backend.run(),
            "status file": status,
            "resync": self._resync_loop(),
            "systemd notifier": self.notifier.run(),
        }
        if config.ipv4 is not None:  # services are IPv4 (issue 22); a watch channel of their own in our store
            self.services = ServiceProxy(
                ServiceStore(self.store),
                NodeView(config.network, lease.subnet, tuple(a for a in (underlay.public_ip,) if a is not None)),
                self.connectivity, resync_interval=opts.resync_interval, lease=lambda: self.lease,
                spool_dir=opts.endpoints_dir, watch=KernelWatch(route=False, full_every=opts.full_resync_periods))
            jobs["services"] = self.services.run()
        await supervise(jobs)

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
            if self.services is not None:
                steps.append(self.services.cleanup())
            if self.backend is not None:
                pools = [pool for pool in (self.backend.config.ipv4, self.backend.config.ipv6) if pool is not None]
                steps = [self.backend.teardown(nl), *(guard.remove(nl, pool.network) for pool in pools), *steps]
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
                        stray.subnet, node_address(stray), own.subnet, stray.subnet, stray.subnet)
            return
        try:
            deleted = await self.store.delete_lease(stray.subnet, stray.revision)
        except (StoreError, LeaseError) as exc:
            outcome = f"cannot delete it: {exc}"
        else:
            outcome = "deleted it" if deleted else "it changed meanwhile: left alone"
        log.warning("lease key %s names this node (%s) but is not its lease (%s) and hangs on this "
                    "node's etcd lease: %s", stray.subnet, node_address(stray), own.subnet, outcome)

    def write_status(self, state: str | None = None, error: str | None = None) -> None:
        """Write the node's view (phase, lease, reachable peers, :func:`peer_table`, counters) as JSON.

        ``state`` is ``starting`` until the node is set up, then ``running``
        (both refreshed every ``interval`` seconds: an older ``updated`` means
        the daemon died or hangs), or ``stopped`` / ``failed`` (with
        ``error``), written once on the way out. ``phase`` says what it does
        (or did last): see :meth:`set_phase`. The lease and backend fields
        appear once a lease is held.
        """
        backend, lease = self.backend, self.lease
        status = {
            "state": state or ("running" if self.ready else "starting"),
            "phase": self.phase, "since": self.phase_since, "started": self.started,
            "pid": os.getpid(), "version": __version__,
        }
        if self.phase_detail is not None:
            status["detail"] = self.phase_detail
        peers_json = ', "peers": [], "peer_table": []}\n'
        if lease is not None and backend is not None:
            # the peer fields are built again only when they change (at 1000 peers that costs ~10 ms,
            # and the file is rewritten every 2 s): after a peer change, or when the backend's own
            # list moves (a data plane on another thread applies changes a moment later)
            routed = backend.peer_subnets()
            if self._peers_json is None or routed != self._peers_routed:
                self._peers_routed = routed
                # kept as the tail spliced after the other fields: at 5000 peers it is 1 MB, and
                # building the file from it anew every 2 s was 15% of an idle daemon's CPU
                self._peers_json = ", " + json.dumps({"peers": routed,
                                                      "peer_table": peer_table(self.peers_seen, routed)})[1:] + "\n"
            status.update({
                "subnet": str(lease.subnet), "subnet6": _text(lease.subnet6),
                "public_ip": _text(lease.public_ip), "public_ipv6": _text(lease.attrs.public_ip6),
                "backend": backend.type_name, "device": getattr(backend, "device", None),
                "mtu": backend.mtu, "stats": backend.stats(), "peer_stats": backend.peer_stats(),
            })
            peers_json = self._peers_json
        status["drift_checks"] = dict(self.kernel_watch.checks)  # drift-repair passes, by why they ran
        if self.services is not None:  # services, endpoints (ready), nft applies and repairs
            status["services"] = self.services.stats()
        status.update({"updated": time.time(), "interval": STATUS_INTERVAL})
        if error is not None:
            status["error"] = error
        # compact, and the cached peer fields spliced into the object (one copy of them)
        text = json.dumps(status)[:-1] + peers_json
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
        """Drift repair at the end of a ``resync_interval`` (flannel rechecks every 10 s) in which
        the kernel reported a change (:mod:`overlayd.plumbing.kernelwatch`), and every
        ``full_resync_interval`` in any case: one line per repair; a failed pass is logged (once per
        distinct error) and tried again next period."""
        problem = _Reporter()
        with self.kernel_watch as watch:
            while True:
                await asyncio.sleep(self.options.resync_interval)
                if not watch.due():
                    continue
                try:
                    for change in await repair_drift(self.backend, self.lease, self.options.ip_masq):
                        log.warning("repaired: %s", change)
                except Exception as exc:  # this task must outlive any one failed pass, bugs included
                    watch.changed = True  # retried next period, change or not
                    problem(f"drift repair failed, retrying in {self.options.resync_interval:g}s: "
                            f"{exc if isinstance(exc, OverlayError) else f'{type(exc).__name__}: {exc}'}")
                else:
                    problem.last = None

    async def _peers_changed(self, batch) -> None:
        for lease in batch.ignored:
            log.warning("ignoring lease %s on %s: %s", lease.subnet, node_address(lease),
                        misfit(lease.subnet, self.backend.config))
        for lease in batch.strays:
            await self._stray_seen(lease)
        for lease in batch.held:
            log.info("peer %s on %s: its key expired with etcd's outage; its route stays until its "
                     "owner puts the key back (or for %.0fs)", lease.subnet, node_address(lease),
                     thaw_grace(self.options.lease_ttl))
        for lease in batch.removed:
            log.info("peer gone: %s on %s", lease.subnet, node_address(lease))
            self.peers_seen.pop(lease.subnet, None)
        for lease in batch.added:
            log.info("peer: %s on %s (%s)", lease.subnet, node_address(lease), lease.attrs.backend_type)
            first = self.peers_seen.get(lease.subnet)
            since = first[1] if first and node_address(first[0]) == node_address(lease) else time.time()
            self.peers_seen[lease.subnet] = (lease, since)
        await self.backend.apply(batch)
        self._peers_json = None  # after apply: a status write during it keeps the old, whole table
        self.write_status()
        if self.notifier is not None:  # systemd's STATUS= line counts the peers now, not a round later
            self.notifier.status_changed()


def peer_table(seen: dict[ipaddress.IPv4Network, tuple[Lease, float]], routed: list[str]) -> list[dict]:
    """The status file's ``peer_table`` (read by ``overlayctl peers``): for every peer lease,
    its subnet, node IP, backend, VTEP MAC (vxlan, else None), ``since`` (epoch seconds: when
    this daemon first saw that node on that subnet) and ``routed`` (the backend reaches it in
    either family; host-gw skips peers off our segment)."""
    reached = set(routed)  # a list lookup per peer made this quadratic: 1M compares at 1000 peers
    return [{"subnet": str(subnet), "subnet6": _text(lease.subnet6), "public_ip": _text(lease.public_ip),
             "public_ipv6": _text(lease.attrs.public_ip6), "backend": lease.attrs.backend_type,
             "vtep_mac": (lease.attrs.backend_data or {}).get("VtepMAC"), "since": since,
             "routed": str(subnet) in reached or (lease.subnet6 is not None and str(lease.subnet6) in reached)}
            for subnet, (lease, since) in sorted(seen.items())]


def node_address(lease: Lease) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a lease's node is known by in the log: its PublicIP, or PublicIPv6 on an IPv6-only node."""
    return lease.public_ip or lease.attrs.public_ip6


def _text(value) -> str | None:
    """``str(value)``, None for None (the status file's JSON null)."""
    return None if value is None else str(value)


def describe_pools(config: NetworkConfig) -> str:
    """The config's pools for the log, e.g. ``10.244.0.0/16 (/24 subnets) and fd00:10:244::/56 (/64 subnets)``."""
    return " and ".join(f"{pool.network} (/{pool.subnet_len} subnets)"
                        for pool in (config.ipv4, config.ipv6) if pool is not None)


def stop_reason(signal_name: str | None, error: str | None, phase: str) -> str:
    """The reason in the daemon's last log line, ``stopped (REASON), exit status N``. Pure."""
    if error is not None:
        return f"fatal error while {phase}: {error}" if phase != RUNNING else f"fatal error: {error}"
    return signal_name or "its tasks ended"


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
