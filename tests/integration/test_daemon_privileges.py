"""An overlayd started without CAP_NET_ADMIN stops before it writes to etcd (issue 21, point 1).

The daemon runs as a process with CAP_NET_ADMIN dropped from its bounding set (``setpriv``),
against a real etcd that holds a lease for this node: before, it renewed that lease (a new
etcd lease, TTL 86400) and only then died on "cannot create tun0: Operation not permitted".
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys

import pytest

from overlayd.lab.etcd import free_port
from overlayd.lease.etcd import EtcdStore
from overlayd.lease.model import LeaseAttrs

pytestmark = [pytest.mark.etcd, pytest.mark.root]

SUBNET = ipaddress.IPv4Network("10.244.3.0/24")
PUBLIC_IP = ipaddress.IPv4Address("198.18.0.11")  # published; the underlay is lo


async def _leases(store: EtcdStore) -> tuple[list[tuple], list[float]]:
    """Every lease's key, value, etcd lease id and revision; and their expiry times (whole seconds
    of TTL: they move by up to 1 s between two listings)."""
    listed, _ = await store.list_leases(with_ttl=True)
    return [(str(l.subnet), l.attrs, l.handle, l.revision) for l in listed], [l.expiration for l in listed]


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
async def test_a_start_without_cap_net_admin_leaves_the_lease_alone(etcd_server, etcd_prefix, tmp_path):
    store = EtcdStore(etcd_server.endpoint, etcd_prefix)
    try:
        await store.put_config(json.dumps({"Network": "10.244.0.0/16",
                                           "Backend": {"Type": "udp", "Port": free_port()}}).encode())
        await store.create_lease(SUBNET, LeaseAttrs(PUBLIC_IP, "udp"), 3600)
        before = await _leases(store)
        result = subprocess.run(
            ["setpriv", "--inh-caps=-all", "--bounding-set=-net_admin", "--",
             sys.executable, "-m", "overlayd.cli.daemon", "--etcd-endpoints", etcd_server.endpoint,
             "--etcd-prefix", etcd_prefix, "--iface", "lo", "--public-ip", str(PUBLIC_IP),
             "--subnet-file", str(tmp_path / "subnet.env"),
             "--status-file", str(tmp_path / "status.json")],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        after = await _leases(store)
    finally:
        await store.close()
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "CAP_NET_ADMIN" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert after[0] == before[0]  # same etcd lease, same value, same revision: nothing was written
    assert len(after[1]) == 1 and abs(after[1][0] - before[1][0]) <= 1.5  # not renewed (TTL 3600, was 86400)
    assert not (tmp_path / "subnet.env").exists()
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "failed" and "CAP_NET_ADMIN" in status["error"]
