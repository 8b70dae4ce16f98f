"""scripts/lab's whole cycle as an operator runs it, leaving nothing behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.etcd]

REPO = Path(__file__).resolve().parents[2]


def lab_env(state_dir, prefix) -> dict:
    return dict(os.environ, OVERLAYD_LAB_DIR=str(state_dir), OVERLAYD_LAB_PREFIX=prefix)


def lab(state_dir, prefix, *args, check=True):
    res = subprocess.run([sys.executable, "-m", "overlayd.lab.cli", *args], capture_output=True, text=True,
                         env=lab_env(state_dir, prefix), timeout=300, cwd=REPO)
    if check:
        assert res.returncode == 0, res.stderr + res.stdout
    return res


def _state(pid: int) -> str:
    """The process state letter of ``pid`` (R, S, T stopped, Z zombie), "" when it is gone."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def _running(pid: int) -> bool:
    return _state(pid) not in ("", "Z")


def leftovers(prefix: str, pids: list[int], state_dir: Path) -> list[str]:
    found = [ns for ns in os.listdir("/var/run/netns") if ns.startswith(prefix)] if os.path.isdir("/var/run/netns") else []
    found += [f"pid {pid}" for pid in pids if _running(pid)]
    if state_dir.exists():
        found.append(str(state_dir))
    return found


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def _comm(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/comm").read().strip()
    except OSError:
        return ""


def ctrl_c_during_exec(state_dir, prefix) -> subprocess.CompletedProcess:
    """``scripts/lab exec node1 -- sleep 60`` in a session of its own, then Ctrl-C as a terminal
    sends it: SIGINT to the whole process group, once ``sleep`` runs."""
    proc = subprocess.Popen([sys.executable, "-m", "overlayd.lab.cli", "exec", "node1", "--", "sleep", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=lab_env(state_dir, prefix), start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not any(_comm(c) == "sleep" for c in _children(proc.pid)):
            assert proc.poll() is None and time.monotonic() < deadline, "sleep never started"
            time.sleep(0.05)
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        assert time.monotonic() - started < 5
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_up_add_node_status_exec_down(tmp_path):
    prefix = "c" + uuid.uuid4().hex[:6]
    state = tmp_path / "lab"
    try:
        up = lab(state, prefix, "up", "--nodes", "2", "--pods-per-node", "1")
        assert "2/2 pairs reachable" in up.stdout
        assert "node1" in up.stderr  # progress
        # the demo service: both pods joined through CNI, its ClusterIP answers pods on every node
        shown = re.search(r"service demo: ClusterIP (10\.96\.\d+\.\d+), port 80 -> 8080/tcp, 2/2 endpoints ready",
                          up.stdout)
        assert shown, up.stdout
        vip = shown[1]
        for pod in ("node1-pod1", "node2-pod1"):
            assert re.search(rf"from {pod}: 12/12 answered, by node1-pod1 x\d+, node2-pod1 x\d+$", up.stdout, re.M) \
                or re.search(rf"from {pod}: 12/12 answered, by node\d-pod1 x12$", up.stdout, re.M), up.stdout
        assert f"exec node1-pod1 -- curl -s http://{vip}/" in up.stdout
        curl = lab(state, prefix, "exec", "node2-pod1", "--", "curl", "-s", "--max-time", "5", f"http://{vip}/")
        assert re.fullmatch(r"node[12]-pod1 10\.244\.\d+\.\d+\n", curl.stdout)
        hint = next(l for l in up.stdout.splitlines() if l.startswith("next: "))
        this_lab = f"scripts/lab --state-dir {state} --prefix {prefix}"  # both differ from the defaults
        assert hint == f"next: {this_lab} exec node1 -- overlayctl subnets | {this_lab} status | {this_lab} down"
        added = lab(state, prefix, "add-node")
        assert "6/6 pairs reachable" in added.stdout
        assert "3/3 endpoints ready" in added.stdout and "from node3-pod1: 12/12 answered" in added.stdout

        topo = json.loads(lab(state, prefix, "status", "--json").stdout)
        assert [n["name"] for n in topo["nodes"]] == ["node1", "node2", "node3"]
        assert all(n["pid"] and n["pods"][0]["ip"].startswith("10.244.") for n in topo["nodes"])
        assert topo["etcd"]["endpoint"].startswith("http://198.18.0.2:")
        for node in topo["nodes"]:
            assert node["log"] == str(state / node["name"] / "overlayd.log") and os.path.getsize(node["log"]) > 0
            assert node["status_file"] == str(state / node["name"] / "status.json")

        subnets = lab(state, prefix, "exec", "node1", "--", "overlayctl", "subnets", "--json").stdout
        leases = json.loads(subnets)["leases"]
        assert len(leases) == 3 and sum(l["local"] for l in leases) == 1
        status = lab(state, prefix, "exec", "node2", "--", "overlayctl", "status").stdout
        assert "peers (2)" in status

        interrupted = ctrl_c_during_exec(state, prefix)  # quietly, with the status a shell gives
        assert (interrupted.returncode, interrupted.stdout, interrupted.stderr) == (130, "", "")
        assert lab(state, prefix, "exec", "node1", "--", "sh", "-c", "exit 7", check=False).returncode == 7

        bad = lab(state, prefix, "exec", "node9", "--", "true", check=False)
        assert bad.returncode == 1 and "no node or pod 'node9'" in bad.stderr and "Traceback" not in bad.stderr
        twice = lab(state, prefix, "up", check=False)
        assert twice.returncode == 1 and "already exists" in twice.stderr

        other = lab(state, "other", "down", check=False)  # another lab's name: refused, nothing touched
        assert other.returncode == 1 and f"has prefix {prefix!r}" in other.stderr
        assert json.loads(lab(state, prefix, "status", "--json").stdout)["nodes"][0]["pid"]

        pids = [n["pid"] for n in topo["nodes"]] + [topo["etcd"]["pid"]]
        servers = [p["server_pid"] for n in topo["nodes"] for p in n["pods"]]
        assert len(servers) == 3 and all(_running(pid) for pid in servers)
        pids += servers
        lab(state, prefix, "down")
        assert leftovers(prefix, pids, state) == []
        assert "nothing to do" in lab(state, prefix, "down").stderr
    finally:
        if (state / "lab.json").exists():
            lab(state, prefix, "down", check=False)


def _reaches(state, prefix, src_pod: str, dst_ip: str) -> bool:
    return any(lab(state, prefix, "exec", src_pod, "--", "ping", "-c1", "-W1", "-n", dst_ip, check=False).returncode == 0
               for _ in range(10))


def test_restart_stop_start_kill_pause_nodes_and_etcd(tmp_path):
    """Issue 8 point 15: the lab restarts what it runs, by the PIDs it recorded; leases survive etcd's restart."""
    prefix = "r" + uuid.uuid4().hex[:6]
    state = tmp_path / "lab"
    try:
        lab(state, prefix, "up", "--nodes", "2", "--datapath", "python", "--daemon-args", "--resync-interval 2")
        topo = json.loads(lab(state, prefix, "status", "--json").stdout)
        node2 = topo["nodes"][1]
        assert node2["datapath"] == "python" and node2["extra_args"] == ["--resync-interval", "2"]
        pod1, pod2 = topo["nodes"][0]["pods"][0], node2["pods"][0]
        leases = sorted((l["subnet"], l["public_ip"]) for l in json.loads(
            lab(state, prefix, "exec", "node1", "--", "overlayctl", "subnets", "--json").stdout)["leases"])
        log2 = state / "node2" / "overlayd.log"
        assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d overlayd: ", line)
                   for line in log2.read_text().splitlines())  # node logs carry timestamps

        lab(state, prefix, "restart", "node2")
        pid = json.loads(lab(state, prefix, "status", "--json").stdout)["nodes"][1]["pid"]
        assert pid != node2["pid"] and not _running(node2["pid"])
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        assert b"--resync-interval" in cmdline and b"python" in cmdline  # same flags as at 'up'
        assert log2.read_text().count("; ready") == 2

        etcd_pid, etcd_port = topo["etcd"]["pid"], topo["etcd"]["port"]
        lab(state, prefix, "stop", "etcd")
        assert not _running(etcd_pid)
        assert "etcd is stopped" in lab(state, prefix, "status").stdout
        lab(state, prefix, "start", "etcd")
        etcd = json.loads(lab(state, prefix, "status", "--json").stdout)["etcd"]
        assert etcd["port"] == etcd_port and etcd["pid"] != etcd_pid
        after = sorted((l["subnet"], l["public_ip"]) for l in json.loads(
            lab(state, prefix, "exec", "node1", "--", "overlayctl", "subnets", "--json").stdout)["leases"])
        assert after == leases  # same data directory: the leases survived

        lab(state, prefix, "pause", "etcd")
        assert _state(etcd["pid"]) == "T"
        lab(state, prefix, "resume", "etcd")
        assert _state(etcd["pid"]) != "T"

        lab(state, prefix, "kill", "node2")
        assert not _running(pid)
        assert (state / "node2" / "status.json").exists()  # left as a crash leaves it
        assert json.loads(lab(state, prefix, "status", "--json").stdout)["nodes"][1]["pid"] is None
        lab(state, prefix, "start", "node2")
        assert _reaches(state, prefix, pod1["name"], pod2["ip"]) and _reaches(state, prefix, pod2["name"], pod1["ip"])

        bad = lab(state, prefix, "stop", "node9", check=False)
        assert bad.returncode == 1 and "no node 'node9'" in bad.stderr and "Traceback" not in bad.stderr
        twice = lab(state, prefix, "start", "etcd", check=False)
        assert twice.returncode == 1 and "etcd already runs" in twice.stderr

        pids = [n["pid"] for n in json.loads(lab(state, prefix, "status", "--json").stdout)["nodes"]] + [etcd["pid"]]
        lab(state, prefix, "down")
        assert leftovers(prefix, pids, state) == []
    finally:
        if (state / "lab.json").exists():
            lab(state, prefix, "down", check=False)
