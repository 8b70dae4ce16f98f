"""The CLIs through click's CliRunner: no daemon, no root; etcd is unreachable on purpose."""

import json
import time

import pytest
from click.testing import CliRunner

from overlayd.cli.ctl import cli as ctl
from overlayd.cli.daemon import cli as daemon
from overlayd.lab.etcd import free_port

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
    (["--etcd-endpoints", "https://127.0.0.1:2379", "subnets"], "TLS"),
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


def test_config_set_missing_file():
    result = run(ctl, ["config", "set", "/nonexistent/config.json"])
    assert result.exit_code == 2
    assert "No such file" in result.output


def test_endpoints_from_environment():
    result = run(ctl, ["--timeout", "1", "subnets"], env={"OVERLAYD_ETCD_ENDPOINTS": DEAD})
    one_line_error(result, DEAD.split("//")[1])


@pytest.mark.parametrize("args, needle", [
    (["--public-ip", "not-an-ip"], "not an IPv4 address"),
    (["--etcd-endpoints", "https://e:2379"], "TLS"),
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
