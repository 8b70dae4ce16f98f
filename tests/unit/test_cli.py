"""The CLIs through click's CliRunner: no daemon, no root; etcd is unreachable on purpose."""

import ipaddress
import json
import types
import time

import click
import pytest
from click.testing import CliRunner

from overlayd.cli import ctl as ctl_module
from overlayd.cli.ctl import cli as ctl, fmt_duration, render_table, watch_line
from overlayd.cli.daemon import cli as daemon
from overlayd.daemon import Daemon, DaemonOptions
from overlayd.lab.etcd import free_port
from overlayd.lease.model import Lease, LeaseAttrs
from overlayd.lease.watcher import Batch
from overlayd.netconf import parse_config

DEAD = f"http://127.0.0.1:{free_port()}"  # nothing listens there


def run(cmd, args, **kw):
    return CliRunner().invoke(cmd, args, catch_exceptions=False, **kw)


def one_line_error(result, needle):
    assert result.exit_code != 0
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1, result.output
    assert needle in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args, needle", [
    (["--etcd-endpoints", DEAD, "subnets"], "etcd unreachable"),
    (["--etcd-endpoints", DEAD, "config", "get"], "etcd unreachable"),
    (["--etcd-endpoints", "https://127.0.0.1:2379,http://127.0.0.1:2380", "subnets"], "mix http:// and https://"),
    (["--etcd-endpoints", "https://127.0.0.1:2379", "--etcd-cafile", "/nonexistent/ca.pem", "subnets"],
     "--etcd-cafile /nonexistent/ca.pem: cannot read it: No such file or directory"),
    (["--etcd-endpoints", DEAD, "--etcd-cafile", __file__, "subnets"], "--etcd-cafile given but the etcd endpoints are http://"),
    (["--etcd-endpoints", "https://127.0.0.1:2379", "--etcd-keyfile", __file__, "subnets"], "--etcd-certfile and --etcd-keyfile go together"),
    (["--etcd-endpoints", "ftp://x", "subnets"], "expected http://HOST:PORT"),
    (["--etcd-endpoints", "http://127.0.0.1:99999", "subnets"], "bad port"),
])
def test_overlayctl_etcd_problems_are_one_line(args, needle):
    one_line_error(run(ctl, ["--timeout", "1", *args]), needle)


@pytest.mark.parametrize("config, needle", [
    ('{"Network": "10.244.0.0/16", "SubnetLen": 40}', "SubnetLen"),
    ("{broken", "not valid JSON"),
    ('{"Network": "10.244.0.0/16", "Backend": {"Type": "gre"}}', "Backend.Type"),
])
def test_config_set_validates_before_touching_etcd(config, needle):
    # the endpoint is dead: a validation error must come first
    one_line_error(run(ctl, ["--etcd-endpoints", DEAD, "config", "set", "-"], input=config), needle)


ETCD_DEFAULT_MAX_REQUEST_BYTES = 1572864  # etcd's --max-request-bytes default: 1.5 MiB


def padded_config(size: int) -> bytes:
    """A valid config of exactly ``size`` bytes (JSON allows any amount of whitespace)."""
    base = b'{"Network": "10.244.0.0/16"}'
    return base[:-1] + b" " * (size - len(base)) + base[-1:]


class RecordingStore:
    """Stands in for EtcdStore: records what ``config set`` stores, connects nowhere."""

    def __init__(self, *args, **kwargs):
        self.puts: list[bytes] = []
        RecordingStore.last = self

    async def put_config(self, raw: bytes) -> None:
        self.puts.append(raw)

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("size", [ETCD_DEFAULT_MAX_REQUEST_BYTES + 1, 8 << 20])
def test_config_over_etcds_request_limit_is_refused_before_connecting(monkeypatch, size):
    """etcd refuses a request over --max-request-bytes ("request is too large") only after
    the connection; overlayctl refuses such a config first, in one line, without trying."""
    def no_connection(*args, **kwargs):
        raise AssertionError("config set tried to reach etcd")
    monkeypatch.setattr(ctl_module, "EtcdStore", no_connection)
    started = time.monotonic()
    result = run(ctl, ["--etcd-endpoints", DEAD, "config", "set", "-"], input=padded_config(size))
    one_line_error(result, f"{size} bytes, more than the")
    assert time.monotonic() - started < 5


def test_config_at_the_size_limit_is_stored(monkeypatch):
    monkeypatch.setattr(ctl_module, "EtcdStore", RecordingStore)
    limit = ctl_module.MAX_CONFIG_BYTES
    assert limit < ETCD_DEFAULT_MAX_REQUEST_BYTES
    result = run(ctl, ["--etcd-endpoints", DEAD, "config", "set", "-"], input=padded_config(limit))
    assert result.exit_code == 0, result.output
    assert [len(raw) for raw in RecordingStore.last.puts] == [limit]
    one_line_error(run(ctl, ["--etcd-endpoints", DEAD, "config", "set", "-"], input=padded_config(limit + 1)),
                   f"{limit + 1} bytes, more than the {limit}")


def test_config_set_missing_file():
    """One line and exit 1, as '--help' promises (was click's 3-line usage block, exit 2)."""
    one_line_error(run(ctl, ["config", "set", "/nonexistent/config.json"]), "No such file")
    assert run(ctl, ["config", "set", "/nonexistent/config.json"]).exit_code == 1


def test_endpoints_from_environment():
    result = run(ctl, ["--timeout", "1", "subnets"], env={"OVERLAYD_ETCD_ENDPOINTS": DEAD})
    one_line_error(result, DEAD.split("//")[1])


@pytest.mark.parametrize("args, needle", [
    (["--public-ip", "not-an-ip"], "not an IPv4 address"),
    (["--etcd-endpoints", "https://e:2379,http://f:2379"], "mix http:// and https://"),
    (["--etcd-endpoints", "https://e:2379", "--etcd-certfile", "/nonexistent/c.pem", "--etcd-keyfile", __file__],
     "--etcd-certfile /nonexistent/c.pem: cannot read it"),
    (["--etcd-endpoints", "https://e:2379", "--etcd-username", "u"], "--etcd-username and --etcd-password go together"),
    (["--lease-ttl", "1"], "lease-ttl"),
    (["--no-such-flag"], "No such option"),
])
def test_overlayd_bad_flags_exit_2(args, needle):
    result = run(daemon, args)
    assert result.exit_code == 2
    assert needle in result.output


def test_overlayd_flags_from_environment():
    result = run(daemon, [], env={"OVERLAYD_PUBLIC_IP": "bogus"})
    assert result.exit_code == 2
    assert "not an IPv4 address" in result.output


@pytest.mark.parametrize("cmd, words", [
    (daemon, ["--etcd-endpoints", "OVERLAYD_ETCD_ENDPOINTS", "--subnet-file", "--iface", "--lease-ttl"]),
    (ctl, ["subnets", "config"]),
])
def test_help_explains(cmd, words):
    result = run(cmd, ["--help"])
    assert result.exit_code == 0
    for w in words:
        assert w in result.output


STATUS = {
    "state": "running", "subnet": "10.244.3.0/24", "public_ip": "198.18.0.11", "backend": "udp",
    "device": "tun0", "mtu": 1472, "peers": ["10.244.7.0/24"],
    "stats": {"drop_no_lease": 3, "tx_packets": 10}, "interval": 2.0}


def test_overlayctl_status_counts_peer_nodes_not_their_subnets(tmp_path):
    # dual stack: two peer nodes route four subnets; "peers (4)" read as four nodes
    path = tmp_path / "status.json"
    table = [{"subnet": f"10.244.{i}.0/24", "subnet6": f"fd00:10:244:{i}::/64", "routed": True} for i in (7, 8)]
    table.append({"subnet": "10.244.9.0/24", "subnet6": None, "routed": False})  # off our segment (host-gw)
    peers = ["10.244.7.0/24", "10.244.8.0/24", "fd00:10:244:7::/64", "fd00:10:244:8::/64"]
    path.write_text(json.dumps({**STATUS, "subnet6": "fd00:10:244:3::/64", "peers": peers, "peer_table": table,
                                "updated": time.time()}))
    shown = CliRunner().invoke(ctl, ["status", "--status-file", str(path)])
    assert shown.exit_code == 0, shown.output
    assert "peers (2 nodes, 4 subnets): 10.244.7.0/24, 10.244.8.0/24, fd00:10:244:7::/64" in shown.output


def test_overlayctl_status_reads_the_daemon_status_file(tmp_path):
    path = tmp_path / "status.json"
    runner = CliRunner()
    missing = runner.invoke(ctl, ["status", "--status-file", str(path)])
    assert missing.exit_code == 1 and "is overlayd running" in missing.output
    assert "Traceback" not in missing.output
    path.write_text(json.dumps({**STATUS, "updated": time.time()}))
    shown = runner.invoke(ctl, ["status", "--status-file", str(path)])
    assert shown.exit_code == 0
    assert shown.output.startswith("overlayd running, updated ")
    assert "subnet 10.244.3.0/24 on 198.18.0.11, backend udp (tun0, MTU 1472)" in shown.output
    assert "peers (1): 10.244.7.0/24" in shown.output and "drop_no_lease" in shown.output
    as_json = runner.invoke(ctl, ["status", "--json"], env={"OVERLAYD_STATUS_FILE": str(path)})
    assert json.loads(as_json.output)["peers"] == ["10.244.7.0/24"]
    path.write_text("[1, 2]")
    wrong = runner.invoke(ctl, ["status", "--status-file", str(path)])
    assert wrong.exit_code == 1 and "is not an overlayd status file" in wrong.output
    path.write_text("{broken")
    broken = runner.invoke(ctl, ["status", "--status-file", str(path)])
    assert broken.exit_code == 1 and "cannot read" in broken.output


@pytest.mark.parametrize("age, change, code, first_line", [
    (60, {"state": "stopped"}, 3, "overlayd STOPPED 60s ago (clean stop)"),
    (0, {"state": "failed", "error": "cannot open UDP 198.18.0.11:8472: Address already in use"}, 3,
     "overlayd FAILED 0s ago: cannot open UDP 198.18.0.11:8472"),
    (11, {}, 4, "overlayd NOT RESPONDING: status last updated 11s ago"),  # SIGKILL: no longer refreshed
    (8, {}, 0, "overlayd running, updated 8s ago"),  # within 5 refresh intervals
    (0, {"state": None}, 1, "unknown state None"),
    (0, {"updated": "yesterday"}, 1, "no valid 'updated' time"),
])
def test_overlayctl_status_tells_stopped_and_stale_from_running(tmp_path, age, change, code, first_line):
    path = tmp_path / "status.json"
    path.write_text(json.dumps({**STATUS, "updated": time.time() - age - 0.2, **change}))
    shown = CliRunner().invoke(ctl, ["status", "--status-file", str(path)])
    assert shown.exit_code == code, shown.output
    assert first_line in shown.output.splitlines()[0], shown.output
    as_json = CliRunner().invoke(ctl, ["status", "--json", "--status-file", str(path)])
    assert as_json.exit_code == code, as_json.output  # scripts get the same verdict


def test_overlayctl_status_help_documents_exit_codes():
    result = run(ctl, ["status", "--help"])
    assert "3 overlayd stopped" in result.output and "4 the file says running" in result.output


# --- overlayctl peers, --json everywhere, 80 columns, one-line errors (issue 11.4) ---

def _leaf_commands(group, path=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _leaf_commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


@pytest.mark.parametrize("path, cmd", list(_leaf_commands(ctl)), ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_every_overlayctl_command_has_json(path, cmd):
    assert "--json" in [opt for p in cmd.params for opt in p.opts], " ".join(path)


def test_the_commands_of_issue_11_exist():
    assert {" ".join(p) for p, _ in _leaf_commands(ctl)} >= {
        "peers", "subnets", "status", "config get", "config set", "lease reserve", "lease release", "lease delete"}


class FakeBackend:
    """What Daemon._peers_changed and write_status use."""

    type_name, device, mtu = "vxlan", None, 1450
    config = parse_config({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}})

    def __init__(self):
        self.routed: set[str] = set()

    async def apply(self, batch):
        self.routed -= {str(l.subnet) for l in batch.removed}
        self.routed |= {str(l.subnet) for l in batch.added if l.attrs.backend_type == "vxlan"}

    def peer_subnets(self):
        return sorted(self.routed)

    def stats(self):
        return {"peers": len(self.routed)}

    def peer_stats(self):
        return [{"subnet": s, "device": "flannel-wg", "public_key": "mSwaz4HyIYV8eF8ystfsMlcJLE8uzKjC3aMYNzp5/y8=",
                 "endpoint": None, "subnets": [s], "latest_handshake": 0, "handshake_age": None, "stalled": False,
                 "rx_bytes": 0, "tx_bytes": 0} for s in sorted(self.routed)]


def peer(subnet, ip, mac=None, backend="vxlan"):
    data = {"VNI": 1, "VtepMAC": mac} if mac else None
    return Lease(ipaddress.IPv4Network(subnet), LeaseAttrs(ipaddress.IPv4Address(ip), backend, data))


async def test_peers_shows_what_the_daemon_writes(tmp_path):
    """The daemon's status file carries its peer table; 'overlayctl peers' shows it."""
    path = tmp_path / "status.json"
    daemon = Daemon(DaemonOptions("http://127.0.0.1:1", "/x", status_file=str(path)))
    daemon.backend, daemon.lease = FakeBackend(), peer("10.244.3.0/24", "198.18.0.11")
    daemon.ready = True  # set up: peers arrive only then (before, its status file says "starting")
    a, b = peer("10.244.7.0/24", "198.18.0.12", "0e:00:00:00:00:07"), peer("10.244.9.0/24", "198.18.0.13", "0e:00:00:00:00:09")
    await daemon._peers_changed(Batch(added=[a, b, peer("10.244.5.0/24", "198.18.0.15", backend="udp")]))
    first = {p["subnet"]: p for p in json.loads(path.read_text())["peer_table"]}
    time.sleep(0.01)
    await daemon._peers_changed(Batch(added=[peer("10.244.7.0/24", "198.18.0.12", "0e:00:00:00:00:77"),  # new MAC
                                             peer("10.244.9.0/24", "198.18.0.99", "0e:00:00:00:00:99")],  # new node
                                      removed=[peer("10.244.5.0/24", "198.18.0.15", backend="udp")]))
    data = json.loads(path.read_text())
    assert data["peers"] == ["10.244.7.0/24", "10.244.9.0/24"]  # 'overlayctl status' reads this as before
    table = {p["subnet"]: p for p in data["peer_table"]}
    assert table.keys() == {"10.244.7.0/24", "10.244.9.0/24"}
    assert table["10.244.7.0/24"] == {"subnet": "10.244.7.0/24", "subnet6": None, "public_ip": "198.18.0.12",
                                      "public_ipv6": None, "backend": "vxlan",
                                      "vtep_mac": "0e:00:00:00:00:77", "since": first["10.244.7.0/24"]["since"],
                                      "routed": True}
    assert table["10.244.9.0/24"]["since"] > first["10.244.9.0/24"]["since"]  # another node: seen anew
    assert first["10.244.5.0/24"]["routed"] is False and first["10.244.5.0/24"]["vtep_mac"] is None

    shown = run(ctl, ["peers", "--status-file", str(path)])
    assert shown.exit_code == 0, shown.output
    assert shown.output.splitlines()[:3] == [  # then the sessions (tests/unit/test_ctl_sessions.py)
        "SUBNET         NODE IP      BACKEND  VTEP MAC           SINCE  ROUTED",
        "10.244.7.0/24  198.18.0.12  vxlan    0e:00:00:00:00:77  0m00s  yes",
        "10.244.9.0/24  198.18.0.99  vxlan    0e:00:00:00:00:99  0m00s  yes"]
    as_json = run(ctl, ["peers", "--json"], env={"OVERLAYD_STATUS_FILE": str(path)})
    assert data["peer_stats"] == daemon.backend.peer_stats()  # issue 18: the sessions 'overlayctl peers' shows
    assert [p["sessions"][0]["public_key"] for p in json.loads(as_json.output)["peer_table"]] == [
        "mSwaz4HyIYV8eF8ystfsMlcJLE8uzKjC3aMYNzp5/y8="] * 2
    assert run(ctl, ["status", "--status-file", str(path)]).exit_code == 0


@pytest.mark.parametrize("content, code, needle", [
    (None, 1, "does not exist: is overlayd running"),
    ({**STATUS}, 1, "has no peer table: the daemon predates"),
    ({**STATUS, "peer_table": [{"subnet": "10.244.7.0/24"}]}, 1, "malformed peer table"),
    ({**STATUS, "peer_table": [], "state": "stopped"}, 3, "overlayd STOPPED"),
])
def test_peers_errors_are_one_line(tmp_path, content, code, needle):
    path = tmp_path / "status.json"
    if content is not None:
        path.write_text(json.dumps({"updated": time.time(), **content}))
    result = CliRunner().invoke(ctl, ["peers", "--status-file", str(path)])
    assert result.exit_code == code
    assert needle in result.output.splitlines()[0] and "Traceback" not in result.output
    if code == 1:
        one_line_error(result, needle)


LONG = "wireguard-" + "x" * 200


@pytest.mark.parametrize("rows", [
    [["10.244.3.0/24", "198.18.0.11", "vxlan", "0e:00:00:00:00:03", "23h59m", "*"]],
    [["255.255.255.0/24", "255.255.255.255", "host-gw", "0e:00:00:00:00:03", "reserved", "*"]],
    [["10.244.3.0/24", "198.18.0.11", LONG, "0e:00:00:00:00:03", "1h00m", ""],
     ["10.244.4.0/24", "198.18.0.12", "udp", "a\nb" * 50, "1h00m", "*"]],
    [["10.244.3.0/24", "198.18.0.11", LONG, LONG, "1h00m", "*"]],
])
def test_subnets_table_fits_80_columns(rows):
    headers = ["SUBNET", "NODE IP", "BACKEND", "VTEP MAC", "TTL LEFT", "LOCAL"]
    lines = render_table(rows, headers).splitlines()
    assert len(lines) == len(rows) + 1  # a newline in a value does not break a row
    assert all(len(l) <= 80 for l in lines), lines
    assert lines[0].split() == ["SUBNET", "NODE", "IP", "BACKEND", "VTEP", "MAC", "TTL", "LEFT", "LOCAL"]
    for row, line in zip(rows, lines[1:]):
        assert line.startswith(row[0]) and row[1] in line  # addresses are never cut
        assert ("~" in line) == any(len(v) > 20 for v in row)


def test_human_output_fits_80_columns_with_long_values(tmp_path):
    path = tmp_path / "status.json"
    table = [{"subnet": f"10.{i}.{i}.0/24", "public_ip": "198.18.0.12", "backend": LONG, "vtep_mac": LONG,
              "since": time.time() - 86400 * 3, "routed": True} for i in range(40)]
    path.write_text(json.dumps({**STATUS, "peers": [p["subnet"] for p in table], "peer_table": table,
                                "error": LONG, "stats": {LONG: 1}, "updated": time.time()}))
    for args in (["peers"], ["status"]):
        result = run(ctl, [*args, "--status-file", str(path)])
        assert result.exit_code == 0
        assert all(len(l) <= 80 for l in result.output.splitlines()), result.output
    assert "3d00h" in run(ctl, ["peers", "--status-file", str(path)]).output
    line = watch_line("removed", {"subnet": "10.244.3.0/24", "public_ip": "198.18.0.11", "backend": LONG,
                                  "vtep_mac": None}, time.time())
    assert len(line) == 80 and line.endswith("~") and " removed 10.244.3.0/24 " in line


@pytest.mark.parametrize("seconds, shown", [
    (None, "-"), (0, "0m00s"), (59.9, "0m59s"), (61, "1m01s"), (3600, "1h00m"), (86399, "23h59m"),
    (86400, "1d00h"), (99 * 86400 + 3600 * 23, "99d23h"), (-5, "0m00s"),
])
def test_durations_are_short(seconds, shown):
    assert fmt_duration(seconds) == shown


@pytest.mark.parametrize("args, needle", [
    (["lease", "delete", "10.244.3.0/24"], "add --yes to confirm"),  # before touching (dead) etcd
    (["lease", "delete", "10.244.3.0/24", "--json"], "add --yes to confirm"),
    (["lease", "delete", "10.244.3.0/24", "--yes"], "etcd unreachable"),
    (["lease", "reserve", "10.244.3.0/24", "--public-ip", "198.18.0.11", "--json"], "etcd unreachable"),
    (["lease", "release", "10.244.3.0/24", "--json"], "etcd unreachable"),
    (["subnets", "--watch"], "etcd unreachable"),
    (["subnets", "--watch", "--json"], "etcd unreachable"),
    (["subnets", "--json"], "etcd unreachable"),
    (["config", "get", "--json"], "etcd unreachable"),
    (["peers", "--status-file", "/nonexistent/status.json"], "does not exist"),
    (["peers", "--json", "--status-file", "/nonexistent/status.json"], "does not exist"),
])
def test_overlayctl_errors_are_one_line(args, needle):
    one_line_error(run(ctl, ["--timeout", "1", "--etcd-endpoints", DEAD, *args]), needle)


def test_config_set_validates_flannel_fields_before_touching_etcd():
    config = '{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/56", "IPv6SubnetLen": 127}'
    one_line_error(run(ctl, ["--etcd-endpoints", DEAD, "config", "set", "--json", "-"], input=config),
                   "IPv6SubnetLen: must be 126 or less")


@pytest.mark.parametrize("change", [
    {"peers": [1, 2]}, {"stats": [1]}, {"updated": float("inf")}, {"updated": 4e9},
])
def test_status_refuses_a_malformed_or_future_status_file(tmp_path, change):
    """A status file with non-text peers, non-dict stats or an impossible time used to give a
    traceback or a 'running' verdict that could never go stale (found in review)."""
    import time as _time
    data = {"state": "running", "subnet": "10.244.3.0/24", "public_ip": "198.18.0.11", "backend": "udp",
            "device": "tun0", "mtu": 1472, "peers": [], "stats": {}, "updated": _time.time(), "interval": 2.0}
    data.update(change)
    path = tmp_path / "status.json"
    path.write_text(json.dumps(data))
    res = CliRunner().invoke(ctl, ["status", "--status-file", str(path)])
    assert res.exit_code == 1
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_a_dual_stack_peer_routed_in_one_family_only_is_routed():
    """host-gw skips a peer family whose address is off our segment: a peer reached over IPv6 only
    is still routed (issue 17: the table looked at the IPv4 subnet alone)."""
    from overlayd.daemon import peer_table
    attrs = LeaseAttrs(ipaddress.IPv4Address("198.19.0.12"), "host-gw", public_ip6=ipaddress.IPv6Address("2001:db8::12"))
    lease = Lease(ipaddress.IPv4Network("10.244.7.0/24"), attrs, subnet6=ipaddress.IPv6Network("fd00:10:244:7::/64"))
    seen = {lease.subnet: (lease, 1.0)}
    assert [p["routed"] for p in peer_table(seen, ["fd00:10:244:7::/64"])] == [True]
    assert [p["routed"] for p in peer_table(seen, [])] == [False]


async def test_a_peer_change_updates_systemds_status_line_at_once(tmp_path):
    from overlayd.watchdog import Liveness, SystemdNotifier
    daemon = Daemon(DaemonOptions("http://127.0.0.1:1", "/x", status_file=str(tmp_path / "status.json")))
    daemon.backend, daemon.lease = FakeBackend(), peer("10.244.3.0/24", "198.18.0.11")
    daemon.ready, sent = True, []
    daemon.notifier = SystemdNotifier(Liveness(), lambda: f"{len(daemon.peers_seen)} peers", None, notify=sent.append)
    await daemon._peers_changed(Batch(added=[peer("10.244.7.0/24", "198.18.0.12", "0e:00:00:00:00:07")]))
    assert sent == ["STATUS=1 peers"]


def test_the_status_file_counts_the_nodes_services(tmp_path):
    path = tmp_path / "status.json"
    daemon = Daemon(DaemonOptions("http://127.0.0.1:1", "/x", status_file=str(path)))
    counts = {"services": 2, "endpoints": 3, "endpoints_ready": 2, "nft_applies": 4, "nft_repairs": 0}
    daemon.services = types.SimpleNamespace(stats=lambda: counts)
    daemon.write_status()
    assert json.loads(path.read_text())["services"] == counts
