"""``scripts/lab up --ip-family`` (issue 17 point 5) against a real kernel and etcd: the underlay's
IPv6 addresses (2001:db8::/64 on the same bridge, nothing routed out), the dual-stack or IPv6-only
network config in etcd, and the IPv4 lab unchanged. Pods and the ping matrix in IPv6 wait for the
daemon to accept IPv6 configs (the coordinator's wiring): the daemons are started without waiting."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from overlayd.lab.topology import Lab, network_config
from overlayd.netconf import parse_config

from .tools import ip

pytestmark = [pytest.mark.root, pytest.mark.etcd]


@pytest.fixture
def bare_lab(tmp_path):
    """``bare_lab(ip_family)`` -> a Lab with its underlay, etcd and network config, no node yet."""
    labs: list[Lab] = []

    def make(ip_family: str, backend: str = "vxlan") -> Lab:
        prefix = "f" + uuid.uuid4().hex[:6]
        lab = Lab(str(tmp_path / prefix), prefix, backend=backend, ip_family=ip_family)
        labs.append(lab)
        lab.up(nodes=0)
        return lab

    yield make
    for lab in labs:
        lab.down()
        assert not lab.leftover_processes()


def _addresses(netns: str, version: int) -> list[str]:
    shown = json.loads(ip(netns, "-j", f"-{version}", "addr", "show", "dev", "eth0"))
    return [f"{a['local']}/{a['prefixlen']}" for a in shown[0]["addr_info"] if a.get("scope") == "global"]


def _pings(lab: Lab, netns: str, address: str) -> bool:
    return lab.exec(netns, ["ping", "-6", "-c1", "-W2", "-n", address], check=False).returncode == 0


@pytest.mark.parametrize("family", ["dual", "ipv6"])
def test_ipv6_underlay_and_config(bare_lab, family):
    lab = bare_lab(family)
    node = lab.add_node(wait=False)
    host = lab.add_host("outside")
    assert (node.ip, node.ip6, host.ip6) == ("198.18.0.11", "2001:db8::11", "2001:db8::201")
    assert _addresses(node.netns, 6) == ["2001:db8::11/64"] and _addresses(node.netns, 4) == ["198.18.0.11/24"]
    assert _addresses(lab.etcd_ns, 6) == ["2001:db8::2/64"]
    assert _pings(lab, node.netns, "2001:db8::2") and _pings(lab, host.netns, node.ip6)  # one bridge, both families
    for netns in (node.netns, host.netns, lab.etcd_ns):
        assert ip(netns, "-6", "route", "show", "default").strip() == ""  # nothing routed out of the lab
    assert not _pings(lab, node.netns, "2001:db8:1::1")  # off the lab's /64: unreachable

    stored = json.loads(lab.etcdctl("get", "--print-value-only", "/coreos.com/network/config").stdout)
    assert stored == network_config("vxlan", lab.network, lab.vni, lab.port, family)
    config = parse_config(stored)
    assert str(config.ipv6.network) == "fd00:10:244::/56" and (config.ipv4 is None) is (family == "ipv6")

    saved = Lab.load(lab.state_dir)  # what 'scripts/lab status' and 'down' see
    assert saved.ip_family == family and saved.nodes[0].ip6 == node.ip6 and saved.hosts[0].ip6 == host.ip6
    assert saved.to_dict()["underlay"]["network6"] == "2001:db8::/64"


def test_ipv4_lab_has_no_ipv6_underlay(bare_lab):
    lab = bare_lab("ipv4", backend="udp")
    node = lab.add_node(wait=False)
    assert node.ip6 == "" and _addresses(node.netns, 6) == []
    stored = json.loads(lab.etcdctl("get", "--print-value-only", "/coreos.com/network/config").stdout)
    assert stored == {"Network": "10.244.0.0/16", "SubnetLen": 24, "ServiceNetwork": "10.96.0.0/16",
                      "Backend": {"Type": "udp", "Port": 8472}}
    assert Lab.load(lab.state_dir).to_dict()["underlay"]["network6"] is None


@pytest.mark.parametrize("family", ["dual", "ipv6"])
# wireguard's other modes (one device for both families) are in tests/integration/test_wireguard.py
@pytest.mark.parametrize("backend, impl", [("udp", "user"), ("vxlan", "user"), ("vxlan", "kernel"), ("host-gw", "user"),
                                           ("wireguard", "user")])
def test_lab_up_pings_each_family(tmp_path, family, backend, impl):
    """``scripts/lab up --ip-family`` as an operator runs it: every pod reaches every other pod in each
    family of the network, on every backend (issue 17's done-when)."""
    prefix = "m" + uuid.uuid4().hex[:6]
    state = tmp_path / "lab"
    argv = [sys.executable, "-m", "overlayd.lab.cli", "--state-dir", str(state), "--prefix", prefix]
    try:
        up = subprocess.run([*argv, "up", "--nodes", "2", "--backend", backend, "--vxlan-impl", impl,
                             "--ip-family", family], capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, up.stderr + up.stdout
        assert ("2/2 IPv4 pairs reachable" in up.stdout) is (family == "dual")
        assert "2/2 IPv6 pairs reachable" in up.stdout
        topo = json.loads(subprocess.run([*argv, "status", "--json"], capture_output=True, text=True,
                                         timeout=60, check=True).stdout)
        pods = [p for n in topo["nodes"] for p in n["pods"]]
        assert all(p["ip6"].startswith("fd00:10:244:") for p in pods)
        assert all(bool(p["ip"]) is (family == "dual") for p in pods)
    finally:
        if (state / "lab.json").exists():
            subprocess.run([*argv, "down"], capture_output=True, timeout=120)
