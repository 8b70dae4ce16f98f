"""``overlayctl peers`` shows a wireguard peer's sessions (issue 18): its public key, endpoint, last
handshake and bytes each way, from the status file's ``peer_stats`` (Backend.peer_stats)."""

from __future__ import annotations

import ipaddress
import json
import time

import pytest
from click.testing import CliRunner

from overlayd.cli.ctl import cli as ctl
from overlayd.cli.ctl import fmt_bytes, lease_record
from overlayd.lease.model import Lease, LeaseAttrs

KEY_A, KEY_B = "mSwaz4HyIYV8eF8ystfsMlcJLE8uzKjC3aMYNzp5/y8=", "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY="


def status(now: float, peer_stats) -> dict:
    table = [{"subnet": s, "public_ip": ip, "backend": "wireguard", "vtep_mac": None, "since": now - 60,
              "routed": True} for s, ip in (("10.244.7.0/24", "198.18.0.12"), ("10.244.9.0/24", "198.18.0.13"))]
    return {"state": "running", "subnet": "10.244.3.0/24", "public_ip": "198.18.0.11", "backend": "wireguard",
            "device": "flannel-wg", "mtu": 1420, "peers": [p["subnet"] for p in table], "stats": {},
            "interval": 2.0, "updated": now, "peer_table": table, "peer_stats": peer_stats}


def session(subnet, key, seen, stalled=False, rx=0, tx=0, device="flannel-wg", endpoint="198.18.0.12:51820"):
    return {"subnet": subnet, "device": device, "public_key": key, "endpoint": endpoint, "subnets": [subnet],
            "latest_handshake": seen, "handshake_age": None, "stalled": stalled, "rx_bytes": rx, "tx_bytes": tx}


def test_peers_show_each_wireguard_peers_key_handshake_and_traffic(tmp_path):
    now = time.time()
    path = tmp_path / "status.json"
    path.write_text(json.dumps(status(now, [
        session("10.244.7.0/24", KEY_A, now - 65, rx=348, tx=3 * 1024 ** 3),
        session("10.244.9.0/24", KEY_B, 0, stalled=True, tx=148, endpoint="198.18.0.13:51820")])))
    out = CliRunner().invoke(ctl, ["peers", "--status-file", str(path)])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert all(len(line) <= 80 for line in lines), out.output
    at = lines.index("sessions (public key; device, endpoint, last handshake, bytes rx/tx):")
    assert lines[at + 1].split() == ["10.244.7.0/24", KEY_A]
    assert lines[at + 2].split() == ["flannel-wg", "198.18.0.12:51820", "handshake", "1m05s", "ago",
                                     "rx", "348", "B", "tx", "3.0", "GiB"]
    assert lines[at + 3].split() == ["10.244.9.0/24", KEY_B]
    assert lines[at + 4].split() == ["flannel-wg", "198.18.0.13:51820", "handshake", "never",
                                     "rx", "0", "B", "tx", "148", "B", "STALLED"]
    as_json = json.loads(CliRunner().invoke(ctl, ["peers", "--json", "--status-file", str(path)]).output)
    first = as_json["peer_table"][0]
    assert first["sessions"] == [{"device": "flannel-wg", "public_key": KEY_A, "endpoint": "198.18.0.12:51820",
                                  "subnets": ["10.244.7.0/24"], "latest_handshake": now - 65, "stalled": False,
                                  "rx_bytes": 348, "tx_bytes": 3 * 1024 ** 3}]


def test_peers_without_sessions_are_shown_as_before(tmp_path):
    path = tmp_path / "status.json"
    data = status(time.time(), [])
    path.write_text(json.dumps(data))
    out = CliRunner().invoke(ctl, ["peers", "--status-file", str(path)])
    assert out.exit_code == 0 and "sessions" not in out.output
    assert json.loads(CliRunner().invoke(ctl, ["peers", "--json", "--status-file", str(path)]).output)[
        "peer_table"] == data["peer_table"]
    del data["peer_stats"]  # a daemon from before issue 18
    path.write_text(json.dumps(data))
    assert CliRunner().invoke(ctl, ["peers", "--status-file", str(path)]).exit_code == 0


def test_malformed_peer_stats_are_one_line(tmp_path):
    path = tmp_path / "status.json"
    path.write_text(json.dumps(status(time.time(), [{"device": "flannel-wg"}])))
    out = CliRunner().invoke(ctl, ["peers", "--status-file", str(path)])
    assert out.exit_code == 1 and "malformed peer_stats" in out.output and len(out.output.splitlines()) == 1


@pytest.mark.parametrize("count, shown", [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"),
                                          (5 * 1024 ** 2 + 1, "5.0 MiB"), (1024 ** 6, "1024.0 PiB")])
def test_bytes_are_short(count, shown):
    assert fmt_bytes(count) == shown


def test_a_wireguard_lease_record_has_its_public_key():
    lease = Lease(ipaddress.IPv4Network("10.244.7.0/24"),
                  LeaseAttrs(ipaddress.IPv4Address("198.18.0.12"), "wireguard", {"PublicKey": KEY_A, "Port": 51820}))
    record = lease_record(lease, time.time(), set())
    assert record["public_key"] == KEY_A and record["vtep_mac"] is None
