"""scripts/lab's whole cycle as an operator runs it, leaving nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.etcd]

REPO = Path(__file__).resolve().parents[2]


def lab(state_dir, prefix, *args, check=True):
    env = dict(os.environ, OVERLAYD_LAB_DIR=str(state_dir), OVERLAYD_LAB_PREFIX=prefix)
    res = subprocess.run([sys.executable, "-m", "overlayd.lab.cli", *args], capture_output=True, text=True,
                         env=env, timeout=300, cwd=REPO)
    if check:
        assert res.returncode == 0, res.stderr + res.stdout
    return res


def leftovers(prefix: str, pids: list[int], state_dir: Path) -> list[str]:
    found = [ns for ns in os.listdir("/var/run/netns") if ns.startswith(prefix)] if os.path.isdir("/var/run/netns") else []
    found += [f"pid {pid}" for pid in pids if os.path.exists(f"/proc/{pid}") and
              "Z" != open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]]
    if state_dir.exists():
        found.append(str(state_dir))
    return found


def test_up_add_node_status_exec_down(tmp_path):
    prefix = "c" + uuid.uuid4().hex[:6]
    state = tmp_path / "lab"
    try:
        up = lab(state, prefix, "up", "--nodes", "2", "--pods-per-node", "1")
        assert "2/2 pairs reachable" in up.stdout
        assert "node1" in up.stderr  # progress
        added = lab(state, prefix, "add-node")
        assert "6/6 pairs reachable" in added.stdout

        topo = json.loads(lab(state, prefix, "status", "--json").stdout)
        assert [n["name"] for n in topo["nodes"]] == ["node1", "node2", "node3"]
        assert all(n["pid"] and n["pods"][0]["ip"].startswith("10.244.") for n in topo["nodes"])
        assert topo["etcd"]["endpoint"].startswith("http://198.18.0.2:")

        subnets = lab(state, prefix, "exec", "node1", "--", "overlayctl", "subnets", "--json").stdout
        leases = json.loads(subnets)
        assert len(leases) == 3 and sum(l["local"] for l in leases) == 1
        status = lab(state, prefix, "exec", "node2", "--", "overlayctl", "status").stdout
        assert "peers (2)" in status

        bad = lab(state, prefix, "exec", "node9", "--", "true", check=False)
        assert bad.returncode == 1 and "no node or pod 'node9'" in bad.stderr and "Traceback" not in bad.stderr
        twice = lab(state, prefix, "up", check=False)
        assert twice.returncode == 1 and "already exists" in twice.stderr

        other = lab(state, "other", "down", check=False)  # another lab's name: refused, nothing touched
        assert other.returncode == 1 and f"has prefix {prefix!r}" in other.stderr
        assert json.loads(lab(state, prefix, "status", "--json").stdout)["nodes"][0]["pid"]

        pids = [n["pid"] for n in topo["nodes"]] + [topo["etcd"]["pid"]]
        lab(state, prefix, "down")
        assert leftovers(prefix, pids, state) == []
        assert "nothing to do" in lab(state, prefix, "down").stderr
    finally:
        if (state / "lab.json").exists():
            lab(state, prefix, "down", check=False)
