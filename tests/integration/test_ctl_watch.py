"""overlayctl against a real etcd on loopback: 'subnets --watch' followed live and stopped with
SIGINT (exit 0, no traceback), and the lease commands' --json records (issue 11.4)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import selectors
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from overlayd.cli.ctl import cli as ctl
from overlayd.lease.etcd import EtcdStore
from overlayd.lease.model import LeaseAttrs

pytestmark = pytest.mark.etcd

NET = ipaddress.IPv4Network
KUBE_FLANNEL = '{"Network": "10.244.0.0/16", "EnableNFTables": false, "Backend": {"Type": "vxlan"}}'


def vxlan(ip: str, mac: str) -> LeaseAttrs:
    return LeaseAttrs(ipaddress.IPv4Address(ip), "vxlan", {"VNI": 1, "VtepMAC": mac})


async def on_store(etcd_server, prefix, fn):
    store = EtcdStore(etcd_server.endpoint, prefix)
    try:
        return await fn(store)
    finally:
        await store.close()


class Lines:
    """A child's stdout read line by line, each wait bounded."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.sel = selectors.DefaultSelector()
        self.sel.register(proc.stdout, selectors.EVENT_READ)
        self.buf = b""

    def next(self, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            assert left > 0, f"no line within {timeout}s (got {self.buf!r})"
            if self.sel.select(left):
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                assert chunk, f"stdout closed (exit {self.proc.poll()})"
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


@pytest.mark.parametrize("as_json", [False, True])
async def test_subnets_watch_follows_changes_until_ctrl_c(etcd_server, etcd_prefix, as_json):
    await on_store(etcd_server, etcd_prefix, lambda s: s.create_lease(
        NET("10.244.1.0/24"), vxlan("198.18.0.11", "0e:00:00:00:00:01"), 600))
    argv = [sys.executable, "-m", "overlayd.cli.ctl", "--etcd-endpoints", etcd_server.endpoint,
            "--etcd-prefix", etcd_prefix, "subnets", "--watch", *(["--json"] if as_json else [])]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out = Lines(proc)
        if as_json:
            listed = json.loads(out.next())
            assert listed["schema"] == 1 and listed["event"] == "listed"
            assert listed["lease"]["subnet"] == "10.244.1.0/24"
            assert listed["lease"]["vtep_mac"] == "0e:00:00:00:00:01" and listed["lease"]["ttl_seconds"] > 500
        else:
            assert out.next().split() == ["SUBNET", "NODE", "IP", "BACKEND", "VTEP", "MAC", "TTL", "LEFT", "LOCAL", "!"]
            assert out.next().split()[:4] == ["10.244.1.0/24", "198.18.0.11", "vxlan", "0e:00:00:00:00:01"]
        time.sleep(0.5)  # let the watch start (a change before it is found by the re-list anyway)

        async def changes(store):
            await store.create_lease(NET("10.244.2.0/24"), vxlan("198.18.0.12", "0e:00:00:00:00:02"), 600)
            await store.reserve(NET("10.244.3.0/24"), vxlan("198.18.0.13", "0e:00:00:00:00:03"))
            await store.delete_lease(NET("10.244.1.0/24"))
        await on_store(etcd_server, etcd_prefix, changes)
        seen = [out.next() for _ in range(3)]
        if as_json:
            events = [json.loads(l) for l in seen]
            assert [(e["event"], e["lease"]["subnet"], e["lease"]["public_ip"]) for e in events] == [
                ("added", "10.244.2.0/24", "198.18.0.12"), ("added", "10.244.3.0/24", "198.18.0.13"),
                ("removed", "10.244.1.0/24", "198.18.0.11")]
            assert events[1]["lease"]["reserved"] is True and events[0]["lease"]["reserved"] is False
            assert all(abs(e["time"] - time.time()) < 30 and e["schema"] == 1 for e in events)
        else:
            assert [l.split()[1:3] for l in seen] == [
                ["added", "10.244.2.0/24"], ["added", "10.244.3.0/24"], ["removed", "10.244.1.0/24"]]
            assert all(len(l) <= 80 and l[2] == ":" and l[5] == ":" for l in seen)  # HH:MM:SS first

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        err = proc.stderr.read().decode()
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()


def test_lease_commands_print_the_lease_they_acted_on(etcd_server, etcd_prefix):
    runner = CliRunner()

    def ctl_json(*args, input=None):
        result = runner.invoke(ctl, ["--etcd-endpoints", etcd_server.endpoint, "--etcd-prefix", etcd_prefix,
                                     *args, "--json"], input=input, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        output = json.loads(result.stdout)
        assert output.pop("schema") == 1
        return output

    stored = ctl_json("config", "set", "-", input=KUBE_FLANNEL)  # kube-flannel's net-conf.json
    assert stored["effective"]["Backend"] == {"Type": "vxlan", "Port": 8472, "VNI": 1}
    assert stored["notes"] == ["EnableNFTables: false: overlayd always uses nftables, never iptables"]
    got = ctl_json("config", "get")
    assert got["stored"] == json.loads(KUBE_FLANNEL) and got["effective"] == stored["effective"]
    assert got == {**stored, "error": None}  # the same shape from both commands

    reserved = ctl_json("lease", "reserve", "10.244.5.0/24", "--public-ip", "198.18.0.15")["lease"]
    assert {k: reserved[k] for k in ("subnet", "public_ip", "backend", "reserved", "ttl_seconds")} == {
        "subnet": "10.244.5.0/24", "public_ip": "198.18.0.15", "backend": "vxlan", "reserved": True,
        "ttl_seconds": None}
    assert ctl_json("subnets") == {"leases": [reserved]}  # the same record everywhere
    released = ctl_json("lease", "release", "10.244.5.0/24", "--ttl", "600")["lease"]
    assert released["reserved"] is False and 590 <= released["ttl_seconds"] <= 600

    refused = runner.invoke(ctl, ["--etcd-endpoints", etcd_server.endpoint, "--etcd-prefix", etcd_prefix,
                                  "lease", "delete", "10.244.5.0/24"])
    assert refused.exit_code == 1 and "add --yes" in refused.output
    deleted = ctl_json("lease", "delete", "10.244.5.0/24", "--yes")["lease"]
    assert deleted["subnet"] == "10.244.5.0/24" and deleted["public_ip"] == "198.18.0.15"
    assert ctl_json("subnets") == {"leases": []}
    again = runner.invoke(ctl, ["--etcd-endpoints", etcd_server.endpoint, "--etcd-prefix", etcd_prefix,
                                "lease", "delete", "10.244.5.0/24", "--yes"])
    assert again.exit_code == 1 and again.output.strip() == "overlayctl: error: 10.244.5.0/24 has no lease"


def test_subnets_marks_what_the_daemons_ignore_and_a_node_ip_with_two_leases(etcd_server, etcd_prefix):
    """Issue 16: a reservation overlapping leases, one outside the Network, and a second key with
    a node's PublicIP are marked, by the rule the daemons follow (overlayd.lease.audit)."""
    async def fill(store):
        await store.put_config(b'{"Network": "10.244.0.0/16"}')
        await store.create_lease(NET("10.244.2.0/24"), vxlan("198.18.0.12", "0e:00:00:00:00:02"), 600)
        await store.create_lease(NET("10.244.7.0/24"), vxlan("198.18.0.12", "0e:00:00:00:00:02"), 600)
        await store.create_lease(NET("10.244.9.0/24"), vxlan("198.18.0.19", "0e:00:00:00:00:09"), 600)
        await store.reserve(NET("10.244.2.0/23"), vxlan("198.18.0.40", "0e:00:00:00:00:40"))
        await store.reserve(NET("10.250.0.0/24"), vxlan("198.18.0.41", "0e:00:00:00:00:41"))
    asyncio.run(on_store(etcd_server, etcd_prefix, fill))
    args = ["--etcd-endpoints", etcd_server.endpoint, "--etcd-prefix", etcd_prefix, "subnets"]
    res = CliRunner().invoke(ctl, [*args, "--json"])
    assert res.exit_code == 0, res.output
    problems = {r["subnet"]: r["problems"] for r in json.loads(res.output)["leases"]}
    assert problems == {
        "10.244.2.0/23": ["ignored: not a /24 (SubnetLen)", "overlaps 10.244.2.0/24"],
        "10.244.2.0/24": ["198.18.0.12 also holds 10.244.7.0/24"],
        "10.244.7.0/24": ["198.18.0.12 also holds 10.244.2.0/24"],
        "10.244.9.0/24": [],
        "10.250.0.0/24": ["ignored: outside the Network 10.244.0.0/16"],
    }
    res = CliRunner().invoke(ctl, args)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert all(len(l) <= 80 for l in lines)
    marked = [l.split()[0] for l in lines[1:6] if l.rstrip().endswith("!")]
    assert marked == ["10.244.2.0/23", "10.244.2.0/24", "10.244.7.0/24", "10.250.0.0/24"]
    assert "! 10.250.0.0/24: ignored: outside the Network 10.244.0.0/16" in lines
