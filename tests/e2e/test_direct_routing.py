"""VXLAN DirectRouting in the lab: node1 and node2 share the underlay segment, node3 sits behind a router
namespace on 198.19.0.0/24. Peers on the segment get a direct route (host-gw style: for a kernel node no
FDB entry or neighbour, for a userspace node no packet through its tap), node3 is encapsulated both ways;
every pod reaches every other. Run with kernel nodes, userspace nodes, and mixed (a kernel node and a
userspace node routing directly to each other, each encapsulating to node3)."""

from __future__ import annotations

import json

import pytest

from overlayd.lab.topology import run

from .tools import BEHIND, ip, put_behind_router, wait_for

pytestmark = [pytest.mark.root, pytest.mark.etcd]


def routes(netns: str) -> dict[str, dict]:
    return {r["dst"]: r for r in json.loads(ip(netns, "-j", "route", "show"))}


def route_dev(netns: str, dst: str) -> str:
    """The device the kernel sends ``dst`` through (``ip route get``)."""
    return json.loads(ip(netns, "-j", "route", "get", dst))[0]["dev"]


def tap_packets(netns: str) -> tuple[int, int]:
    """Packets the kernel handed to the userspace data plane's tap (tx) and got from it (rx)."""
    stats = json.loads(ip(netns, "-j", "-s", "link", "show", "overlay0"))[0]["stats64"]
    return stats["tx"]["packets"], stats["rx"]["packets"]


def pings(lab, src, dst_ip: str, count: int = 20) -> bool:
    """``count`` echoes from pod ``src`` to ``dst_ip`` (bounded: 1 s wait each); whether all came back."""
    res = run(["ip", "netns", "exec", src.netns, "ping", "-n", "-q", "-c", str(count), "-i", "0.05", "-W", "1",
               dst_ip], check=False, timeout=30)
    return res.returncode == 0 and f"{count} received" in res.stdout


@pytest.mark.parametrize("impls", [("kernel",) * 3, ("user",) * 3, ("kernel", "user", "kernel")],
                         ids=["kernel", "user", "mixed"])
def test_direct_routing_on_the_segment_vxlan_across_the_router(make_lab, impls):
    lab = make_lab(backend="vxlan", nodes=0, pods=0)
    lab.overlayctl("config", "set", "-", input=json.dumps({
        "Network": "10.244.0.0/16", "SubnetLen": 24,
        "Backend": {"Type": "vxlan", "VNI": lab.vni, "Port": lab.port, "DirectRouting": True}}))
    router = lab.add_host("router")
    node1, node2 = (lab.add_node(vxlan_impl=impl, pods=1) for impl in impls[:2])
    node3 = lab.add_node(vxlan_impl=impls[2], extra_args=["--cleanup-on-exit"])
    lab.stop_node(node3)  # lease revoked: it comes back with its address behind the router
    put_behind_router(lab, node3, router)
    lab.start_node(node3)
    lab.add_pod(node3)
    subnet = {n.name: lab.node_status(n)["subnet"] for n in (node1, node2, node3)}
    assert wait_for(lambda: all(len(lab.node_status(n)["peers"]) == 2 for n in (node1, node2, node3)))
    vxlan = f"flannel.{lab.vni}"
    pod = {n.name: n.pods[0] for n in (node1, node2, node3)}

    # on the segment: node1 <-> node2 routed directly through eth0, nothing in the VXLAN tables
    for here, there in ((node1, node2), (node2, node1)):
        got = routes(here.netns)[subnet[there.name]]
        assert (got["dev"], got.get("gateway")) == ("eth0", there.ip), got
        if here.vxlan_impl == "kernel":
            assert there.ip not in ip(here.netns, "neigh", "show", "dev", vxlan)
        assert lab.node_status(here)["stats"]["direct_peers"] == 1
    # across the router: encapsulated; a kernel node's FDB entry points at the peer's public IP, a
    # userspace node sends through its tap (the Network's route, no peer route)
    fdb = {n.name: run(["bridge", "-n", n.netns, "fdb", "show", "dev", vxlan]).stdout
           for n in (node1, node2, node3) if n.vxlan_impl == "kernel"}
    encapsulated = {"kernel": vxlan, "user": "overlay0"}
    for here, there in ((node1, node3), (node2, node3), (node3, node1), (node3, node2)):
        assert route_dev(here.netns, pod[there.name].ip) == encapsulated[here.vxlan_impl]
        if here.vxlan_impl == "kernel":
            assert f"dst {BEHIND + '.2' if there is node3 else there.ip} " in fdb[here.name]
            assert here is node3 or node1.ip not in fdb[here.name]

    # a userspace node's direct traffic never crosses its tap (both ways), its encapsulated traffic does
    for here, there in ((node1, node2), (node2, node1)):
        if here.vxlan_impl != "user":
            continue
        before = tap_packets(here.netns)
        assert pings(lab, pod[here.name], pod[there.name].ip) and pings(lab, pod[there.name], pod[here.name].ip)
        assert tap_packets(here.netns) == before
        assert pings(lab, pod[here.name], pod["node3"].ip, count=5)
        after = tap_packets(here.netns)
        assert after[0] >= before[0] + 5 and after[1] >= before[1] + 5, (before, after)

    reached = lab.reachability(tries=5)
    assert all(reached.values()), [pair for pair, ok in reached.items() if not ok]
