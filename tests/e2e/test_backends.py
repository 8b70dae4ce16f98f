"""Every backend end to end in a netns lab: the full pod matrix, a 10 MB TCP
transfer, a node joining live, and peers leaving (lease deleted by an
operator, lease expired after a clean stop) with their routes, neighbours
and FDB entries gone from the other nodes."""

from __future__ import annotations

import json

import pytest

from overlayd.lab.topology import run

from .tools import free_subnet, tcp_transfer, wait_for

pytestmark = [pytest.mark.root, pytest.mark.etcd]

BACKENDS = {
    # name: (Backend.Type, per-node variants)
    # the Python data path (asyncio, uvloop) and the C fast path, side by side in one cluster
    "udp": ("udp", [{"datapath": "python"}, {"datapath": "python", "event_loop": "uvloop"}, {"datapath": "c"}]),
    "vxlan-user": ("vxlan", [{"vxlan_impl": "user", "datapath": "c"}, {"vxlan_impl": "user", "datapath": "c"},
                            {"vxlan_impl": "user", "datapath": "python"}]),
    "vxlan-kernel": ("vxlan", [{"vxlan_impl": "kernel"}] * 3),
    "host-gw": ("host-gw", [{}] * 3),
}
LEASE_TTL = 6  # short, so an expired lease goes within seconds (and renewal runs every 2 s)


def subnet_of(lab, node) -> str:
    return lab.node_status(node)["subnet"]


def peers_of(lab, node) -> list[str]:
    return lab.node_status(node)["peers"]


def kernel_state(lab, node, subnet: str) -> str:
    """Routes, neighbours and FDB entries on ``node`` that mention ``subnet``'s peer."""
    prefix = subnet.rsplit(".", 1)[0] + "."
    out = []
    out += [l for l in run(["ip", "-n", node.netns, "route"]).stdout.splitlines() if prefix in l]
    out += [l for l in run(["ip", "-n", node.netns, "neigh"]).stdout.splitlines() if prefix in l]
    return "\n".join(out)


def fdb(lab, node) -> str:
    return run(["bridge", "-n", node.netns, "fdb", "show", "dev", "flannel.1"], check=False).stdout


@pytest.mark.parametrize("name", list(BACKENDS))
def test_backend_end_to_end(make_lab, tmp_path, name):
    btype, variants = BACKENDS[name]
    lab = make_lab(btype, nodes=3, variants=variants, lease_ttl=LEASE_TTL)
    node1, node2, node3 = lab.nodes

    matrix = lab.reachability()
    assert all(matrix.values()), {k: v for k, v in matrix.items() if not v}

    sent, received = tcp_transfer(lab, node1.pods[0], node2.pods[0], tmp_path)
    assert sent == received

    # a node that joins while the others run is reachable, both ways, without restarts
    node4 = lab.add_node(**variants[0], pods=1)
    for other in (node1, node2, node3):
        assert lab.ping(other.pods[0], node4.pods[0].ip), other.name
        assert lab.ping(node4.pods[0], other.pods[0].ip), other.name

    # an operator deletes node4's lease: the others forget it
    gone = subnet_of(lab, node4)
    lab.stop_node(node4)
    lab.etcdctl("del", f"/coreos.com/network/subnets/{gone.replace('/', '-')}")
    assert wait_for(lambda: all(gone not in peers_of(lab, n) for n in (node1, node2, node3))), \
        [peers_of(lab, n) for n in (node1, node2, node3)]

    # node3 stops cleanly: its lease stays (as flannel's), then expires, and the others forget it
    expiring = subnet_of(lab, node3)
    mac3 = next((l["vtep_mac"] for l in json.loads(lab.overlayctl("subnets", "--json").stdout)["leases"]
                 if l["subnet"] == expiring), None)
    lab.stop_node(node3)
    listed = [l["subnet"] for l in json.loads(lab.overlayctl("subnets", "--json").stdout)["leases"]]
    assert expiring in listed
    assert wait_for(lambda: all(expiring not in peers_of(lab, n) for n in (node1, node2)), timeout=LEASE_TTL + 15)
    assert wait_for(lambda: not kernel_state(lab, node1, expiring)), kernel_state(lab, node1, expiring)
    if name == "vxlan-kernel":
        assert mac3 and mac3 not in fdb(lab, node1)
        assert node2.ip in fdb(lab, node1)  # the remaining peer's entry is still there

    # the survivors still reach each other
    assert lab.ping(node1.pods[0], node2.pods[0].ip) and lab.ping(node2.pods[0], node1.pods[0].ip)


def test_restart_gets_the_same_subnet_back(make_lab):
    lab = make_lab("udp", nodes=2)
    node1, node2 = lab.nodes
    before = subnet_of(lab, node1)
    lab.stop_node(node1)
    lab.start_node(node1)
    assert subnet_of(lab, node1) == before
    assert lab.ping(node2.pods[0], node1.pods[0].ip)


def test_host_gw_skips_a_peer_off_the_segment_and_counts_it(make_lab):
    lab = make_lab("host-gw", nodes=2)
    node1, node2 = lab.nodes
    # a peer on another L2 segment (192.0.2.0/24 is not on this underlay): no route can reach it
    far = free_subnet(lab)
    lab.etcdctl("put", f"/coreos.com/network/subnets/{far.network_address}-24",
                json.dumps({"PublicIP": "192.0.2.50", "BackendType": "host-gw"}))
    for node in (node1, node2):
        assert wait_for(lambda: lab.node_status(node)["stats"]["skipped_peers"] == 1), lab.node_status(node)
        assert str(far) not in lab.node_status(node)["peers"]
        assert "skipped" in open(lab.log_file(node)).read()
    assert lab.ping(node1.pods[0], node2.pods[0].ip) and lab.ping(node2.pods[0], node1.pods[0].ip)


@pytest.mark.parametrize("name", ["vxlan-kernel", "host-gw"])
def test_restart_forgets_peers_that_left_while_down(make_lab, name):
    btype, variants = BACKENDS[name]
    lab = make_lab(btype, nodes=3, variants=variants)
    node1, node2, node3 = lab.nodes
    gone = subnet_of(lab, node3)
    assert kernel_state(lab, node1, gone)  # node1 routes to node3 now
    lab.stop_node(node1)
    lab.stop_node(node3)
    lab.etcdctl("del", f"/coreos.com/network/subnets/{gone.replace('/', '-')}")
    lab.start_node(node1)
    assert wait_for(lambda: subnet_of(lab, node2) in peers_of(lab, node1))
    assert kernel_state(lab, node1, gone) == ""
    if name == "vxlan-kernel":
        assert node3.ip not in fdb(lab, node1) and node2.ip in fdb(lab, node1)
    assert lab.ping(node1.pods[0], node2.pods[0].ip)
