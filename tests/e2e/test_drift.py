"""Drift repair (issue 8, point 14): kernel state overlayd owns, removed by hand, is back
within the resync period and traffic flows again; state that is right is never rewritten."""

from __future__ import annotations

import subprocess
import time

import pytest

from overlayd.lab.topology import Lab, Node, run

from .tools import wait_for

pytestmark = [pytest.mark.root, pytest.mark.etcd]

# a check every second if the kernel reported a change, and no check without one: a repair shows the
# change notice was heard (overlayd.plumbing.kernelwatch)
RESYNC = ["--resync-interval", "1", "--full-resync-interval", "3600"]


def sh(node: Node, *argv: str) -> str:
    return run(["ip", "netns", "exec", node.netns, *argv]).stdout


def repaired(lab: Lab, node: Node) -> list[str]:
    with open(lab.log_file(node), encoding="utf-8") as f:
        return [line.split("repaired: ", 1)[1].strip() for line in f if "repaired: " in line]


def assert_repaired(lab: Lab, node: Node, check, expected: list[str]) -> None:
    """``check()`` turns true within 10 periods, the log names each repair, and pods talk again."""
    assert wait_for(check, timeout=10), repaired(lab, node)
    assert wait_for(lambda: all(e in repaired(lab, node) for e in expected), timeout=5), repaired(lab, node)
    a, b = lab.nodes[0].pods[0], lab.nodes[1].pods[0]
    assert lab.ping(a, b.ip) and lab.ping(b, a.ip)


def two_nodes(make_lab, backend: str, impl: str = "user") -> Lab:
    return make_lab(backend, nodes=2, variants=[{"vxlan_impl": impl, "extra_args": RESYNC}] * 2)


@pytest.mark.parametrize("backend,impl,device", [("udp", "user", "tun0"), ("vxlan", "user", "overlay0")])
def test_userspace_network_route_cni0_address_and_nft_table_come_back(make_lab, backend, impl, device):
    lab = two_nodes(make_lab, backend, impl)
    node = lab.nodes[0]
    subnet = lab.node_status(node)["subnet"]
    gateway = subnet.replace(".0/", ".1/")
    sh(node, "ip", "route", "del", "10.244.0.0/16", "dev", device)
    sh(node, "ip", "addr", "del", gateway, "dev", "cni0")
    sh(node, "nft", "delete", "table", "ip", "overlayd")
    assert_repaired(lab, node, lambda: (
        f"10.244.0.0/16 dev {device}" in sh(node, "ip", "route")
        and gateway in sh(node, "ip", "addr", "show", "cni0")
        and "ip saddr 10.244.0.0/16 accept" in subprocess.run(
            ["ip", "netns", "exec", node.netns, "nft", "list", "table", "ip", "overlayd"],
            capture_output=True, text=True).stdout), [
        f"route 10.244.0.0/16 dev {device} was missing",
        f"address {gateway} on cni0 was missing",
        "nft table ip overlayd was missing",
    ])

    sh(node, "nft", "flush", "table", "ip", "overlayd")  # chains emptied: the table differs
    assert wait_for(lambda: "nft table ip overlayd was different" in repaired(lab, node), timeout=10)


def test_kernel_vxlan_peer_fdb_neighbour_and_route_come_back(make_lab):
    lab = two_nodes(make_lab, "vxlan", "kernel")
    node, peer = lab.nodes
    peer_subnet = lab.node_status(peer)["subnet"]
    peer_gw = peer_subnet.split("/")[0]
    fdb = lambda: [l for l in sh(node, "bridge", "fdb", "show", "dev", "flannel.1").splitlines()  # noqa: E731
                   if f"dst {peer.ip}" in l]
    mac = fdb()[0].split()[0]
    sh(node, "bridge", "fdb", "del", mac, "dev", "flannel.1", "dst", peer.ip)
    sh(node, "ip", "neigh", "del", peer_gw, "dev", "flannel.1")
    sh(node, "ip", "route", "del", peer_subnet, "dev", "flannel.1")
    assert_repaired(lab, node, lambda: (
        fdb() and f"{peer_gw} lladdr {mac} PERMANENT" in sh(node, "ip", "neigh", "show", "dev", "flannel.1")
        and f"{peer_subnet} via {peer_gw} dev flannel.1 proto static onlink" in sh(node, "ip", "route")), [
        f"FDB {mac} dst {peer.ip} dev flannel.1 was missing",
        f"neighbour {peer_gw} lladdr {mac} dev flannel.1 was missing",
        f"route {peer_subnet} via {peer_gw} dev flannel.1 onlink was missing",
    ])


def test_host_gw_peer_route_comes_back(make_lab):
    lab = two_nodes(make_lab, "host-gw")
    node, peer = lab.nodes
    peer_subnet = lab.node_status(peer)["subnet"]
    sh(node, "ip", "route", "del", peer_subnet)
    assert_repaired(lab, node, lambda: f"{peer_subnet} via {peer.ip} dev eth0 proto static" in sh(node, "ip", "route"),
                    [f"route {peer_subnet} via {peer.ip} dev eth0 was missing"])


def test_right_state_is_not_rewritten(make_lab):
    """Three resync periods on an untouched kernel-VXLAN node: no netlink write, no nft write, and
    no check either (nothing changed)."""
    lab = two_nodes(make_lab, "vxlan", "kernel")
    node = lab.nodes[0]
    # the first checks after start (the peer's entries were just written): settled once a status
    # written 2.5 periods after the last one that counted a new check counts none
    last = {"checks": None, "since": 0.0}

    def settled():
        status = lab.node_status(node)
        if status["drift_checks"] != last["checks"]:
            last.update(checks=status["drift_checks"], since=status["updated"])
        return status["updated"] - last["since"] >= 2.5 and status["drift_checks"]["change"] >= 1

    assert wait_for(settled, timeout=20), last
    checks = last["checks"]
    monitors = [subprocess.Popen(["ip", "netns", "exec", node.netns, *argv], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
                for argv in (["ip", "-4", "monitor", "link", "address", "route", "neigh"],
                             ["bridge", "monitor", "fdb"], ["nft", "monitor"])]
    try:
        time.sleep(3.5)
    finally:
        for m in monitors:
            m.terminate()
    ended = time.time()
    # the underlay's own ARP entries age on their own; naming eth0's peer namespace (in the underlay
    # namespace) for an eth0 link event, ip asks the kernel about every namespace in /var/run/netns,
    # and one that another test is deleting meanwhile makes it print this error in place of the event
    events = [l for m in monitors for l in m.communicate(timeout=10)[0].splitlines()
              if "dev eth0" not in l and l != "Error: Peer netns reference is invalid."]
    assert events == []
    assert repaired(lab, node) == []
    assert wait_for(lambda: lab.node_status(node)["updated"] > ended, timeout=5)
    assert lab.node_status(node)["drift_checks"] == checks
