"""VXLAN DirectRouting in the lab: node1 and node2 share the underlay segment, node3 sits behind a router
namespace on 198.19.0.0/24. Peers on the segment get a direct route (host-gw style, no FDB entry, no
neighbour), node3 is encapsulated both ways; every pod reaches every other."""

from __future__ import annotations

import json

import pytest

from overlayd.lab.topology import run

from .tools import BEHIND, ip, put_behind_router, wait_for

pytestmark = [pytest.mark.root, pytest.mark.etcd]

def routes(netns: str) -> dict[str, dict]:
    return {r["dst"]: r for r in json.loads(ip(netns, "-j", "route", "show"))}


def test_direct_routing_on_the_segment_vxlan_across_the_router(make_lab):
    lab = make_lab(backend="vxlan", nodes=0, pods=0)
    lab.overlayctl("config", "set", "-", input=json.dumps({
        "Network": "10.244.0.0/16", "SubnetLen": 24,
        "Backend": {"Type": "vxlan", "VNI": lab.vni, "Port": lab.port, "DirectRouting": True}}))
    router = lab.add_host("router")
    node1, node2 = (lab.add_node(vxlan_impl="kernel", pods=1) for _ in range(2))
    node3 = lab.add_node(vxlan_impl="kernel", extra_args=["--cleanup-on-exit"])
    lab.stop_node(node3)  # lease revoked: it comes back with its address behind the router
    put_behind_router(lab, node3, router)
    lab.start_node(node3)
    lab.add_pod(node3)
    subnet = {n.name: lab.node_status(n)["subnet"] for n in (node1, node2, node3)}
    assert wait_for(lambda: all(len(lab.node_status(n)["peers"]) == 2 for n in (node1, node2, node3)))

    # on the segment: node1 <-> node2 routed directly through eth0, nothing in the VXLAN tables
    for here, there in ((node1, node2), (node2, node1)):
        got = routes(here.netns)[subnet[there.name]]
        assert (got["dev"], got.get("gateway")) == ("eth0", there.ip), got
        assert there.ip not in ip(here.netns, "neigh", "show", "dev", f"flannel.{lab.vni}")
    # across the router: encapsulated, the FDB entry points at the peer's public IP
    fdb = {n.name: run(["bridge", "-n", n.netns, "fdb", "show", "dev", f"flannel.{lab.vni}"]).stdout
           for n in (node1, node2, node3)}
    for here in (node1, node2):
        assert routes(here.netns)[subnet["node3"]]["dev"] == f"flannel.{lab.vni}"
        assert f"dst {BEHIND}.2 " in fdb[here.name] and node1.ip not in fdb[here.name]
    for there in (node1, node2):
        assert routes(node3.netns)[subnet[there.name]]["dev"] == f"flannel.{lab.vni}"
        assert f"dst {there.ip} " in fdb["node3"]
    assert lab.node_status(node1)["stats"]["direct_peers"] == 1

    reached = lab.reachability(tries=5)
    assert all(reached.values()), [pair for pair, ok in reached.items() if not ok]

