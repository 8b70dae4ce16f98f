"""``--healthz-addr``: ``/healthz``, ``/readyz`` and ``/metrics`` (Prometheus text format).

Design note. The endpoints are served by a small WSGI server on threads of
its own (:class:`BoundedWSGIServer`), not on the daemon's asyncio loop, for
two reasons: a scrape never delays the control loop, and when that loop is
wedged the server still answers, so ``/healthz`` says 503 ``control loop
stalled for 12s`` (from the heartbeats of :mod:`overlayd.watchdog`) instead
of hanging with it. ``/metrics`` is prometheus-client's own WSGI app over a
registry holding :class:`DaemonCollector`, which reads the daemon's live
state at scrape time (no copies kept, no background task). Those reads happen
on the server's threads: they are reads of ints, ``dict`` copies and table
lengths, which the GIL makes atomic; the daemon never waits for a scrape.

Data-plane counters are read generically (``Backend.stats()``) and named by
the registry in :mod:`overlayd.encap.drops`: ``<key>_packets`` and
``<key>_bytes`` of its ``TRAFFIC`` become
``overlayd_datapath_packets_total``/``_bytes_total`` with the ``side``
(underlay or device) and the ``direction`` (rx or tx) as two labels, so a
``sum by`` never adds the device's packets to the peers'; ``drop_<reason>``
(and ``tx_dropped``, a full send buffer) ``overlayd_dropped_packets_total
{reason}``; failed calls ``overlayd_datapath_errors_total``; the others
``overlayd_datapath_events_total``. For a userspace backend every name of the
registry is exported from the start at 0 (a series born with its first drop
hides that burst from ``increase()``); a name the registry does not know yet
is still exported, by its prefix. Peer counts (``peers``, ``direct_peers``,
``skipped_peers``) are gauges of their own. A kernel VXLAN node exports its
device's own counters instead (``overlayd_kernel_device_*``, read from sysfs
at scrape time). A backend with per-peer sessions (wireguard, ``Backend.peer_stats()``)
exports each peer's last handshake age and bytes (``overlayd_peer_*``, labelled
by device, peer subnet and public key). Label values are snake_case (no spaces). The reference, with
example alerts and the renames of issue 21, is docs/metrics.md; a test holds
it to what is exported here.

Bounds. A thread per connection (prometheus-client's ``ThreadingWSGIServer``,
used before) let 1,000 half-open connections make 1,012 threads. Now one
thread accepts connections and watches them in a selector until their
request arrives; only then does one of :data:`WORKERS` threads serve it, with
:data:`READ_TIMEOUT` on every read and write. At most
:data:`MAX_IDLE_CONNECTIONS` wait for their request (a new one closes the
oldest, and none waits past :data:`IDLE_TIMEOUT`) and :data:`MAX_QUEUED_REQUESTS`
wait for a worker (more are closed unanswered). So a flood of idle
connections costs no thread and a bounded number of descriptors, and a probe
that sends its request at once is answered at once behind it.
"""

from __future__ import annotations

import ipaddress
import math
import queue
import selectors
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from . import __version__
from .backend.base import Backend
from .backend.userspace import UserspaceBackend
from .dataplane import fast
from .encap import drops
from .errors import ConfigError
from .hostport import host_port
from .lease.connectivity import Connectivity
from .lease.model import Lease
from .lease.watcher import LeaseWatcher
from .plumbing.kernelwatch import KernelWatch
from .watchdog import Liveness

# Backend stats that are table sizes, not counters: the overlayd_*peers gauges (PEER_GAUGES) cover them.
TABLE_SIZES = frozenset({"peers", "routes"})
#: backend stats that are peer counts -> (gauge, what it counts)
PEER_GAUGES = {
    "direct_peers": ("overlayd_direct_peers", "Peers reached by a direct route on the underlay, not encapsulated "
                     "(Backend.DirectRouting); counted in overlayd_peers too"),
    "skipped_peers": ("overlayd_skipped_peers", "Peer leases this node cannot use (another backend, or not on "
                      "this L2 segment for host-gw) and so does not route to"),
}
#: the kernel device's sysfs statistics exported for a kernel VXLAN node: kind -> (family, help)
DEVICE_FAMILIES = {
    "packets": ("overlayd_kernel_device_packets", "Packets the kernel's overlay device counted (ip -s link): "
                "tx encapsulated and sent to peers, rx received from peers and decapsulated"),
    "bytes": ("overlayd_kernel_device_bytes", "Bytes the kernel's overlay device counted (as "
              "overlayd_kernel_device_packets_total)"),
    "dropped": ("overlayd_kernel_device_dropped_packets", "Packets the kernel's overlay device dropped"),
    "errors": ("overlayd_kernel_device_errors", "Transmit or receive errors of the kernel's overlay device"),
}

# The health server's bounds (see "Bounds" in the module note). Its clients are probes and
# scrapers that send their request as soon as they connect and take milliseconds to serve.
WORKERS = 4  # threads serving requests
MAX_IDLE_CONNECTIONS = 64  # connections waiting for their request; a new one closes the oldest
MAX_QUEUED_REQUESTS = 16  # requests waiting for a worker; more are closed unanswered
IDLE_TIMEOUT = 10.0  # seconds a connection may stay silent before it is closed
READ_TIMEOUT = 2.0  # seconds a worker waits on one read or write of a request


class DaemonState(Protocol):
    """What the endpoints read from the daemon (:class:`overlayd.daemon.Daemon` has it)."""

    ready: bool  # lease, devices, routes and subnet.env in place (READY=1 sent)
    lease: Lease | None
    lease_lost: bool  # the peer watch saw our key gone or rebound; cleared once the lease is ours again
    backend: Backend | None
    peers_seen: Mapping[object, tuple[Lease, float]]  # every peer lease, by its subnet: (lease, first seen)
    connectivity: Connectivity
    watcher: "CountingLeaseWatcher | None"
    liveness: Liveness
    kernel_watch: KernelWatch  # drift repair's change notices and its passes by reason


class CountingLeaseWatcher(LeaseWatcher):
    """A :class:`LeaseWatcher` that counts the full listings it is fed: each one after the
    first follows a broken watch (etcd restart, compaction, outage)."""

    listings = 0

    def reset(self, snapshot, revision, thaw=None):
        """As :meth:`LeaseWatcher.reset`, counted."""
        self.listings += 1
        return super().reset(snapshot, revision, thaw)

    @property
    def resets(self) -> int:
        """How many times the peer watch was re-established from a fresh listing."""
        return max(0, self.listings - 1)


def parse_addr(spec: str) -> tuple[str, int]:
    """``127.0.0.1:10256`` -> ``("127.0.0.1", 10256)``, ``[::1]:10256`` -> ``("::1", 10256)`` (an
    IPv6 address in brackets, as in URLs); :class:`ConfigError` otherwise."""
    host, _, port = spec.rpartition(":")
    try:
        if host.startswith("[") and host.endswith("]"):
            host = str(ipaddress.IPv6Address(host[1:-1]))
        else:
            ipaddress.IPv4Address(host)
        number = int(port)
    except ValueError:
        number = 0
    if not 0 < number < 65536:
        raise ConfigError(f"{spec!r} is not IPv4:PORT or [IPv6]:PORT (e.g. 127.0.0.1:10256, [::1]:10256)")
    return host, number


def readiness(state: DaemonState, now: float | None = None) -> str | None:
    """Why the node is not ready, as one line; None when it is (``now``: wall-clock time)."""
    lease = state.lease
    if lease is None:
        return "no lease yet"
    if state.lease_lost:
        return f"lease on {lease.subnet} lost; re-acquiring it"
    if lease.time_left(time.time() if now is None else now) == 0:
        return f"lease on {lease.subnet} expired; renewing it"
    if not state.ready:
        return f"leased {lease.subnet}; setting up devices, routes and subnet.env"
    return None


def reachable_peers(seen: Mapping[object, tuple[Lease, float]], routed: list[str]) -> int:
    """How many peer nodes the backend reaches: the leases of ``seen`` (the daemon's ``peers_seen``)
    with a subnet of either family in ``routed`` (``Backend.peer_subnets()``), so that a dual-stack
    peer's two subnets count once. Pure."""
    return _reachable(list(seen.values()), routed)  # list(): one copy, under the GIL (module note)


def _reachable(values: list[tuple[Lease, float]], routed: list[str]) -> int:
    reached = set(routed)
    return sum(1 for lease, _ in values
               if str(lease.subnet) in reached or (lease.subnet6 is not None and str(lease.subnet6) in reached))


class PeerCount:
    """:func:`reachable_peers`, counted again only when its inputs changed: ``seen``'s values (a list
    compare, at C speed while the tuples are the same objects) or ``routed``. systemd's status line
    asks every second; at 5000 peers a count took ~15 ms (a ``str()`` per lease), most of an idle
    daemon's CPU. The memo is one tuple, replaced whole: the health server's thread counts too."""

    def __init__(self) -> None:
        self._last: tuple | None = None  # (seen's values, routed, count)

    def __call__(self, seen: Mapping[object, tuple[Lease, float]], routed: list[str]) -> int:
        values, last = list(seen.values()), self._last
        if last is not None and last[1] == routed and last[0] == values:
            return last[2]
        count = _reachable(values, routed)
        self._last = (values, list(routed), count)  # a copy: compared by value next time
        return count


#: the count the status line and /metrics share (one daemon per process: the same inputs)
peer_count = PeerCount()


def status_line(state: DaemonState) -> str:
    """systemd's ``STATUS=`` once the daemon is up: ``leased 10.244.3.0/24; 2 peers``."""
    peers = peer_count(state.peers_seen, state.backend.peer_subnets())
    line = f"{readiness(state) or f'leased {state.lease.subnet}'}; {peers} peer{'' if peers == 1 else 's'}"
    return line if state.connectivity.up else line + "; etcd unreachable"


def datapath(backend: Backend) -> str:
    """The active data path: ``c`` or ``python`` (userspace backends), ``kernel`` otherwise."""
    return backend.datapath if isinstance(backend, UserspaceBackend) else "kernel"


def label_value(value: str) -> str:
    """A label value as exported: snake_case, no spaces (``control loop`` -> ``control_loop``)."""
    return "_".join(value.split())


def backend_families(stats: Mapping[str, int], preset: bool = False) -> list[Metric]:
    """The data plane's counters as metric families (see the module note); with ``preset`` (a
    userspace backend) every counter of the registry is there, at 0 until it counts."""
    packets = CounterMetricFamily("overlayd_datapath_packets", "Packets the data plane moved: side underlay (the "
                                  "UDP socket, to/from peers) or device (the tun or tap); direction rx (read "
                                  "there) or tx (written there)", labels=["side", "direction"])
    nbytes = CounterMetricFamily("overlayd_datapath_bytes", "Bytes the data plane moved (as "
                                 "overlayd_datapath_packets_total; device bytes without a virtio header)",
                                 labels=["side", "direction"])
    dropped = CounterMetricFamily("overlayd_dropped_packets", "Packets the data plane dropped, by reason",
                                  labels=["reason"])
    errors = CounterMetricFamily("overlayd_datapath_errors", "Failed device or socket calls, by call (and errno)",
                                 labels=["error"])
    events = CounterMetricFamily("overlayd_datapath_events", "Other data-plane counters (superpackets, UDP GSO "
                                 "sends, split UDP_GRO buffers, peers of another backend)", labels=["event"])
    counts = {**dict.fromkeys(drops.KNOWN_COUNTERS, 0), **stats} if preset else dict(stats)
    for name, value in sorted(counts.items()):
        key, _, unit = name.rpartition("_")
        if name in TABLE_SIZES or name in PEER_GAUGES:
            continue
        if key in drops.TRAFFIC and unit in ("packets", "bytes"):
            (packets if unit == "packets" else nbytes).add_metric(list(drops.TRAFFIC[key]), value)
        elif name in drops.DROPS or name.startswith("drop_"):
            dropped.add_metric([drops.DROPS.get(name, name.removeprefix("drop_"))], value)
        elif name in drops.ERRORS or name.startswith(drops.ERRNO_ERRORS) or "error" in name:
            errors.add_metric([name], value)
        else:
            events.add_metric([name], value)
    return [packets, nbytes, dropped, errors, events]


def device_families(device: str, statistics: Mapping[str, int]) -> list[Metric]:
    """A kernel device's sysfs statistics (``rx_packets``, ``tx_dropped``, ...) as metric families."""
    families = []
    for kind, (name, documentation) in DEVICE_FAMILIES.items():
        family = CounterMetricFamily(name, documentation, labels=["device", "direction"])
        for direction in ("rx", "tx"):
            family.add_metric([device, direction], statistics.get(f"{direction}_{kind}", 0))
        families.append(family)
    return families


#: the labels of the per-peer session families (:func:`peer_families`)
PEER_LABELS = ["device", "subnet", "public_key"]


def peer_families(rows: list[dict]) -> list[Metric]:
    """``Backend.peer_stats()`` rows as metric families: the age of each peer session's last handshake
    (+Inf before the first), its bytes by direction and whether it is stalled; none without rows."""
    if not rows:
        return []
    age = GaugeMetricFamily("overlayd_peer_handshake_age_seconds", "Seconds since the last handshake with each "
                            "peer (+Inf: none yet); a session in use handshakes every 2 minutes",
                            labels=PEER_LABELS)
    nbytes = CounterMetricFamily("overlayd_peer_bytes", "Bytes received from (rx) and sent to (tx) each peer, "
                                 "encrypted, as its device counts them", labels=[*PEER_LABELS, "direction"])
    stalled = GaugeMetricFamily("overlayd_peer_stalled", "1 while this node sends to the peer without a session "
                                "(no handshake for 15 s while sending: unreachable, or its key or PSK differs)",
                                labels=PEER_LABELS)
    for row in rows:
        labels = [row["device"], row["subnet"], row["public_key"]]
        age.add_metric(labels, math.inf if row["handshake_age"] is None else row["handshake_age"])
        for direction in ("rx", "tx"):
            nbytes.add_metric([*labels, direction], row[f"{direction}_bytes"])
        stalled.add_metric(labels, 1 if row["stalled"] else 0)
    return [age, nbytes, stalled]


def _gauge(name: str, documentation: str, value: float, **labels: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


class DaemonCollector:
    """prometheus-client collector reading a :class:`DaemonState` at scrape time."""

    def __init__(self, state: DaemonState):
        self.state = state

    def describe(self) -> list[Metric]:
        """Nothing up front: registering must not scrape a daemon that is not set up yet."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Every overlayd metric, read now (docs/metrics.md is the reference)."""
        state, backend, lease = self.state, self.state.backend, self.state.lease
        yield InfoMetricFamily("overlayd_build", "overlayd's version", value={"version": __version__})
        yield _gauge("overlayd_c_engine_available", "1 when the C engine (overlayd._fastpath) loads; 0: it was "
                     "not built or does not load, and the userspace backends fall back to the Python data path",
                     1 if fast.available() else 0)
        yield _gauge("overlayd_ready", "1 while /readyz answers 200", 0 if readiness(state) else 1)
        if lease is not None and lease.expiration is not None:
            yield _gauge("overlayd_lease_seconds_left", "Seconds until this node's lease expires "
                         "unless renewed (absent for a reservation)", lease.time_left(time.time()),
                         subnet=str(lease.subnet))
        connectivity = state.connectivity
        yield _gauge("overlayd_etcd_up", "1 while etcd answers", 1 if connectivity.up else 0)
        yield _counter("overlayd_etcd_outages", "Times etcd stopped answering (a failed call or probe)",
                       connectivity.outages)
        yield _counter("overlayd_etcd_reconnects", "Times etcd answered again after an outage",
                       connectivity.reconnects)
        yield _counter("overlayd_watch_resets", "Times the peer watch broke and was re-established "
                       "from a fresh listing", state.watcher.resets if state.watcher else 0)
        yield _gauge("overlayd_stray_leases", "Lease keys for another subnet that carry this node's "
                     "PublicIP: every peer routes them here (warned about once each)",
                     len(state.watcher.strays) if state.watcher else 0)
        checks = CounterMetricFamily("overlayd_drift_checks", "Drift-repair passes (each lists the kernel "
                                     "state overlayd owns), by why: a kernel change notice ('change', also the "
                                     "first pass and a failed pass's retry), 'periodic' (a pass every few "
                                     "periods in any case) or 'unwatched' (no change notices here)",
                                     labels=["reason"])
        for reason, count in state.kernel_watch.checks.items():
            checks.add_metric([reason], count)
        yield checks
        ages = GaugeMetricFamily("overlayd_loop_heartbeat_age_seconds", "Seconds since each event loop "
                                 "last turned (the watchdog and /healthz judge these)", labels=["loop"])
        for name, age in state.liveness.ages().items():
            ages.add_metric([label_value(name)], age)
        yield ages
        if backend is None:
            return
        loop = {"event_loop": "uvloop" if backend.options.use_uvloop else "asyncio"} \
            if isinstance(backend, UserspaceBackend) else {}
        yield InfoMetricFamily("overlayd_datapath", "The active backend and data path",
                               value={"backend": backend.type_name, "datapath": datapath(backend), **loop})
        stats = backend.stats()
        yield _gauge("overlayd_peers", "Peer nodes this node can reach (a dual-stack peer counts once)",
                     peer_count(state.peers_seen, backend.peer_subnets()))
        for key, (name, documentation) in PEER_GAUGES.items():
            yield _gauge(name, documentation, stats.get(key, 0))
        yield from (family for family in backend_families(stats, preset=isinstance(backend, UserspaceBackend))
                    if family.samples)  # a kernel backend has no data-plane counters: no empty families
        statistics = backend.device_statistics()
        if statistics is not None:
            yield from device_families(backend.device, statistics)
        yield from peer_families(backend.peer_stats())


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):
        """No access log: probes come every few seconds."""


class BoundedWSGIServer(WSGIServer):
    """A WSGI server that a flood of connections cannot exhaust (module note, "Bounds").

    :meth:`serve` runs the accepting and watching loop (on the caller's thread, until
    :meth:`stop`); requests are served by :data:`WORKERS` daemon threads.
    """

    request_queue_size = MAX_IDLE_CONNECTIONS  # listen backlog: socketserver's 5 drops SYNs in a burst

    def __init__(self, addr: tuple[str, int], handler: type[WSGIRequestHandler]):
        super().__init__(addr, handler)  # binds and listens: OSError when it cannot
        self.socket.setblocking(False)
        self.idle_timeout, self.read_timeout = IDLE_TIMEOUT, READ_TIMEOUT
        self.idle: dict[socket.socket, tuple[float, tuple]] = {}  # oldest first: accept time, peer
        self.requests: queue.Queue = queue.Queue(MAX_QUEUED_REQUESTS)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.socket, selectors.EVENT_READ)
        self._wake, self._waker = socket.socketpair()
        self.selector.register(self._wake, selectors.EVENT_READ)
        self._stopping = False
        self.workers = [threading.Thread(target=self._work, name=f"overlayd-healthz-{i}", daemon=True)
                        for i in range(WORKERS)]
        for worker in self.workers:
            worker.start()

    def serve(self) -> None:
        """Accept connections and hand each to a worker once its request arrives, until :meth:`stop`."""
        try:
            while not self._stopping:
                oldest = next(iter(self.idle.values()), (None,))[0]
                timeout = None if oldest is None else max(0.0, oldest + self.idle_timeout - time.monotonic())
                for key, _ in self.selector.select(timeout):
                    if key.fileobj is self.socket:
                        self._accept()
                    elif key.fileobj is not self._wake:  # the wake-up only ends the loop
                        self._dispatch(key.fileobj)
                silent_since = time.monotonic() - self.idle_timeout
                while self.idle and next(iter(self.idle.values()))[0] <= silent_since:
                    self._drop(next(iter(self.idle)))
        finally:
            self._close_all()

    def stop(self) -> None:
        """Make :meth:`serve` return (it closes every connection it holds on its way out)
        and the workers end once their current request is done."""
        self._stopping = True
        try:
            self._waker.send(b"x")
        except OSError:
            pass  # serve() already returned and closed it

    def _accept(self) -> None:
        try:
            conn, peer = self.socket.accept()
        except (BlockingIOError, ConnectionError):
            return
        if len(self.idle) >= MAX_IDLE_CONNECTIONS:
            self._drop(next(iter(self.idle)))
        self.idle[conn] = (time.monotonic(), peer)
        self.selector.register(conn, selectors.EVENT_READ)

    def _drop(self, conn: socket.socket) -> None:
        self.selector.unregister(conn)
        del self.idle[conn]
        conn.close()

    def _dispatch(self, conn: socket.socket) -> None:
        """``conn`` has sent something: queue it for a worker (or close it when the queue is full)."""
        if conn not in self.idle:
            return  # closed as the oldest by an accept earlier in the same select batch
        self.selector.unregister(conn)
        _, peer = self.idle.pop(conn)
        try:
            self.requests.put_nowait((conn, peer))
        except queue.Full:
            conn.close()

    def _work(self) -> None:
        while (item := self.requests.get()) is not None:
            conn, peer = item
            conn.settimeout(self.read_timeout)
            try:
                self.finish_request(conn, peer)
            except OSError:
                pass  # timed out or reset: nothing to answer
            except Exception:
                self.handle_error(conn, peer)
            finally:
                self.shutdown_request(conn)

    def _close_all(self) -> None:
        for conn in list(self.idle):
            self._drop(conn)
        while True:
            try:
                conn, _ = self.requests.get_nowait()
            except queue.Empty:
                break
            conn.close()
        for _ in self.workers:
            self.requests.put(None)
        self.selector.close()
        self._wake.close()
        self._waker.close()


class BoundedWSGIServer6(BoundedWSGIServer):
    """:class:`BoundedWSGIServer` on an IPv6 address."""

    address_family = socket.AF_INET6


class HealthServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` on ``addr``, served on a thread (see the module note)."""

    def __init__(self, addr: tuple[str, int], state: DaemonState):
        """Listen at once: :class:`ConfigError` (one line) when the address cannot be bound."""
        self.state = state
        registry = CollectorRegistry(auto_describe=False)
        registry.register(DaemonCollector(state))
        ProcessCollector(registry=registry)  # process_* metrics: CPU, memory, open fds
        self.metrics = make_wsgi_app(registry)
        host, port = addr
        server = BoundedWSGIServer6 if ":" in host else BoundedWSGIServer
        try:
            self.httpd = make_server(host, port, self.app, server, handler_class=_QuietHandler)
        except OSError as exc:
            raise ConfigError(f"--healthz-addr {host_port(host, port)}: cannot listen: {exc.strerror}") from None
        self.address = self.httpd.server_address[:2]
        self.thread = threading.Thread(target=self.httpd.serve, name="overlayd-healthz", daemon=True)
        self.thread.start()

    def app(self, environ, start_response):
        """The WSGI application: the three endpoints, 404 for anything else."""
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self.metrics(environ, start_response)
        if path == "/healthz":
            problem = self.state.liveness.problem()
        elif path == "/readyz":
            problem = readiness(self.state)
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: /healthz, /readyz, /metrics\n"]
        start_response("503 Service Unavailable" if problem else "200 OK",
                       [("Content-Type", "text/plain; charset=utf-8")])
        return [f"{problem or 'ok'}\n".encode()]

    def close(self) -> None:
        """Stop serving and release the port (blocks briefly: call it off the loop). A request
        being served finishes on its worker (within :data:`READ_TIMEOUT` per read or write)."""
        self.httpd.stop()
        self.thread.join(5)
        self.httpd.server_close()
        for worker in self.httpd.workers:
            worker.join(READ_TIMEOUT)
