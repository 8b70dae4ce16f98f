"""--healthz-addr (issue 11, section 2): /healthz, /readyz and /metrics against a fake daemon
state, the flag, and a port in use stopping the daemon before any lease. No root, no etcd."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
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
from overlayd.plumbing.kernelwatch import KernelWatch
from overlayd import health
from overlayd.cli.daemon import cli as daemon_cli
from overlayd.backend import create_backend
from overlayd.backend import vxlan as vxlan_backend
from overlayd.backend.base import NodeOptions, Underlay
from overlayd.daemon import Daemon, DaemonOptions
from overlayd.encap.drops import Drop
from overlayd.errors import ConfigError
from overlayd.health import CountingLeaseWatcher, HealthServer, parse_addr, readiness, status_line
from overlayd.lab.etcd import free_port
from overlayd.lease.model import Lease, LeaseAttrs
from overlayd.netconf import parse_config
from overlayd.watchdog import STALL_AFTER, Liveness, LoopHeartbeat

SUBNET = ipaddress.IPv4Network("10.244.3.0/24")


def lease(expires_in: float | None = 3600.0) -> Lease:
    expiration = None if expires_in is None else time.time() + expires_in
    return Lease(SUBNET, LeaseAttrs(ipaddress.IPv4Address("198.18.0.11"), "udp"), expiration, handle=7)


PEER_SUBNETS = ["10.244.7.0/24", "10.244.9.0/24"]


def peer_lease(subnet: str, subnet6: str | None = None) -> Lease:
    """A peer's lease on ``subnet`` (and ``subnet6``: a dual-stack peer), as the daemon's peers_seen holds it."""
    network = ipaddress.IPv4Network(subnet)
    return Lease(network, LeaseAttrs(network.network_address + 11, "host-gw"),
                 subnet6=None if subnet6 is None else ipaddress.IPv6Network(subnet6))


def peers_seen(*leases: Lease) -> dict:
    """The daemon's ``peers_seen``: lease subnet -> (lease, first seen)."""
    return {lease.subnet: (lease, 1.0) for lease in leases}


class FakeBackend:
    type_name = "host-gw"
    options = SimpleNamespace(use_uvloop=False)

    def __init__(self, stats, peer_rows=(), subnets=PEER_SUBNETS):
        self._stats = stats
        self.peer_rows = list(peer_rows)
        self.subnets = list(subnets)

    def peer_subnets(self):
        return list(self.subnets)

    def stats(self):
        return dict(self._stats)

    def device_statistics(self):
        return None

    def peer_stats(self):
        return list(self.peer_rows)


@pytest.fixture
def state():
    """What the endpoints read, as the daemon has it while starting (no lease yet)."""
    beat = LoopHeartbeat()
    beat.last = time.monotonic()
    liveness = Liveness()
    liveness.watch("control loop", beat)
    return SimpleNamespace(ready=False, lease=None, lease_lost=False, backend=None, watcher=None,
                           connectivity=SimpleNamespace(up=True, outages=0, reconnects=0), liveness=liveness,
                           kernel_watch=KernelWatch(), peers_seen=peers_seen(*map(peer_lease, PEER_SUBNETS)))


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
                                 "dev_tx_bytes": 300, "drop_no_lease": 4, "drop_spoofed_source": 1,
                                 "drop_a_reason_added_tomorrow": 2,  # read generically, not from a list
                                 "tx_dropped": 7, "tx_error_enetunreach": 1, "skipped_peers": 1,
                                 "direct_peers": 1, "tx_gso_sends": 2})
    state.connectivity = SimpleNamespace(up=False, outages=3, reconnects=2)
    state.watcher = CountingLeaseWatcher()
    for _ in range(3):  # the first listing, then two after broken watches
        state.watcher.reset([], 1)
    m = metrics(server)
    assert m["overlayd_ready"] == {("overlayd_ready", ()): 1}
    (key, left), = m["overlayd_lease_seconds_left"].items()
    assert key == ("overlayd_lease_seconds_left", (("subnet", "10.244.3.0/24"),)) and 3590 < left <= 3600
    assert m["overlayd_peers"] == {("overlayd_peers", ()): 2}
    assert m["overlayd_direct_peers"] == {("overlayd_direct_peers", ()): 1}
    assert m["overlayd_skipped_peers"] == {("overlayd_skipped_peers", ()): 1}
    sides = {"tx": ("underlay", "tx"), "rx": ("underlay", "rx"), "dev_rx": ("device", "rx"),
             "dev_tx": ("device", "tx")}
    assert m["overlayd_datapath_packets"] == {
        ("overlayd_datapath_packets_total", (("direction", sides[d][1]), ("side", sides[d][0]))): v
        for d, v in {"tx": 5, "rx": 3, "dev_rx": 6, "dev_tx": 3}.items()}
    assert m["overlayd_datapath_bytes"] == {
        ("overlayd_datapath_bytes_total", (("direction", sides[d][1]), ("side", sides[d][0]))): v
        for d, v in {"tx": 700, "rx": 400, "dev_rx": 800, "dev_tx": 300}.items()}
    dropped = {("overlayd_dropped_packets_total", (("reason", r),)): v
               for r, v in {"no_lease": 4, "spoofed_source": 1, "a_reason_added_tomorrow": 2,
                            "send_buffer_full": 7}.items()}
    assert dropped.items() <= m["overlayd_dropped_packets"].items()
    assert m["overlayd_datapath_errors"][("overlayd_datapath_errors_total",
                                          (("error", "tx_error_enetunreach"),))] == 1
    assert m["overlayd_datapath_events"][("overlayd_datapath_events_total", (("event", "tx_gso_sends"),))] == 2
    assert m["overlayd_etcd_up"] == {("overlayd_etcd_up", ()): 0}
    assert m["overlayd_etcd_outages"] == {("overlayd_etcd_outages_total", ()): 3}
    assert m["overlayd_etcd_reconnects"] == {("overlayd_etcd_reconnects_total", ()): 2}
    assert m["overlayd_watch_resets"] == {("overlayd_watch_resets_total", ()): 2}
    assert m["overlayd_datapath_info"] == {("overlayd_datapath_info", (("backend", "host-gw"), ("datapath", "kernel"))): 1}
    assert set(dict(k[1])["loop"] for k in m["overlayd_loop_heartbeat_age_seconds"]) == {"control_loop"}
    state.backend._stats["tx_packets"] = 9  # nothing is copied in between: the next scrape sees it
    assert metrics(server)["overlayd_datapath_packets"][
        ("overlayd_datapath_packets_total", (("direction", "tx"), ("side", "underlay")))] == 9


KEY_A, KEY_B = "mSwaz4HyIYV8eF8ystfsMlcJLE8uzKjC3aMYNzp5/y8=", "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY="


def test_wireguard_peers_have_handshake_age_and_bytes(server, state):
    """issue 18: per peer session (Backend.peer_stats), the last handshake's age (+Inf: none yet), bytes
    each way and the stall flag, labelled by device, peer subnet and public key."""
    state.lease, state.ready = lease(), True
    row = {"subnet": "10.244.7.0/24", "device": "flannel-wg", "public_key": KEY_A, "handshake_age": 12.5,
           "stalled": False, "rx_bytes": 1000, "tx_bytes": 2000}
    never = {**row, "subnet": "10.244.9.0/24", "public_key": KEY_B, "handshake_age": None, "stalled": True,
             "rx_bytes": 0, "tx_bytes": 148}
    state.backend = FakeBackend({}, [row, never])
    m = metrics(server)
    labels = lambda r: (("device", "flannel-wg"), ("public_key", r["public_key"]), ("subnet", r["subnet"]))
    assert m["overlayd_peer_handshake_age_seconds"] == {
        ("overlayd_peer_handshake_age_seconds", labels(row)): 12.5,
        ("overlayd_peer_handshake_age_seconds", labels(never)): math.inf}
    assert m["overlayd_peer_bytes"] == {
        ("overlayd_peer_bytes_total", tuple(sorted((*labels(r), ("direction", d))))): r[f"{d}_bytes"]
        for r in (row, never) for d in ("rx", "tx")}
    assert m["overlayd_peer_stalled"] == {("overlayd_peer_stalled", labels(row)): 0,
                                          ("overlayd_peer_stalled", labels(never)): 1}
    state.backend.peer_rows = []  # no peer, no family
    assert "overlayd_peer_bytes" not in metrics(server)


def metric_types(text: str) -> dict[str, str]:
    """Family name -> its ``# TYPE`` in the exposition text."""
    return {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE ")}


def test_peer_counts_are_gauges_not_counters(server, state):
    """direct_peers and skipped_peers were samples of the counter overlayd_datapath_events_total:
    peer counts go down as well as up, and rate() on them means nothing."""
    state.lease, state.ready = lease(), True
    state.backend = FakeBackend({"peers": 2, "skipped_peers": 1, "direct_peers": 1})
    status, text = get(server, "/metrics")
    types = metric_types(text)
    assert (types["overlayd_peers"], types["overlayd_direct_peers"], types["overlayd_skipped_peers"]) == \
        ("gauge", "gauge", "gauge")
    assert "direct_peers" not in "".join(l for l in text.splitlines() if l.startswith("overlayd_datapath_events"))
    assert 'event="skipped_peers"' not in text and 'event="direct_peers"' not in text


def userspace_backend(btype: str = "udp", datapath: str = "python"):
    """A userspace backend as the daemon makes it, not set up (its counters all zero)."""
    config = parse_config(json.dumps({"Network": "10.244.0.0/16", "Backend": {"Type": btype}}))
    return create_backend(config, Underlay("eth0", ipaddress.IPv4Address("198.18.0.11"), 1500),
                          NodeOptions(datapath=datapath))


@pytest.mark.parametrize("btype", ["udp", "vxlan"])
def test_every_known_counter_is_exported_from_the_start_at_zero(server, state, btype):
    """A series that appears only with its first drop hides that burst from increase() alerts: every
    drop reason, both sides and directions of traffic, are there at 0 before any packet."""
    state.lease, state.ready = lease(), True
    state.backend = userspace_backend(btype)
    m = metrics(server)
    reasons = {dict(labels)["reason"]: v for (_, labels), v in m["overlayd_dropped_packets"].items()}
    assert reasons == {**{d.value: 0 for d in Drop}, "send_buffer_full": 0}
    for family in ("overlayd_datapath_packets", "overlayd_datapath_bytes"):
        assert {labels: v for (_, labels), v in m[family].items()} == {
            (("direction", d), ("side", s)): 0 for s in ("underlay", "device") for d in ("rx", "tx")}
    assert {dict(labels)["error"] for (_, labels) in m["overlayd_datapath_errors"]} >= {
        "dev_read_error", "sock_read_error"}
    assert all(v == 0 for v in m["overlayd_datapath_errors"].values())
    assert all(v == 0 for v in m["overlayd_datapath_events"].values()) and m["overlayd_datapath_events"]


def test_sum_by_direction_does_not_double_count(server, state):
    """The device and the underlay are one label apart, not two values of one label: summing over
    the underlay's directions no longer adds the device's packets to the peers'."""
    state.lease, state.ready = lease(), True
    state.backend = FakeBackend({"tx_packets": 5, "dev_rx_packets": 5})
    samples = metrics(server)["overlayd_datapath_packets"]
    assert sum(v for (_, labels), v in samples.items() if dict(labels)["side"] == "underlay") == 5


def test_label_values_have_no_spaces(server, state):
    state.lease, state.ready = lease(), True
    state.backend = userspace_backend()
    beat = LoopHeartbeat()
    beat.last = time.monotonic()
    state.liveness.watch("data plane", beat)
    status, text = get(server, "/metrics")
    values = [s.labels for f in text_string_to_metric_families(text) for s in f.samples]
    spaced = [labels for labels in values if any(" " in v for v in labels.values())]
    assert not spaced
    assert 'loop="control_loop"' in text and 'loop="data_plane"' in text


def test_kernel_vxlan_exports_its_device_counters(server, state, monkeypatch):
    config = parse_config(json.dumps({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}))
    backend = create_backend(config, Underlay("eth0", ipaddress.IPv4Address("198.18.0.11"), 1500),
                             NodeOptions(vxlan_impl="kernel"))
    read = []
    monkeypatch.setattr(vxlan_backend, "read_device_statistics",
                        lambda dev: read.append(dev) or {"rx_packets": 4, "tx_packets": 5, "rx_bytes": 400,
                                                         "tx_bytes": 500, "rx_dropped": 1, "tx_dropped": 0,
                                                         "rx_errors": 0, "tx_errors": 2})
    state.lease, state.ready, state.backend = lease(), True, backend
    m = metrics(server)
    assert read == ["flannel.1"]
    dev = ("device", "flannel.1")
    assert m["overlayd_kernel_device_packets"] == {
        ("overlayd_kernel_device_packets_total", (dev, ("direction", "rx"))): 4,
        ("overlayd_kernel_device_packets_total", (dev, ("direction", "tx"))): 5}
    assert m["overlayd_kernel_device_bytes"][("overlayd_kernel_device_bytes_total", (dev, ("direction", "tx")))] == 500
    assert m["overlayd_kernel_device_dropped_packets"][
        ("overlayd_kernel_device_dropped_packets_total", (dev, ("direction", "rx")))] == 1
    assert m["overlayd_kernel_device_errors"][("overlayd_kernel_device_errors_total", (dev, ("direction", "tx")))] == 2
    monkeypatch.setattr(vxlan_backend, "read_device_statistics", lambda dev: None)  # the device is gone
    assert "overlayd_kernel_device_packets" not in metrics(server)


def test_a_dual_stack_peer_counts_once(server, state):
    """overlayd_peers and STATUS= count peer nodes: a dual-stack peer's two subnets are one peer; a
    peer lease the backend does not route (host-gw off our segment) is none."""
    state.lease, state.ready = lease(), True
    state.peers_seen = peers_seen(peer_lease("10.244.7.0/24", "fd00:10:244:7::/64"),
                                  peer_lease("10.244.9.0/24", "fd00:10:244:9::/64"),
                                  peer_lease("10.244.11.0/24", "fd00:10:244:b::/64"))  # not routed
    state.backend = FakeBackend({}, subnets=["10.244.7.0/24", "10.244.9.0/24", "fd00:10:244:7::/64",
                                             "fd00:10:244:9::/64"])
    assert metrics(server)["overlayd_peers"] == {("overlayd_peers", ()): 2}
    assert status_line(state) == "leased 10.244.3.0/24; 2 peers"
    state.backend.subnets = ["fd00:10:244:9::/64"]  # routed in one family only: still a peer
    assert status_line(state) == "leased 10.244.3.0/24; 1 peer"


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

@pytest.mark.parametrize("spec", ["127.0.0.1", "localhost:10256", "127.0.0.1:0", "127.0.0.1:70000", ":10256",
                                  "::1:10256", "[::1]", "[127.0.0.1]:10256", "[::1]:0"])
def test_parse_addr_refuses_anything_but_an_address_and_port(spec):
    with pytest.raises(ConfigError, match=r"is not IPv4:PORT or \[IPv6\]:PORT"):
        parse_addr(spec)


@pytest.mark.parametrize("spec, addr", [("127.0.0.1:10256", ("127.0.0.1", 10256)), ("[::1]:10256", ("::1", 10256)),
                                        ("[2001:DB8::2]:80", ("2001:db8::2", 80))])
def test_parse_addr_takes_ipv4_and_bracketed_ipv6(spec, addr):
    assert parse_addr(spec) == addr


def test_the_health_server_listens_on_ipv6(state):
    """A dual-stack or IPv6-only node may serve /metrics on an IPv6 address (issue 17)."""
    server = HealthServer(("::1", 0), state)
    try:
        with socket.create_connection(server.address, timeout=5) as conn:
            conn.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            assert conn.recv(100).startswith(b"HTTP/1.0 200")
    finally:
        server.close()


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
    assert result.exit_code == 2 and "'x:1' is not IPv4:PORT or [IPv6]:PORT" in result.output


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
