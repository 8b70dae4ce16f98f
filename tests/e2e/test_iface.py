"""Interface selection against a real kernel: Netlink.underlay in a namespace of our own with three
interfaces, a default route and a route through a gateway (the flags' rules are unit-tested in
tests/unit/test_iface.py; here: that the kernel is read right, 'ip route get' included); and a lab
node behind a NAT router with --public-ip."""

from __future__ import annotations

import json
import sys
import uuid

import pytest

from overlayd.lab.topology import run

from .tools import BEHIND, ip, put_behind_router, wait_for

pytestmark = [pytest.mark.root]

PROBE = """
import asyncio, json, sys
from overlayd.errors import ConfigError
from overlayd.plumbing.netlink import Netlink

async def main():
    out = []
    async with Netlink() as nl:
        for flags in json.loads(sys.argv[1]):
            try:
                c = await nl.underlay(tuple(flags.pop("ifaces", ())), flags.pop("public_ip", None),
                                      regexes=tuple(flags.pop("regexes", ())), **flags)
                out.append([c.iface, str(c.address), str(c.public_ip), c.mtu])
            except ConfigError as exc:
                out.append(str(exc))
    print(json.dumps(out))

asyncio.run(main())
"""


@pytest.fixture
def node_ns():
    """A namespace (veths, their peers inside too, without addresses): up0 198.18.0.11/24 + .99 (default route via .1), side0 192.0.2.7/24 MTU 9000 with
    198.19.128.0/17 via 192.0.2.1, empty0 with no address."""
    ns = "ifc" + uuid.uuid4().hex[:6]
    run(["ip", "netns", "add", ns])
    try:
        for cmd in (["link", "add", "up0", "type", "veth", "peer", "up0p"],
                    ["link", "add", "side0", "mtu", "9000", "type", "veth", "peer", "side0p", "mtu", "9000"],
                    ["link", "add", "empty0", "type", "veth", "peer", "empty0p"],
                    *(["link", "set", peer, "up"] for peer in ("up0p", "side0p", "empty0p")),
                    ["addr", "add", "198.18.0.11/24", "dev", "up0"], ["addr", "add", "198.18.0.99/24", "dev", "up0"],
                    ["addr", "add", "192.0.2.7/24", "dev", "side0"],
                    ["link", "set", "up0", "up"], ["link", "set", "side0", "up"], ["link", "set", "empty0", "up"],
                    ["route", "add", "default", "via", "198.18.0.1"],
                    ["route", "add", "198.19.128.0/17", "via", "192.0.2.1"]):
            run(["ip", "-n", ns, *cmd])
        yield ns
    finally:
        run(["ip", "netns", "del", ns], check=False)


CASES = [
    ({}, ["up0", "198.18.0.11", "198.18.0.11", 1500]),
    ({"public_ip": "192.0.2.7"}, ["side0", "192.0.2.7", "192.0.2.7", 9000]),
    ({"ifaces": ["empty0", "side0"]}, ["side0", "192.0.2.7", "192.0.2.7", 9000]),
    ({"ifaces": ["198.18.0.99"]}, ["up0", "198.18.0.99", "198.18.0.99", 1500]),
    ({"ifaces": ["side0"], "public_ip": "198.19.0.40"}, ["side0", "192.0.2.7", "198.19.0.40", 9000]),
    ({"regexes": [r"^192\.0\."]}, ["side0", "192.0.2.7", "192.0.2.7", 9000]),
    ({"regexes": ["^emp", "^up"]}, ["up0", "198.18.0.11", "198.18.0.11", 1500]),
    ({"can_reach": "198.19.200.1"}, ["side0", "192.0.2.7", "192.0.2.7", 9000]),
    ({"can_reach": "198.18.0.50"}, ["up0", "198.18.0.11", "198.18.0.11", 1500]),
    ({"ifaces": ["eth0"]}, "no interface with an IPv4 address matches --iface eth0 (interfaces: "),
]


def test_underlay_selection_reads_the_kernel(node_ns):
    flags = [dict(f) for f, _ in CASES]
    proc = run(["ip", "netns", "exec", node_ns, sys.executable, "-c", PROBE, json.dumps(flags)], timeout=30)
    got = json.loads(proc.stdout)
    for (f, expected), answer in zip(CASES, got):
        if isinstance(expected, str):
            assert isinstance(answer, str) and answer.startswith(expected), (f, answer)
        else:
            assert answer == expected, f



@pytest.mark.etcd
@pytest.mark.parametrize("backend", ["vxlan", "udp"])
def test_public_ip_behind_nat(make_lab, backend):
    """node2 sits behind a NAT router and publishes the router's address (--public-ip): node1 sends to
    the router, which forwards UDP to node2; node2's tunnel keeps its own address as local end (the
    kernel VXLAN device's ``local``; the UDP backend's socket binds it, it cannot bind the router's)."""
    lab = make_lab(backend=backend, nodes=0, pods=0)
    router = lab.add_host("router")
    node1 = lab.add_node(vxlan_impl="kernel", pods=1)
    node2 = lab.add_node(vxlan_impl="kernel", extra_args=["--cleanup-on-exit"])
    lab.stop_node(node2)  # lease revoked: it comes back with its address behind the router
    put_behind_router(lab, node2, router, nat=True)
    node2.extra_args += ["--public-ip", router.ip]
    lab.start_node(node2)
    lab.add_pod(node2)
    assert wait_for(lambda: lab.node_status(node1)["peers"] and lab.node_status(node2)["peers"])

    assert lab.node_status(node2)["public_ip"] == router.ip
    if backend == "vxlan":
        assert f"local {BEHIND}.2 " in ip(node2.netns, "-d", "link", "show", f"flannel.{lab.vni}")
        fdb = run(["bridge", "-n", node1.netns, "fdb", "show", "dev", f"flannel.{lab.vni}"]).stdout
        assert f"dst {router.ip} " in fdb
    reached = lab.reachability(tries=5)
    assert all(reached.values()), [pair for pair, ok in reached.items() if not ok]
