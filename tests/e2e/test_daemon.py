"""The daemon as an operator meets it: waiting for a missing or invalid config
with one log line each, READY sent to systemd only once everything is in
place, a bad --iface or a taken UDP port refused with one line before any
lease, and 'overlayctl status' after a stop or a crash."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from overlayd.lab.topology import run

from .tools import wait_for

pytestmark = [pytest.mark.root, pytest.mark.etcd]


def test_waits_for_config_then_comes_up_and_notifies_systemd(make_lab, tmp_path):
    lab = make_lab("udp", nodes=1)
    lab.etcdctl("put", "/coreos.com/network/config", json.dumps({"Network": "10.244.0.0/16", "SubnetLen": 33}))
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(30)
    try:
        node = lab.add_node(wait=False)
        lab.stop_node(node)
        lab.start_node(node, wait=False, env={"NOTIFY_SOCKET": notify_path})
        log = lambda: open(lab.log_file(node)).read()  # noqa: E731
        assert wait_for(lambda: "SubnetLen" in log(), timeout=15), log()
        lab.etcdctl("del", "/coreos.com/network/config")
        assert wait_for(lambda: "no network config" in log(), timeout=15), log()
        time.sleep(2)  # several retries
        warnings = [l for l in log().splitlines() if "WARNING" in l]
        # one line per new problem, not one per retry: never the same line twice in a row
        assert all(a != b for a, b in zip(warnings, warnings[1:])), warnings
        assert len(warnings) <= 4, warnings
        assert not os.path.exists(lab.subnet_file(node))

        lab.set_config()
        message = notify.recv(4096).decode()
        assert "READY=1" in message
        # READY means ready: subnet.env, the device, the route and the bridge already exist
        assert os.path.exists(lab.subnet_file(node))
        routes = run(["ip", "-n", node.netns, "route"]).stdout
        assert "10.244.0.0/16 dev tun0" in routes and "dev cni0" in routes
        lab.wait_ready(node)
        pod = lab.add_pod(node)
        assert lab.ping(pod, lab.nodes[0].pods[0].ip)
    finally:
        notify.close()


def test_bad_iface_is_one_line_and_exit_1(make_lab):
    lab = make_lab("udp", nodes=1)
    node = lab.nodes[0]
    res = lab.exec(node.netns, [str(Path(sys.executable).parent / "overlayd"), "--iface", "nosuch0", "--subnet-file", "/nonexistent/x"],
                   check=False, timeout=30)
    assert res.returncode == 1
    assert "matches --iface nosuch0" in res.stderr and "Traceback" not in res.stderr
    assert len([l for l in res.stderr.splitlines() if "ERROR" in l]) == 1


def test_host_gw_refuses_an_underlay_without_ethernet(make_lab, tmp_path):
    lab = make_lab("host-gw", nodes=1)
    node = lab.nodes[0]
    # a point-to-point tun as the underlay: no link layer, so no next hop can be routed to
    run(["ip", "-n", node.netns, "tuntap", "add", "mode", "tun", "name", "ovtun0"])
    run(["ip", "-n", node.netns, "addr", "add", "198.51.100.1/24", "dev", "ovtun0"])
    run(["ip", "-n", node.netns, "link", "set", "ovtun0", "up"])
    res = lab.exec(node.netns, [str(Path(sys.executable).parent / "overlayd"), "--iface", "ovtun0",
                                "--subnet-file", str(tmp_path / "subnet.env"),
                                "--status-file", str(tmp_path / "status.json")], check=False, timeout=60)
    assert res.returncode == 1, res.stderr
    assert "host-gw needs an Ethernet underlay; ovtun0 is not one" in res.stderr
    assert "Traceback" not in res.stderr
    leases = json.loads(lab.overlayctl("subnets", "--json").stdout)["leases"]
    assert "198.51.100.1" not in [l["public_ip"] for l in leases]  # refused before taking a lease


HOLD_PORT = ("import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
             "s.bind(('0.0.0.0', 8472)); print('bound', flush=True); time.sleep(120)")


@pytest.mark.parametrize("backend, vxlan_impl, holder", [
    ("udp", "user", "process"),
    ("udp", "user", "kernel vxlan device"),
    ("vxlan", "user", "process"),
    ("vxlan", "kernel", "process"),
])
def test_port_in_use_fails_before_a_lease_and_before_ready(make_lab, tmp_path, backend, vxlan_impl, holder):
    """Issue 8 point 12: UDP 8472 taken -> exit 1 naming the port and its holder, no lease, no READY."""
    lab = make_lab(backend, nodes=0)
    host = lab.add_host("busy")
    squatter = None
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.setblocking(False)
    try:
        if holder == "process":
            squatter = subprocess.Popen(["ip", "netns", "exec", host.netns, sys.executable, "-c", HOLD_PORT],
                                        stdout=subprocess.PIPE, text=True)
            assert squatter.stdout.readline().strip() == "bound"
            expected = f"process {squatter.pid} ("
        else:  # the kernel's socket opens when the device goes up
            run(["ip", "-n", host.netns, "link", "add", "vxbusy", "type", "vxlan", "id", "9",
                 "dstport", "8472", "dev", "eth0", "nolearning"])
            run(["ip", "-n", host.netns, "link", "set", "vxbusy", "up"])
            expected = "the kernel"
        res = run(["ip", "netns", "exec", host.netns, str(Path(sys.executable).parent / "overlayd"),
                   "--iface", "eth0", "--vxlan-impl", vxlan_impl, "--subnet-file", str(tmp_path / "subnet.env"),
                   "--status-file", str(tmp_path / "status.json")],
                  check=False, timeout=60,
                  env=dict(os.environ, **lab.etcd_env(), NOTIFY_SOCKET=str(tmp_path / "notify.sock")))
        assert res.returncode == 1, res.stderr
        with pytest.raises(BlockingIOError):
            notify.recv(4096)  # nothing told systemd anything: not READY
        leases = json.loads(lab.overlayctl("subnets", "--json").stdout)["leases"]
        assert host.ip not in [l["public_ip"] for l in leases], res.stderr  # refused before taking a lease
        assert not (tmp_path / "subnet.env").exists()
        errors = [l for l in res.stderr.splitlines() if "ERROR" in l]
        assert len(errors) == 1 and f"{host.ip}:8472" in errors[0] and expected in errors[0], res.stderr
        assert "Traceback" not in res.stderr
    finally:
        notify.close()
        if squatter is not None:  # only the process this test started
            squatter.kill()
            squatter.wait()


def test_status_tells_a_stopped_or_killed_daemon_from_a_running_one(make_lab):
    """Issue 8 point 13: after SIGTERM 'overlayctl status' exits 3, after SIGKILL 4 once stale."""
    lab = make_lab("udp", nodes=1, pods=0)
    node = lab.nodes[0]

    def status():
        return lab.overlayctl("status", "--status-file", lab.status_file(node), netns=node.netns, check=False)

    assert status().returncode == 0, status().stdout
    lab.stop_node(node)
    stopped = status()
    assert stopped.returncode == 3 and stopped.stdout.startswith("overlayd STOPPED"), stopped.stdout
    log = open(lab.log_file(node)).read()
    assert "SIGTERM: stopping; the lease on 10.244." in log and "is kept for the next start" in log

    lab.start_node(node)
    assert wait_for(lambda: status().returncode == 0, timeout=10), status().stdout
    lab.kill_node(node)
    stale = wait_for(lambda: (r := status()).returncode == 4 and r, timeout=20)  # 5 x 2 s refresh interval
    assert stale and "NOT RESPONDING" in stale.stdout, status().stdout
