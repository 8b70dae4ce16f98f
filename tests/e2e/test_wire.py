"""What crosses the underlay, checked by capture and scapy: the UDP backend's
bare IP in UDP 8472 with checksum 0, the VXLAN backends' RFC 7348 frames
(user and kernel nodes in one lab, the kernel being the reference), a rogue
sender ignored, ICMP unreachable for unleased subnets, and a VTEP set up by
hand with iproute2 from a lease written by hand with etcdctl (as a flannel
operator would) honoured as a peer."""

from __future__ import annotations

import ipaddress
import json
import os

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from overlayd.lab.topology import run

from .crafted import send_udp
from .tools import Capture, free_subnet, tcp_transfer, wait_for

pytestmark = [pytest.mark.root, pytest.mark.etcd]


def udp_payload(pkt) -> bytes:
    """The UDP payload as raw bytes (scapy would dissect port 8472 as VXLAN)."""
    raw = bytes(pkt[IP])
    return raw[pkt[IP].ihl * 4 + 8:]


def test_udp_wire_rogue_and_unreachable(make_lab, tmp_path):
    # --ip-masq: the nodes masquerade only traffic leaving the Network, so pod addresses
    # stay visible inside it (without it the bridge plugin masquerades pod-to-pod, as flannel's does)
    lab = make_lab("udp", nodes=3, variants=[{"ip_masq": True}] * 3)
    node1, node2, _ = lab.nodes
    pod1, pod2 = node1.pods[0], node2.pods[0]

    # the wire: UDP 8472 both ends, checksum 0, the pod's IP packet as the whole payload
    with Capture(node1.netns, "eth0", "udp port 8472", tmp_path / "udp.pcap", count=6) as cap:
        assert lab.ping(pod1, pod2.ip)
    outer = [p for p in cap.packets if p[IP].src == node1.ip]
    assert outer, cap.packets
    for p in outer:
        assert p[IP].dst == node2.ip and p[UDP].sport == 8472 and p[UDP].dport == 8472
        assert p[UDP].chksum == 0
        inner = IP(udp_payload(p))
        assert (inner.src, inner.dst) == (pod1.ip, pod2.ip) and inner.haslayer(ICMP)

    # a rogue host on the underlay holding no lease: its well-formed datagrams go nowhere,
    # while the very same datagram from a lease holder's address and port is delivered (the check
    # can fail; test_antispoof has what a lease holder may not send)
    rogue = lab.add_host("rogue")
    forged = bytes(IP(src=pod1.ip, dst=pod2.ip) / ICMP(id=0x4242, seq=1) / b"forged")
    with Capture(pod2.netns, "eth0", "icmp[4:2] == 0x4242", tmp_path / "rogue.pcap") as cap:
        send_udp(rogue.netns, rogue.ip, node2.ip, [(8472, forged)], count=20)
    assert cap.packets == []
    assert wait_for(lambda: lab.node_status(node2)["stats"].get("drop_unknown_sender", 0) >= 20, timeout=15)
    with Capture(pod2.netns, "eth0", "icmp[4:2] == 0x4242", tmp_path / "peer.pcap", count=5) as cap:
        send_udp(node1.netns, node1.ip, node2.ip, [(8472, forged)], count=5)
    assert len(cap.packets) >= 1

    # a subnet nobody leases: ICMP host unreachable, from the node's gateway (cni0's .1, issue 21)
    target = str(free_subnet(lab).network_address + 77)
    gateway = str(ipaddress.IPv4Network(lab.node_status(node1)["subnet"]).network_address + 1)
    res = run(["ip", "netns", "exec", pod1.netns, "ping", "-c1", "-W2", "-n", target], check=False)
    assert res.returncode != 0
    assert f"From {gateway}" in res.stdout and "Destination Host Unreachable" in res.stdout, res.stdout
    assert lab.node_status(node1)["stats"].get("drop_no_lease", 0) >= 1 or wait_for(
        lambda: lab.node_status(node1)["stats"].get("drop_no_lease", 0) >= 1, timeout=10)


def test_vxlan_user_and_kernel_interoperate(make_lab, tmp_path):
    lab = make_lab("vxlan", nodes=3, variants=[{"vxlan_impl": "user", "ip_masq": True},
                                               {"vxlan_impl": "kernel", "ip_masq": True},
                                               {"vxlan_impl": "user", "ip_masq": True}])
    user, kernel, _ = lab.nodes
    matrix = lab.reachability()
    assert all(matrix.values()), {k: v for k, v in matrix.items() if not v}
    for src, dst in ((user, kernel), (kernel, user)):
        sent, received = tcp_transfer(lab, src.pods[0], dst.pods[0], tmp_path)
        assert sent == received, f"{src.name} -> {dst.name}"

    leases = {l["public_ip"]: l for l in json.loads(lab.overlayctl("subnets", "--json").stdout)["leases"]}
    with Capture(user.netns, "eth0", "udp port 8472", tmp_path / "vxlan.pcap", count=8) as cap:
        assert lab.ping(user.pods[0], kernel.pods[0].ip)
    senders = set()
    for p in cap.packets:
        assert p[UDP].dport == 8472 and p[UDP].chksum == 0, p.summary()
        assert p[VXLAN].vni == 1 and p[VXLAN].flags == 0x08, p.summary()
        inner = p[VXLAN][Ether]
        assert inner.dst == leases[p[IP].dst]["vtep_mac"]  # addressed to the receiving VTEP
        assert inner[IP].src in (user.pods[0].ip, kernel.pods[0].ip)
        senders.add(p[IP].src)
    assert senders == {user.ip, kernel.ip}  # both implementations were on the wire


def test_hand_written_flannel_lease_and_hand_made_vtep_are_peers(make_lab):
    lab = make_lab("vxlan", nodes=2, variants=[{"vxlan_impl": "user"}, {"vxlan_impl": "kernel"}])
    host = lab.add_host("flannel")
    subnet = free_subnet(lab)
    gw = str(subnet.network_address)
    mac = "0e:00:00:fa:fa:01"

    # what an operator with etcdctl would write for a flannel node
    lease_id = lab.etcdctl("lease", "grant", "300").stdout.split()[1]
    value = json.dumps({"PublicIP": host.ip, "BackendType": "vxlan",
                        "BackendData": {"VNI": 1, "VtepMAC": mac}})
    lab.etcdctl("put", f"--lease={lease_id}", f"/coreos.com/network/subnets/{gw}-24", value)

    # flannel's kernel plumbing on that host, by hand, towards both nodes
    ip = ["ip", "-n", host.netns]
    run(ip + ["link", "add", "flannel.1", "address", mac, "type", "vxlan", "id", "1", "local", host.ip,
              "dev", "eth0", "dstport", "8472", "nolearning", "noudpcsum"])
    run(ip + ["addr", "add", f"{gw}/32", "dev", "flannel.1"])
    run(ip + ["link", "set", "flannel.1", "up"])
    for lease in json.loads(lab.overlayctl("subnets", "--json").stdout)["leases"]:
        if lease["public_ip"] == host.ip:
            continue
        peer_gw = lease["subnet"].split("/")[0]
        run(ip + ["neigh", "replace", peer_gw, "lladdr", lease["vtep_mac"], "dev", "flannel.1", "nud", "permanent"])
        run(["bridge", "-n", host.netns, "fdb", "replace", lease["vtep_mac"], "dev", "flannel.1",
             "dst", lease["public_ip"], "self", "permanent"])
        run(ip + ["route", "replace", lease["subnet"], "via", peer_gw, "dev", "flannel.1", "onlink"])

    for node in lab.nodes:
        assert wait_for(lambda: str(subnet) in lab.node_status(node)["peers"]), node.name
        res = run(["ip", "netns", "exec", host.netns, "ping", "-c1", "-W2", "-n", node.pods[0].ip], check=False)
        if res.returncode != 0:  # the first echo may race the peer table; one more try
            res = run(["ip", "netns", "exec", host.netns, "ping", "-c3", "-W2", "-n", node.pods[0].ip], check=False)
        assert res.returncode == 0, f"{node.name} ({node.vxlan_impl}): {res.stdout}"

    # a malformed hand-written lease is skipped by every node (none crashes)...
    junk = free_subnet(lab)
    lab.etcdctl("put", f"/coreos.com/network/subnets/{junk.network_address}-24",
                json.dumps({"PublicIP": "198.18.0.240", "BackendType": "vxlan",
                            "BackendData": {"VNI": 1, "VtepMAC": "not-a-mac"}}))
    # ...and the hand-made peer moving to another VNI stops being a peer, its kernel state removed
    lab.etcdctl("put", f"--lease={lease_id}", f"/coreos.com/network/subnets/{gw}-24",
                json.dumps({"PublicIP": host.ip, "BackendType": "vxlan", "BackendData": {"VNI": 2, "VtepMAC": mac}}))
    user, kernel = lab.nodes
    for node in lab.nodes:
        assert wait_for(lambda: str(subnet) not in lab.node_status(node)["peers"]), node.name
        assert str(junk) not in lab.node_status(node)["peers"]
        assert node.pid and os.path.exists(f"/proc/{node.pid}")
    assert mac not in run(["bridge", "-n", kernel.netns, "fdb", "show", "dev", "flannel.1"]).stdout
    assert gw not in run(["ip", "-n", kernel.netns, "route"]).stdout
    assert gw not in run(["ip", "-n", kernel.netns, "neigh"]).stdout
    assert lab.ping(user.pods[0], kernel.pods[0].ip)
