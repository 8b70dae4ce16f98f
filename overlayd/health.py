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

Backend counters are read generically (``Backend.stats()``): ``drop_<reason>``
become ``overlayd_dropped_packets_total{reason}``, ``<direction>_packets`` and
``<direction>_bytes`` the packet and byte counters, names with ``error`` in
them ``overlayd_datapath_errors_total``, any other counter
``overlayd_datapath_events_total``. A new drop reason needs no change here.

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
from .errors import ConfigError
from .lease.connectivity import Connectivity
from .lease.model import Lease
from .lease.watcher import LeaseWatcher
from .watchdog import Liveness

# Backend stats that are table sizes, not counters: overlayd_peers covers them.
TABLE_SIZES = frozenset({"peers", "routes"})

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
    connectivity: Connectivity
    watcher: "CountingLeaseWatcher | None"
    liveness: Liveness


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
    """``127.0.0.1:10256`` -> ``("127.0.0.1", 10256)``; :class:`ConfigError` otherwise."""
    host, _, port = spec.rpartition(":")
    try:
        ipaddress.IPv4Address(host)
        number = int(port)
    except ValueError:
        number = 0
    if not 0 < number < 65536:
        raise ConfigError(f"{spec!r} is not IPv4:PORT (e.g. 127.0.0.1:10256)")
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


def status_line(state: DaemonState) -> str:
    """systemd's ``STATUS=`` once the daemon is up: ``leased 10.244.3.0/24; 2 peers``."""
    peers = len(state.backend.peer_subnets())
    line = f"{readiness(state) or f'leased {state.lease.subnet}'}; {peers} peer{'' if peers == 1 else 's'}"
    return line if state.connectivity.up else line + "; etcd unreachable"


def datapath(backend: Backend) -> str:
    """The active data path: ``c`` or ``python`` (userspace backends), ``kernel`` otherwise."""
    return backend.datapath if isinstance(backend, UserspaceBackend) else "kernel"


def backend_families(stats: Mapping[str, int]) -> list[Metric]:
    """The backend's counters as metric families (see the module note)."""
    packets = CounterMetricFamily("overlayd_packets", "Packets by direction: tx/rx to/from peers on the "
                                  "underlay, dev_rx/dev_tx read from/written to the overlay device",
                                  labels=["direction"])
    nbytes = CounterMetricFamily("overlayd_bytes", "Bytes by direction (as overlayd_packets_total)",
                                 labels=["direction"])
    drops = CounterMetricFamily("overlayd_dropped_packets", "Packets the data plane dropped, by reason",
                                labels=["reason"])
    errors = CounterMetricFamily("overlayd_datapath_errors", "Failed device or socket calls, by kind",
                                 labels=["error"])
    events = CounterMetricFamily("overlayd_datapath_events", "Other backend counters (peers skipped, "
                                 "send buffer full)", labels=["event"])
    for name, value in sorted(stats.items()):
        if name in TABLE_SIZES:
            continue
        if name.startswith("drop_"):
            drops.add_metric([name.removeprefix("drop_")], value)
        elif name.endswith("_packets"):
            packets.add_metric([name.removesuffix("_packets")], value)
        elif name.endswith("_bytes"):
            nbytes.add_metric([name.removesuffix("_bytes")], value)
        elif "error" in name:
            errors.add_metric([name], value)
        else:
            events.add_metric([name], value)
    return [packets, nbytes, drops, errors, events]


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
        """Every overlayd metric, read now (README: Observing it)."""
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
        ages = GaugeMetricFamily("overlayd_loop_heartbeat_age_seconds", "Seconds since each event loop "
                                 "last turned (the watchdog and /healthz judge these)", labels=["loop"])
        for name, age in state.liveness.ages().items():
            ages.add_metric([name], age)
        yield ages
        if backend is None:
            return
        loop = {"event_loop": "uvloop" if backend.options.use_uvloop else "asyncio"} \
            if isinstance(backend, UserspaceBackend) else {}
        yield InfoMetricFamily("overlayd_datapath", "The active backend and data path",
                               value={"backend": backend.type_name, "datapath": datapath(backend), **loop})
        yield _gauge("overlayd_peers", "Peers this node can reach", len(backend.peer_subnets()))
        yield from backend_families(backend.stats())


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
        try:
            self.httpd = make_server(host, port, self.app, BoundedWSGIServer, handler_class=_QuietHandler)
        except OSError as exc:
            raise ConfigError(f"--healthz-addr {host}:{port}: cannot listen: {exc.strerror}") from None
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
