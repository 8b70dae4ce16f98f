"""--healthz-addr (issue 11, section 2): /healthz, /readyz and /metrics against a fake daemon
state, the flag, and a port in use stopping the daemon before any lease. No root, no etcd."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

import overlayd
import overlayd.daemon
from overlayd import health
from overlayd.cli.daemon import cli as daemon_cli
from overlayd.daemon import Daemon, DaemonOptions
from overlayd.errors import ConfigError
from overlayd.health import CountingLeaseWatcher, HealthServer, parse_addr, readiness, status_line
from overlayd.lab.etcd import free_port
from overlayd.lease.model import Lease, LeaseAttrs
from overlayd.watchdog import STALL_AFTER, Liveness, LoopHeartbeat

SUBNET = ipaddress.IPv4Network("10.244.3.0/24")


def lease(expires_in: float | None = 3600.0) -> Lease:
    expiration = None if expires_in is None else time.time() + expires_in
    return Lease(SUBNET, LeaseAttrs(ipaddress.IPv4Address("198.18.0.11"), "udp"), expiration, handle=7)


class FakeBackend:
    type_name = "host-gw"
    options = SimpleNamespace(use_uvloop=False)

    def __init__(self, stats):
        self._stats = stats

    def peer_subnets(self):
        return ["10.244.7.0/24", "10.244.9.0/24"]

    def stats(self):
        return dict(self._stats)


@pytest.fixture
def state():
    """What the endpoints read, as the daemon has it while starting (no lease yet)."""
    beat = LoopHeartbeat()
    beat.last = time.monotonic()
    liveness = Liveness()
    liveness.watch("control loop", beat)
    return SimpleNamespace(ready=False, lease=None, lease_lost=False, backend=None, watcher=None,
                           connectivity=SimpleNamespace(up=True, outages=0, reconnects=0), liveness=liveness)


@pytest.fixture
def server(state):
    srv = HealthServer(("127.0.0.1", 0), state)
    yield srv
    srv.close()


def get(server: HealthServer, path: str) -> tuple[int, str]:
    host, port = server.address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as res:
            return res.status, res.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def metrics(server: HealthServer) -> dict[str, dict]:
    """family name -> {labels as a sorted tuple of (name, value): value} for each sample."""
    status, text = get(server, "/metrics")
    assert status == 200
    families = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
    return families


# -- /readyz ---------------------------------------------------------------------------------

def test_readyz_is_503_until_everything_is_in_place_and_while_the_lease_is_lost(server, state):
    assert get(server, "/readyz") == (503, "no lease yet\n")
    state.lease = lease()
    assert get(server, "/readyz") == (503, "leased 10.244.3.0/24; setting up devices, routes and subnet.env\n")
    state.ready = True
    assert get(server, "/readyz") == (200, "ok\n")
    state.lease_lost = True  # the watch saw our key deleted: until the manager has it back
    assert get(server, "/readyz") == (503, "lease on 10.244.3.0/24 lost; re-acquiring it\n")
    state.lease_lost = False
    state.lease = lease(expires_in=-1)  # etcd down past the TTL
    assert get(server, "/readyz") == (503, "lease on 10.244.3.0/24 expired; renewing it\n")
    state.lease = lease(expires_in=None)  # a reservation never expires
    assert get(server, "/readyz") == (200, "ok\n")


def test_healthz_says_which_loop_stalled(server, state):
    assert get(server, "/healthz") == (200, "ok\n")
    state.liveness.beats["control loop"].last -= 12
    assert get(server, "/healthz") == (503, "control loop stalled for 12s\n")


def test_healthz_flags_a_loop_that_never_beat_once_its_grace_is_over():
    """A loop watched but never started (a data-plane thread that hangs before its first beat) is
    given STALL_AFTER seconds from when it was watched, then named by /healthz. Pure: the WSGI
    app is called without a server, the clock is injected."""
    now = [1000.0]
    clock = lambda: now[0]  # noqa: E731
    liveness = Liveness(clock)
    control = LoopHeartbeat(clock)
    liveness.watch("control loop", control)
    liveness.watch("data plane", LoopHeartbeat(clock))  # registered, never started

    def healthz() -> tuple[str, str]:
        control.last = now[0]  # the control loop turns throughout
        answer = {}
        body = HealthServer.app(SimpleNamespace(state=SimpleNamespace(liveness=liveness)),
                                {"PATH_INFO": "/healthz"}, lambda status, headers: answer.update(status=status))
        return answer["status"], b"".join(body).decode()

    assert healthz() == ("200 OK", "ok\n")
    now[0] += STALL_AFTER - 1  # still starting
    assert healthz() == ("200 OK", "ok\n")
    now[0] += 2
    assert healthz() == ("503 Service Unavailable", "data plane has no heartbeat 6s after its start\n")


def test_other_paths_are_404(server):
    assert get(server, "/")[0] == 404


# -- a flood of connections (issue 16.4) ----------------------------------------------------------

@pytest.fixture
def clients():
    """Open TCP connections to a server, each bounded by a timeout; all closed at teardown."""
    opened: list[socket.socket] = []

    def connect(address, count: int = 1) -> list[socket.socket]:
        for _ in range(count):
            opened.append(socket.create_connection(address, timeout=5))
        return opened[-count:]

    yield connect
    for sock in opened:
        sock.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_flood_of_idle_connections_leaves_threads_bounded_and_healthz_answering(server, state, clients):
    """1,000 half-open connections made 1,012 threads (one per connection, forever). Now a
    fixed pool serves requests and idle connections are capped: 300 of them add no thread,
    hold a bounded number of descriptors, and /healthz answers at once behind them."""
    get(server, "/healthz")  # the server's own threads are up
    threads, fds = threading.active_count(), open_fds()
    clients(server.address, 300)  # connected, never a byte sent
    state.liveness.beats["control loop"].last = started = time.monotonic()  # the fake loop is alive
    assert get(server, "/healthz") == (200, "ok\n")  # accepted after all 300 (one backlog, in order)
    assert time.monotonic() - started < 5
    assert threading.active_count() <= threads + 2  # was + 300
    server_fds = open_fds() - fds - 300  # the 300 client ends are ours
    assert server_fds <= health.MAX_IDLE_CONNECTIONS
    assert get(server, "/readyz")[0] == 503 and metrics(server)["overlayd_ready"]


def read_until_closed(sock: socket.socket, within: float) -> bytes:
    """What the server sends until it closes ``sock``; fails when it is still open after ``within``."""
    sock.settimeout(within)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


@pytest.mark.parametrize("sent", [b"", b"GET /healthz HTTP/1.0\r\n"])  # silent; a request never finished
def test_a_connection_that_does_not_send_its_request_is_closed(monkeypatch, state, clients, sent):
    monkeypatch.setattr(health, "IDLE_TIMEOUT", 0.3)
    monkeypatch.setattr(health, "READ_TIMEOUT", 0.3)
    srv = HealthServer(("127.0.0.1", 0), state)
    try:
        (sock,) = clients(srv.address)
        sock.sendall(sent)
        assert read_until_closed(sock, within=5) == b""  # closed without an answer (socket.timeout if never)
        assert get(srv, "/healthz") == (200, "ok\n")
    finally:
        srv.close()


# -- /metrics ---------------------------------------------------------------------------------

def test_metrics_before_a_lease(server):
    families = metrics(server)
    assert families["overlayd_build_info"] == {("overlayd_build_info", (("version", overlayd.__version__),)): 1}
    assert families["overlayd_ready"] == {("overlayd_ready", ()): 0}
    assert "overlayd_lease_seconds_left" not in families and "overlayd_peers" not in families
    assert "process_resident_memory_bytes" in families


def test_metrics_read_the_live_state_at_scrape_time(server, state):
    state.lease, state.ready = lease(), True
    state.backend = FakeBackend({"peers": 2, "tx_packets": 5, "tx_bytes": 700, "dev_rx_packets": 6,
                                 "dev_rx_bytes": 800, "rx_packets": 3, "rx_bytes": 400, "dev_tx_packets": 3,
                                 "drop_no_lease": 4, "drop_spoofed_source": 1,
                                 "drop_a_reason_added_tomorrow": 2,  # read generically, not from a list
                                 "tx_error_enetunreach": 1, "skipped_peers": 1})
    state.connectivity = SimpleNamespace(up=False, outages=3, reconnects=2)
    state.watcher = CountingLeaseWatcher()
    for _ in range(3):  # the first listing, then two after broken watches
        state.watcher.reset([], 1)
    m = metrics(server)
    assert m["overlayd_ready"] == {("overlayd_ready", ()): 1}
    (key, left), = m["overlayd_lease_seconds_left"].items()
    assert key == ("overlayd_lease_seconds_left", (("subnet", "10.244.3.0/24"),)) and 3590 < left <= 3600
    assert m["overlayd_peers"] == {("overlayd_peers", ()): 2}
    assert m["overlayd_packets"] == {("overlayd_packets_total", (("direction", d),)): v
                                     for d, v in {"tx": 5, "rx": 3, "dev_rx": 6, "dev_tx": 3}.items()}
    assert m["overlayd_bytes"] == {("overlayd_bytes_total", (("direction", d),)): v
                                   for d, v in {"tx": 700, "rx": 400, "dev_rx": 800}.items()}
    assert m["overlayd_dropped_packets"] == {("overlayd_dropped_packets_total", (("reason", r),)): v
                                             for r, v in {"no_lease": 4, "spoofed_source": 1,
                                                          "a_reason_added_tomorrow": 2}.items()}
    assert m["overlayd_datapath_errors"] == {("overlayd_datapath_errors_total",
                                              (("error", "tx_error_enetunreach"),)): 1}
    assert m["overlayd_datapath_events"] == {("overlayd_datapath_events_total", (("event", "skipped_peers"),)): 1}
    assert m["overlayd_etcd_up"] == {("overlayd_etcd_up", ()): 0}
    assert m["overlayd_etcd_outages"] == {("overlayd_etcd_outages_total", ()): 3}
    assert m["overlayd_etcd_reconnects"] == {("overlayd_etcd_reconnects_total", ()): 2}
    assert m["overlayd_watch_resets"] == {("overlayd_watch_resets_total", ()): 2}
    assert m["overlayd_datapath_info"] == {("overlayd_datapath_info", (("backend", "host-gw"), ("datapath", "kernel"))): 1}
    assert set(dict(k[1])["loop"] for k in m["overlayd_loop_heartbeat_age_seconds"]) == {"control loop"}
    state.backend._stats["tx_packets"] = 9  # nothing is copied in between: the next scrape sees it
    assert metrics(server)["overlayd_packets"][("overlayd_packets_total", (("direction", "tx"),))] == 9


def test_status_line_for_systemd(state):
    state.lease, state.ready, state.backend = lease(), True, FakeBackend({})
    assert status_line(state) == "leased 10.244.3.0/24; 2 peers"
    state.lease_lost, state.connectivity.up = True, False
    assert status_line(state) == "lease on 10.244.3.0/24 lost; re-acquiring it; 2 peers; etcd unreachable"
    assert readiness(state) == "lease on 10.244.3.0/24 lost; re-acquiring it"


def test_the_lease_is_lost_when_the_watch_sees_our_key_gone_until_it_is_renewed():
    daemon = Daemon(DaemonOptions(etcd_endpoints="http://127.0.0.1:9", etcd_prefix="/t"))
    daemon.lease, seen = lease(), []
    daemon.manager = SimpleNamespace(own_key_seen=seen.append)
    daemon._own_key_seen(daemon.lease)
    assert not daemon.lease_lost
    daemon._own_key_seen(None)  # deleted
    assert daemon.lease_lost and seen == [daemon.lease, None]  # the manager still hears of it
    daemon._renewed(lease())
    assert not daemon.lease_lost
    daemon._own_key_seen(Lease(SUBNET, daemon.lease.attrs, handle=99))  # bound to another etcd lease
    assert daemon.lease_lost


# -- the flag and the port ------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["127.0.0.1", "localhost:10256", "127.0.0.1:0", "127.0.0.1:70000", ":10256"])
def test_parse_addr_refuses_anything_but_ipv4_port(spec):
    with pytest.raises(ConfigError, match="is not IPv4:PORT"):
        parse_addr(spec)


def test_flag_and_env(monkeypatch):
    seen = []
    monkeypatch.setattr(overlayd.daemon, "run", lambda options: seen.append(options) or 0)
    runner = CliRunner()
    result = runner.invoke(daemon_cli, ["--etcd-endpoints", "http://127.0.0.1:2379"])
    assert result.exit_code == 0 and seen[-1].healthz_addr is None  # off by default
    result = runner.invoke(daemon_cli, ["--etcd-endpoints", "http://127.0.0.1:2379"],
                           env={"OVERLAYD_HEALTHZ_ADDR": "127.0.0.1:10256"})
    assert result.exit_code == 0 and seen[-1].healthz_addr == ("127.0.0.1", 10256)
    result = runner.invoke(daemon_cli, ["--etcd-endpoints", "http://127.0.0.1:2379", "--healthz-addr", "x:1"])
    assert result.exit_code == 2 and "'x:1' is not IPv4:PORT" in result.output


async def test_a_port_in_use_stops_the_daemon_before_it_reads_etcd(caplog):
    port = free_port()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", port))
    squatter.listen()
    try:
        daemon = Daemon(DaemonOptions(etcd_endpoints="http://127.0.0.1:9", etcd_prefix="/t",
                                      healthz_addr=("127.0.0.1", port)))

        async def no_etcd_call():
            raise AssertionError("etcd was called before the health server listened")

        daemon.store.get_config = no_etcd_call
        with caplog.at_level(logging.ERROR, "overlayd"):
            assert await asyncio.wait_for(daemon.serve(), 10) == 1
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
            f"--healthz-addr 127.0.0.1:{port}: cannot listen: Address already in use"]
        assert daemon.lease is None
    finally:
        squatter.close()
