"""Issue 9 point 2 in the lab: daemons on a 3-member etcd cluster over TLS with
client certificates (``Lab(etcd_members=3, etcd_tls=True)``).

One lab serves the whole story, to keep wall time short: traffic over TLS, a
daemon and an overlayctl without a client certificate refused in one line,
then the member the daemons talk to is frozen for ~30 s (SIGSTOP) and killed
(SIGKILL) while a short lease TTL makes any missed renewal show.
"""

from __future__ import annotations

import base64
import json
import signal
import time

import pytest

from overlayd.lab.topology import Lab, _alive

from .tools import wait_for

pytestmark = [pytest.mark.root, pytest.mark.etcd]

PREFIX = "/coreos.com/network"
TTL = 12  # seconds: renewed 4 s before expiry, so a renewal stuck on the frozen member would lose it
NO_CLIENT_CERT = ["--etcd-certfile", "", "--etcd-keyfile", ""]  # the lab's CA only


def log_of(lab: Lab, node) -> str:
    with open(lab.log_file(node), encoding="utf-8", errors="replace") as f:
        return f.read()


def peers_everywhere(lab: Lab, nodes, subnets) -> bool:
    """Whether every node in ``nodes`` has every other subnet of ``subnets`` as a peer."""
    return all(set(subnets) - {lab.node_status(n)["subnet"]} <= set(lab.node_status(n)["peers"])
               for n in nodes)


def etcd_leases(lab: Lab, member: int) -> tuple[dict[str, int], set[int]]:
    """``({subnet key: etcd lease ID}, {every etcd lease ID})`` as etcdctl on ``member`` sees them."""
    out = json.loads(lab.etcdctl("get", "--prefix", f"{PREFIX}/subnets/", "-w", "json", member=member).stdout)
    keys = {base64.b64decode(kv["key"]).decode(): int(kv.get("lease", 0)) for kv in out.get("kvs", [])}
    listed = lab.etcdctl("lease", "list", member=member).stdout.split()[3:]  # "found N leases", hex IDs
    return keys, {int(h, 16) for h in listed}


def test_daemons_ride_out_a_hung_then_dead_etcd_member_over_tls(make_lab):
    lab = make_lab("udp", nodes=2, pods=1, lease_ttl=TTL, etcd_members=3, etcd_tls=True)
    node1, node2 = lab.nodes
    assert all(lab.reachability(tries=5).values()), "no traffic over the TLS-configured lab"

    # without a client certificate: one clear line, logged once, the daemon waits (no lease, no traceback)
    bare = lab.add_node(extra_args=NO_CLIENT_CERT, wait=False)
    line = wait_for(lambda: [l for l in log_of(lab, bare).splitlines() if "client certificate" in l], timeout=15)
    assert len(line) == 1 and "etcd TLS handshake failed" in line[0] and "--etcd-certfile" in line[0], line
    assert "Traceback" not in log_of(lab, bare) and _alive(bare.pid)
    res = lab.exec(node1.netns, ["overlayctl", "--timeout", "2", *NO_CLIENT_CERT, "subnets"], check=False)
    assert res.returncode != 0 and res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1 and "etcd refused our client certificate" in res.stderr
    lab.stop_node(bare)

    # freeze the member both daemons talk to
    used = [lab.etcd_members_used(n) for n in (node1, node2)]
    assert len(used[0]) == 1 and used[0] == used[1], used
    hung = used[0].pop()
    live = (hung + 1) % 3
    before = {n.name: lab.node_status(n)["subnet"] for n in (node1, node2)}
    keys_before, _ = etcd_leases(lab, live)
    frozen_at = time.monotonic()
    lab.pause_etcd(member=hung)
    try:
        # both daemons move to live members, the watch channel included
        assert wait_for(lambda: all(lab.etcd_members_used(n) and hung not in lab.etcd_members_used(n)
                                    for n in (node1, node2)), timeout=20), \
            [lab.etcd_members_used(n) for n in (node1, node2)]
        # a node joins during the failure; an operator adds a lease for a flannel node meanwhile
        node3 = lab.add_node(pods=1)
        lease_id = lab.etcdctl("lease", "grant", "120", member=live).stdout.split()[1]
        taken = {lab.node_status(n)["subnet"] for n in lab.nodes if n.pid}
        flannel = next(f"10.244.{i}.0/24" for i in range(250, 256) if f"10.244.{i}.0/24" not in taken)
        lab.etcdctl("put", f"--lease={lease_id}", f"{PREFIX}/subnets/{flannel.replace('/', '-')}",
                    json.dumps({"PublicIP": "198.18.0.99", "BackendType": "udp"}), member=live)
        subnets = sorted(taken) + [flannel]
        assert wait_for(lambda: peers_everywhere(lab, (node1, node2, node3), subnets), timeout=15), \
            {n.name: lab.node_status(n)["peers"] for n in (node1, node2, node3)}
        time.sleep(max(0.0, 30 - (time.monotonic() - frozen_at)))  # ~30 s frozen: 2.5 TTLs
    finally:
        lab.stop_etcd(signal.SIGKILL, member=hung)

    # renewals went on: same subnets, the same etcd leases, nothing re-acquired
    assert {n.name: lab.node_status(n)["subnet"] for n in (node1, node2)} == before
    keys, granted = etcd_leases(lab, live)
    assert {k: v for k, v in keys.items() if k in keys_before} == keys_before
    for node in (node1, node2):
        log = log_of(lab, node)
        assert "re-acquiring" not in log and "has expired" not in log, log
        assert f"etcd: now using {lab.etcd_member_endpoint(hung)}" not in log
        assert "etcd: now using" in log and "the watch moves to" in log, log
        assert "etcd unreachable" not in log, log  # one member hung: etcd itself answered throughout
    # after the kill: still everyone sees everyone and traffic flows
    assert peers_everywhere(lab, (node1, node2, node3), subnets)
    assert all(lab.reachability(tries=5).values())
    # no lease duplicated (one key per node) or orphaned (a grant without a key)
    assert len(keys) == 4 and len(set(keys.values())) == 4 and 0 not in keys.values(), keys
    assert granted == set(keys.values()), (granted, keys)
    assert all(_alive(n.pid) for n in (node1, node2, node3))
