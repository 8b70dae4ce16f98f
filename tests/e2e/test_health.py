"""Observing nodes as an operator does (issue 11, sections 2 and 3): /healthz, /readyz and
/metrics scraped inside each node's namespace and parsed as the Prometheus exposition
format; a node run with a NOTIFY_SOCKET and WATCHDOG_USEC sends READY, STATUS= with its
lease and peers, and WATCHDOG=1 pings."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .tools import wait_for

pytestmark = [pytest.mark.root, pytest.mark.etcd]

OVERLAYD = str(Path(sys.executable).parent / "overlayd")
HEALTHZ = "127.0.0.1:10256"  # inside each node's namespace: every node may use the same port
FETCH = """
import json, sys, urllib.error, urllib.request
out = {}
for path in sys.argv[2:]:
    try:
        with urllib.request.urlopen("http://" + sys.argv[1] + path, timeout=5) as res:
            out[path] = [res.status, res.read().decode()]
    except urllib.error.HTTPError as err:
        out[path] = [err.code, err.read().decode()]
print(json.dumps(out))
"""


def scrape(lab, node, *paths: str) -> dict[str, tuple[int, str]]:
    res = lab.exec(node.netns, [sys.executable, "-c", FETCH, HEALTHZ, *paths], timeout=30)
    return {path: tuple(answer) for path, answer in json.loads(res.stdout).items()}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, through prometheus-client's own parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_endpoints_and_metrics_in_the_lab(make_lab):
    lab = make_lab("udp", nodes=2, variants=[
        {"datapath": "c", "extra_args": ["--healthz-addr", HEALTHZ]},
        {"datapath": "python", "event_loop": "uvloop", "extra_args": ["--healthz-addr", HEALTHZ]},
    ])
    a, b = lab.nodes
    assert lab.ping(a.pods[0], b.pods[0].ip)
    for node, datapath, loop in ((a, "c", "asyncio"), (b, "python", "uvloop")):
        subnet = lab.node_status(node)["subnet"]
        answers = scrape(lab, node, "/healthz", "/readyz", "/metrics")
        assert answers["/healthz"] == (200, "ok\n") and answers["/readyz"] == (200, "ok\n"), answers
        m = samples(answers["/metrics"][1])
        assert m[("overlayd_ready", ())] == 1
        assert m[("overlayd_peers", ())] == 1
        assert 3500 < m[("overlayd_lease_seconds_left", (("subnet", subnet),))] <= 3600
        assert m[("overlayd_datapath_info", (("backend", "udp"), ("datapath", datapath), ("event_loop", loop)))] == 1
        assert ("overlayd_build_info", (("version", "0.1.0"),)) in m
        for side in ("underlay", "device"):  # the ping went out and its reply came back, both ways
            for direction in ("tx", "rx"):
                labels = (("direction", direction), ("side", side))
                assert m[("overlayd_datapath_packets_total", labels)] >= 1, labels
                assert m[("overlayd_datapath_bytes_total", labels)] >= 84, labels
        assert m[("overlayd_dropped_packets_total", (("reason", "no_lease"),))] == 0  # there before any drop
        assert m[("overlayd_etcd_up", ())] == 1
        assert m[("overlayd_etcd_outages_total", ())] == 0 and m[("overlayd_watch_resets_total", ())] == 0
        ages = {labels: age for (name, labels), age in m.items() if name == "overlayd_loop_heartbeat_age_seconds"}
        assert set(ages) == {(("loop", "control_loop"),), (("loop", "data_plane"),)} and max(ages.values()) < 5

    # a packet to a subnet nobody leases: counted as a drop, and answered from the node's gateway (cni0's
    # .1), not from the unreachable address itself (issue 21)
    nobodys = unleased_address(lab)
    for node in (a, b):
        gateway = str(ipaddress.IPv4Network(lab.node_status(node)["subnet"]).network_address + 1)
        res = lab.exec(node.pods[0].netns, ["ping", "-n", "-c1", "-W2", nobodys], check=False, timeout=10)
        assert f"From {gateway} icmp_seq=1 Destination Host Unreachable" in res.stdout, res.stdout
        m = samples(scrape(lab, node, "/metrics")["/metrics"][1])
        assert m[("overlayd_dropped_packets_total", (("reason", "no_lease"),))] >= 1

    # etcd restarts: the outage, the reconnect and the re-established watch are counted
    lab.restart_etcd()

    def counted():
        m = samples(scrape(lab, b, "/metrics")["/metrics"][1])
        return m[("overlayd_etcd_reconnects_total", ())] >= 1 and m[("overlayd_watch_resets_total", ())] >= 1 and m
    m = wait_for(counted, timeout=30)
    assert m, scrape(lab, b, "/metrics")
    assert m[("overlayd_etcd_outages_total", ())] >= 1 and m[("overlayd_etcd_up", ())] == 1


def unleased_address(lab) -> str:
    leased = {lab.node_status(n)["subnet"] for n in lab.nodes}
    return next(f"10.244.{i}.9" for i in range(200, 255) if f"10.244.{i}.0/24" not in leased)


def test_kernel_vxlan_device_counters_and_the_taps_icmp_answers(make_lab):
    """A kernel VXLAN node exports its device's own counters (read from sysfs in its namespace); a
    userspace VXLAN node answers a packet to nobody's subnet from its gateway through the tap."""
    lab = make_lab("vxlan", nodes=2, variants=[
        {"vxlan_impl": "kernel", "extra_args": ["--healthz-addr", HEALTHZ]},
        {"vxlan_impl": "user", "datapath": "c", "extra_args": ["--healthz-addr", HEALTHZ]},
    ])
    kernel, user = lab.nodes
    assert lab.ping(kernel.pods[0], user.pods[0].ip)
    m = samples(scrape(lab, kernel, "/metrics")["/metrics"][1])
    device = [name for name, labels in m if name == "overlayd_kernel_device_packets_total"]
    assert device, sorted({name for name, _ in m})
    for direction in ("rx", "tx"):
        labels = (("device", "flannel.1"), ("direction", direction))
        assert m[("overlayd_kernel_device_packets_total", labels)] >= 1, direction
        assert m[("overlayd_kernel_device_bytes_total", labels)] >= 84, direction
    assert not any(name.startswith("overlayd_datapath_packets") for name, _ in m)  # no userspace plane there
    gateway = str(ipaddress.IPv4Network(lab.node_status(user)["subnet"]).network_address + 1)
    res = lab.exec(user.pods[0].netns, ["ping", "-n", "-c1", "-W2", unleased_address(lab)], check=False, timeout=10)
    assert f"From {gateway} icmp_seq=1 Destination Host Unreachable" in res.stdout, res.stdout


def test_a_port_in_use_is_one_line_before_any_lease(make_lab):
    lab = make_lab("udp", nodes=1, pods=0)
    node = lab.nodes[0]
    lab.stop_node(node)
    squatter = subprocess.Popen(  # holds the port in the node's namespace; stopped by PID below
        ["ip", "netns", "exec", node.netns, sys.executable, "-c",
         f"import socket, time; s = socket.socket(); s.bind(('127.0.0.1', {HEALTHZ.split(':')[1]})); "
         "s.listen(); print('bound', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert squatter.stdout.readline().strip() == "bound"
        res = lab.exec(node.netns, [OVERLAYD, "--iface", "eth0", "--healthz-addr", HEALTHZ,
                                    "--subnet-file", "/nonexistent/subnet.env"], check=False, timeout=30)
    finally:
        squatter.kill()
        squatter.wait()
    assert res.returncode == 1, res.stderr
    errors = [l for l in res.stderr.splitlines() if "ERROR" in l]
    assert len(errors) == 1, res.stderr
    assert errors[0].endswith(f"--healthz-addr {HEALTHZ}: cannot listen: Address already in use")
    assert "leased" not in res.stderr and "network 10.244.0.0/16" not in res.stderr  # etcd not even read


def test_systemd_notifications_from_a_lab_node(make_lab, tmp_path):
    lab = make_lab("udp", nodes=2, pods=0)
    node = lab.nodes[0]
    notify_path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(notify_path)
        lab.stop_node(node)
        lab.start_node(node, env={"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "3000000"})
        subnet = lab.node_status(node)["subnet"]
        lines, deadline = [], time.monotonic() + 10
        while sum(l == "WATCHDOG=1" for l in lines) < 3 and time.monotonic() < deadline:
            notify.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                lines += notify.recv(4096).decode().splitlines()
            except TimeoutError:
                break
    assert lines[0] == "READY=1", lines
    assert f"STATUS=leased {subnet}; 1 peer" in lines, lines
    assert sum(l == "WATCHDOG=1" for l in lines) >= 3, lines
