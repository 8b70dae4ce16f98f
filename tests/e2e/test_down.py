"""While overlayd is down no pod traffic leaves a node unencapsulated, and a restart is clean
(issue 9 §3); ``--cleanup-on-exit`` leaves nothing of ours and peers drop the node at once
(issue 9 §3, issue 11 §5); the host's own rp_filter is left alone (issue 9 §4).

The "router" is a lab host namespace with forwarding on, and each node gets a default route
through it: a packet for the Network that escapes the overlay shows up there. Nodes run with
``--ip-masq`` (kube-flannel's default), so pod-to-pod packets keep their pod source addresses.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from scapy.layers.inet import IP

from overlayd.lab.topology import Host, Lab, Node, Pod, run
from overlayd.plumbing import guard

from .tools import Capture, free_subnet, wait_for

pytestmark = [pytest.mark.root, pytest.mark.etcd]

PODS = "10.244.0.0/16"
GUARD = f"unreachable {PODS} proto static metric {guard.METRIC}"
BACKENDS = [("udp", "user"), ("vxlan", "user"), ("vxlan", "kernel"), ("host-gw", "user")]


def sh(netns: str, *argv: str) -> str:
    return run(["ip", "netns", "exec", netns, *argv]).stdout


def sysctl(node: Node, key: str) -> str:
    """``key`` in slash form (device names have dots), read inside ``node``."""
    return sh(node.netns, "sysctl", "-n", key).strip()


def add_router(lab: Lab) -> Host:
    """A forwarding lab namespace on the underlay, and every node's default route through it."""
    router = lab.add_host("router")
    sh(router.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    for node in lab.nodes:
        run(["ip", "-n", node.netns, "route", "add", "default", "via", router.ip])
    return router


def escaped(router: Host, pod: Pod, targets: list[str], pcap) -> list[str]:
    """``pod`` pings each target; the packets from or to pods the router saw, as "src -> dst"."""
    with Capture(router.netns, "eth0", f"net {PODS}", pcap, count=5) as cap:
        for ip in targets:
            run(["ip", "netns", "exec", pod.netns, "ping", "-c3", "-i0.2", "-W1", "-n", ip], check=False, timeout=10)
    return [f"{p[IP].src} -> {p[IP].dst}" for p in cap.packets if IP in p]


def kernel_state(node: Node) -> tuple[list[str], list[str]]:
    """(sorted routes, sorted link names) of ``node``'s namespace."""
    routes = sorted(line.strip() for line in sh(node.netns, "ip", "-4", "route", "show").splitlines())
    links = sorted(link["ifname"] for link in json.loads(sh(node.netns, "ip", "-j", "link", "show")))
    return routes, links


@pytest.mark.parametrize("backend,impl", BACKENDS, ids=["udp", "vxlan-user", "vxlan-kernel", "host-gw"])
def test_no_pod_traffic_escapes_while_down_and_a_restart_is_clean(make_lab, tmp_path, backend, impl):
    lab = make_lab(backend, nodes=2, pods=1, variants=[{"vxlan_impl": impl, "ip_masq": True}] * 2)
    router = add_router(lab)
    node, peer = lab.nodes
    pod, remote = node.pods[0], peer.pods[0]
    unleased = str(free_subnet(lab).network_address + 2)  # a subnet of the Network no node holds
    subnet = lab.node_status(node)["subnet"]
    before = kernel_state(node)
    assert before[0].count(GUARD) == 1, before[0]
    assert escaped(router, pod, [unleased], tmp_path / "running.pcap") == []  # kernel VXLAN, host-gw: leaked

    for how, stop in (("SIGKILL", lab.kill_node), ("SIGTERM", lab.stop_node)):
        stop(node)
        assert escaped(router, pod, [remote.ip, unleased], tmp_path / f"{how}.pcap") == [], how
        if impl == "kernel" or backend == "host-gw":  # the kernel's data path outlives overlayd
            assert lab.ping(pod, remote.ip, tries=3), how
        lab.start_node(node)
        assert lab.node_status(node)["subnet"] == subnet, how
        assert lab.ping(pod, remote.ip) and lab.ping(remote, pod.ip), how
        assert wait_for(lambda: kernel_state(node) == before, timeout=10), (how, kernel_state(node), before)


@pytest.mark.parametrize("backend,impl", [BACKENDS[0], BACKENDS[2], BACKENDS[3]],
                         ids=["udp", "vxlan-kernel", "host-gw"])
def test_cleanup_on_exit_leaves_nothing_of_ours_and_peers_drop_the_node(make_lab, backend, impl):
    lab = make_lab(backend, nodes=2, pods=1, variants=[
        {"vxlan_impl": impl, "ip_masq": True, "extra_args": ["--cleanup-on-exit"]},
        {"vxlan_impl": impl, "ip_masq": True}])
    node, peer = lab.nodes
    subnet = lab.node_status(node)["subnet"]
    assert wait_for(lambda: subnet in lab.node_status(peer)["peers"], timeout=10)
    assert sysctl(node, "net/ipv4/ip_forward") == "1"

    lab.stop_node(node)
    gone = wait_for(lambda: subnet not in lab.node_status(peer)["peers"]
                    and subnet not in sh(peer.netns, "ip", "route") + sh(peer.netns, "ip", "neigh"), timeout=2)
    assert gone, (lab.node_status(peer)["peers"], sh(peer.netns, "ip", "route"))
    assert subnet not in [l["subnet"] for l in json.loads(lab.overlayctl("subnets", "--json").stdout)["leases"]]
    assert "cleaned up" in open(lab.log_file(node), encoding="utf-8").read()

    links = json.loads(sh(node.netns, "ip", "-j", "link", "show"))
    others = [l["ifname"] for l in links if l["ifname"] not in ("lo", "eth0")]
    assert all(name.startswith("veth") for name in others), others  # the pods' ends, CNI's to delete
    assert not [l["ifname"] for l in links if "master" in l], links  # cni0 is gone
    everything = sh(node.netns, "ip", "-4", "route", "show", "table", "all") + sh(node.netns, "ip", "neigh")
    assert "10.244." not in everything and "unreachable" not in everything, everything
    assert "overlayd" not in sh(node.netns, "nft", "list", "tables")
    assert sysctl(node, "net/ipv4/ip_forward") == "0"  # as the fresh namespace had it
    assert not os.path.exists(lab.subnet_file(node))
    assert not os.path.exists(os.path.join(lab.node_dir(node), "sysctl-journal.json"))


def test_host_rp_filter_is_left_alone_and_overlay_devices_are_loose(make_lab):
    """The host's conf/all stays strict (1); tun/tap/VXLAN devices and cni0 get 2; pods still talk."""
    lab = make_lab("vxlan", nodes=2, pods=1, variants=[{"vxlan_impl": "kernel", "ip_masq": True},
                                                      {"vxlan_impl": "user", "ip_masq": True}])
    for node, device in zip(lab.nodes, ("flannel.1", "overlay0")):
        lab.stop_node(node)
        sh(node.netns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1")
        lab.start_node(node)
        assert sysctl(node, "net/ipv4/conf/all/rp_filter") == "1", node.name
        for dev in (device, "cni0"):
            assert sysctl(node, f"net/ipv4/conf/{dev}/rp_filter") == "2", (node.name, dev)
    a, b = (n.pods[0] for n in lab.nodes)
    time.sleep(0.5)  # the peers' first listing
    assert lab.ping(a, b.ip) and lab.ping(b, a.ip)
