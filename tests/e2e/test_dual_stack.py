"""Dual stack in the netns lab (issue 17 point 5), past the ping matrix of test_lab_ip_family.py:

* anti-spoofing with IPv6 inner sources, on the udp backend's Python and C data paths: a member
  sends IPv6 packets from another node's subnet, from the receiver's own, from outside the
  Network, to another node's subnet and from a wrong source port; none is delivered and each is
  counted (test_antispoof.py's IPv4 cases, in IPv6);
* a flannel node's dual-stack lease, written by hand into etcd as flannel writes it, is followed:
  both families' routes, neighbours and FDB entries (flannel.1 and flannel-v6.1) and the peer
  table appear, and go with the lease;
* /metrics: ``overlayd_peers`` counts a dual-stack peer once;
* path MTU: a large IPv6 TCP transfer completes where the tunnel's MTU is below the pods' (IPv6
  routers never fragment: the node answers Packet Too Big and the pod lowers its path MTU). Kernel
  VXLAN has it by design (pods get flannel.1's MTU, flannel-v6.1's is 20 bytes less); on the udp
  backend the test pods and cni0 are given a larger MTU than tun0's.

One lab per backend, shared by the module's tests: each only adds to it (a host, pods of its own,
counters it compares against their value before), so their order does not matter.
"""

from __future__ import annotations

import ipaddress
import json

import pytest

from overlayd.lab.topology import PREFIX, Lab, Node, Pod, network_config, run

from .test_antispoof import GOOD_ID, PORT, assert_refused, echo
from .test_health import HEALTHZ, samples, scrape
from .tools import ip, tcp_transfer, wait_for

pytestmark = [pytest.mark.root, pytest.mark.etcd]

POD_MTU = 1500  # the udp lab's wide pods: more than tun0's 1472
FLANNEL_MAC, FLANNEL_MAC6 = "0e:00:00:fa:fa:04", "0e:00:00:fa:fa:06"


@pytest.fixture(scope="module")
def udp_lab(make_module_lab) -> Lab:
    """A dual-stack udp lab over the IPv4 underlay: node2 forwards in C, node1 and node3 in Python;
    node1 serves /metrics."""
    return make_module_lab("udp", nodes=3, ip_family="dual",
                           variants=[{"datapath": "python", "extra_args": ["--healthz-addr", HEALTHZ]},
                                     {"datapath": "c"}, {"datapath": "python"}])


@pytest.fixture(scope="module")
def vxlan_lab(make_module_lab) -> Lab:
    """A dual-stack kernel VXLAN lab: flannel.1 and flannel-v6.1 on each node, as flannel has them."""
    return make_module_lab("vxlan", nodes=2, ip_family="dual", variants=[{"vxlan_impl": "kernel"}] * 2)


def test_ipv6_spoofing_is_refused_on_both_data_paths(udp_lab, tmp_path):
    lab = udp_lab
    sender, *_ = lab.nodes
    for receiver, other in ((lab.nodes[1], lab.nodes[2]), (lab.nodes[2], lab.nodes[1])):  # C, then Python
        own = ipaddress.IPv6Network(lab.node_status(receiver)["subnet6"])
        pod, good = receiver.pods[0].ip6, sender.pods[0].ip6
        cases = [
            ("another node's pod as source", PORT, bytes(echo(other.pods[0].ip6, pod)), "spoofed_source"),
            ("the receiver's own subnet as source", PORT, bytes(echo(str(own.network_address + 200), pod)),
             "spoofed_source"),
            ("a source outside the Network", PORT, bytes(echo("2001:db8:ffff::8", pod)), "spoofed_source"),
            ("to another node's pod", PORT, bytes(echo(good, other.pods[0].ip6)), "not_our_subnet"),
            ("not from the backend's port", 40000, bytes(echo(good, pod)), "wrong_source_port"),
        ]
        control = (PORT, bytes(echo(good, pod, GOOD_ID)))
        assert_refused(lab, tmp_path, sender, receiver, cases, control, "tun0", version=6)


def test_metrics_count_a_dual_stack_peer_once(udp_lab):
    node1 = udp_lab.nodes[0]
    assert wait_for(lambda: len(udp_lab.node_status(node1)["peers"]) == 4)  # two peers, two subnets each
    m = samples(scrape(udp_lab, node1, "/metrics")["/metrics"][1])
    assert m[("overlayd_peers", ())] == 2


def _free_pair(lab: Lab) -> tuple[ipaddress.IPv4Network, ipaddress.IPv6Network]:
    """A /24 and a /64 of the lab's Networks, with the same number, that no lease holds."""
    leases = json.loads(lab.overlayctl("subnets", "--json").stdout)["leases"]
    leased = {l["subnet"] for l in leases} | {l["subnet6"] for l in leases}
    for n in range(250, 1, -1):
        pair = ipaddress.IPv4Network(f"10.244.{n}.0/24"), ipaddress.IPv6Network(f"fd00:10:244:{n:x}::/64")
        if not leased & {str(s) for s in pair}:
            return pair
    raise AssertionError("no free subnet pair")


def _fdb(node: Node, device: str) -> list[dict]:
    """``node``'s FDB entries on ``device`` (``bridge -j fdb``)."""
    return json.loads(run(["bridge", "-n", node.netns, "-j", "fdb", "show", "dev", device]).stdout)


def _programmed(node: Node, device: str, subnet, mac: str, public_ip: str) -> bool:
    """Whether ``node`` has the route, permanent neighbour and FDB entry to ``subnet`` on ``device``."""
    gateway = str(subnet.network_address)
    route = ip(node.netns, f"-{subnet.version}", "route", "show", str(subnet))
    neigh = ip(node.netns, f"-{subnet.version}", "neigh", "show", gateway, "dev", device)
    return (f"via {gateway} dev {device} " in route and "onlink" in route and f"lladdr {mac} PERMANENT" in neigh
            and any(e["mac"] == mac and e.get("dst") == public_ip for e in _fdb(node, device)))


def _peer(lab: Lab, node: Node, subnet: ipaddress.IPv4Network) -> dict | None:
    """``node``'s peer table row for ``subnet``, or None."""
    return next((p for p in lab.node_status(node)["peer_table"] if p["subnet"] == str(subnet)), None)


def test_a_flannel_dual_stack_lease_is_followed(vxlan_lab):
    lab = vxlan_lab
    host = lab.add_host("flannel")  # where the flannel node would be: its addresses on the underlay
    subnet, subnet6 = _free_pair(lab)
    key = f"/coreos.com/network/subnets/{subnet.network_address}-24&{subnet6.network_address}-64"
    value = {"PublicIP": host.ip, "PublicIPv6": host.ip6, "BackendType": "vxlan",  # as flannel's vxlan writes it
             "BackendData": {"VNI": 1, "VtepMAC": FLANNEL_MAC}, "BackendV6Data": {"VNI": 1, "VtepMAC": FLANNEL_MAC6}}
    lease_id = lab.etcdctl("lease", "grant", "300").stdout.split()[1]
    lab.etcdctl("put", f"--lease={lease_id}", key, json.dumps(value))

    for node in lab.nodes:
        assert wait_for(lambda: _programmed(node, "flannel.1", subnet, FLANNEL_MAC, host.ip)
                        and _programmed(node, "flannel-v6.1", subnet6, FLANNEL_MAC6, host.ip6)), node.name
        assert wait_for(lambda: {str(subnet), str(subnet6)} <= set(lab.node_status(node)["peers"]))
        row = _peer(lab, node, subnet)
        assert (row["subnet6"], row["public_ip"], row["public_ipv6"]) == (str(subnet6), host.ip, host.ip6)

    lab.etcdctl("del", key)
    for node in lab.nodes:
        assert wait_for(lambda: _peer(lab, node, subnet) is None
                        and not {str(subnet), str(subnet6)} & set(lab.node_status(node)["peers"])), node.name
        for version, device, net, mac in ((4, "flannel.1", subnet, FLANNEL_MAC),
                                          (6, "flannel-v6.1", subnet6, FLANNEL_MAC6)):
            assert ip(node.netns, f"-{version}", "route", "show", str(net)).strip() == "", device
            assert str(net.network_address) not in ip(node.netns, f"-{version}", "neigh", "show", "dev", device)
            assert all(e["mac"] != mac for e in _fdb(node, device)), device


def _mtu(netns: str, device: str) -> int:
    return json.loads(ip(netns, "-j", "link", "show", device))[0]["mtu"]


def _widen(node: Node, pod: Pod, mtu: int) -> None:
    """Give ``pod``'s eth0, its veth's node end and ``node``'s cni0 an MTU of ``mtu``."""
    link_index = json.loads(ip(pod.netns, "-j", "link", "show", "eth0"))[0]["link_index"]
    veth = next(l["ifname"] for l in json.loads(ip(node.netns, "-j", "link", "show")) if l["ifindex"] == link_index)
    for netns, device in ((node.netns, "cni0"), (node.netns, veth), (pod.netns, "eth0")):
        ip(netns, "link", "set", device, "mtu", str(mtu))


def assert_path_mtu_found(lab: Lab, tmp_path, pairs: list[tuple[Pod, Pod]], tunnel_mtu: int) -> None:
    """A 4 MB IPv6 TCP transfer for each (source, destination) pod pair arrives whole, and the
    source's route to the destination has learnt ``tunnel_mtu`` (a Packet Too Big reached it)."""
    for src, dst in pairs:
        assert _mtu(src.netns, "eth0") > tunnel_mtu and _mtu(dst.netns, "eth0") > tunnel_mtu
        sent, received = tcp_transfer(lab, src, dst, tmp_path, nbytes=4 << 20, version=6)
        assert sent == received, f"{src.name} -> {dst.name}"
        learnt = json.loads(ip(src.netns, "-j", "-6", "route", "get", dst.ip6))[0].get("metrics", [])
        assert {"mtu": tunnel_mtu} in learnt, (src.name, learnt)


def test_path_mtu_over_udp_on_both_data_paths(udp_lab, tmp_path):
    lab = udp_lab
    tunnel_mtu = _mtu(lab.nodes[0].netns, "tun0")
    pods = []
    for node in lab.nodes:  # pods of their own, wider than tun0
        pod = lab.add_pod(node)
        _widen(node, pod, POD_MTU)
        pods.append(pod)
    assert_path_mtu_found(lab, tmp_path, [(pods[0], pods[1]), (pods[1], pods[2])], tunnel_mtu)  # Python -> C -> Python


def test_path_mtu_over_kernel_vxlan(vxlan_lab, tmp_path):
    lab = vxlan_lab
    node1, node2 = lab.nodes
    assert_path_mtu_found(lab, tmp_path, [(node1.pods[0], node2.pods[0])], _mtu(node1.netns, "flannel-v6.1"))


def test_ipv6_turned_off_leaves_nothing_of_it(make_lab):
    """An operator turns IPv6 off (EnableIPv6 false) and restarts the nodes: nothing of the IPv6
    network stays on a node (cni0's gateway, host-gw's routes to the peers, the guard route, the
    ip6 firewall table), and IPv4 pods still talk."""
    lab = make_lab("host-gw", nodes=2, ip_family="dual")
    node1, node2 = lab.nodes
    assert all(lab.reachability(tries=5, version=6).values())
    lab.etcdctl("put", f"{PREFIX}/config", json.dumps(network_config("host-gw", lab.network, lab.vni, lab.port)))
    for node in lab.nodes:
        lab.restart_node(node)
    for node in lab.nodes:
        addresses = run(["ip", "-n", node.netns, "-6", "-o", "addr", "show", "dev", "cni0", "scope", "global"]).stdout
        routes = run(["ip", "-n", node.netns, "-6", "route", "show", "table", "main"]).stdout
        tables = run(["ip", "netns", "exec", node.netns, "nft", "list", "tables"]).stdout
        assert "fd00:" not in addresses, addresses
        assert "fd00:" not in routes, routes
        assert "ip6 overlayd" not in tables, tables
        with open(lab.log_file(node), encoding="utf-8") as f:
            assert any("fd00:" in line and "is no longer configured" in line for line in f), node.name
    assert all(lab.reachability(tries=5).values())
