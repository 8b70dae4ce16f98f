"""Pod egress with --ip-masq: leaving the Network, pods borrow the node's
address; inside it they keep their own. flannel's rules, in our nftables table."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP

from overlayd.lab.topology import run

from .tools import Capture

pytestmark = [pytest.mark.root, pytest.mark.etcd]


def test_masquerade_outside_the_network_only(make_lab, tmp_path):
    lab = make_lab("udp", nodes=2, variants=[{"ip_masq": True}] * 2)
    node1, node2 = lab.nodes
    external = lab.add_host("external")
    pod1, pod2 = node1.pods[0], node2.pods[0]

    assert "FLANNEL_IPMASQ=true" in open(lab.subnet_file(node1)).read()
    ruleset = run(["ip", "netns", "exec", node1.netns, "nft", "list", "table", "ip", "overlayd"]).stdout
    assert "masquerade" in ruleset

    # the external host has no route to the pod network: only a masqueraded packet can be answered
    with Capture(external.netns, "eth0", "icmp", tmp_path / "external.pcap", count=4) as cap:
        assert lab.ping(pod1, external.ip, tries=3)
    sources = {p[IP].src for p in cap.packets if p[IP].dst == external.ip}
    assert sources == {node1.ip}

    # pod to pod across nodes: the receiving pod sees the sending pod's own address
    with Capture(pod2.netns, "eth0", "icmp", tmp_path / "pod.pcap", count=4) as cap:
        assert lab.ping(pod1, pod2.ip, tries=3)
    sources = {p[IP].src for p in cap.packets if p[IP].dst == pod2.ip}
    assert sources == {pod1.ip}


def test_without_ip_masq_the_bridge_plugin_masquerades_and_our_table_has_no_nat(make_lab, tmp_path):
    lab = make_lab("udp", nodes=1)
    node1 = lab.nodes[0]
    external = lab.add_host("external")
    assert "FLANNEL_IPMASQ=false" in open(lab.subnet_file(node1)).read()
    ruleset = run(["ip", "netns", "exec", node1.netns, "nft", "list", "table", "ip", "overlayd"]).stdout
    assert "masquerade" not in ruleset and "forward" in ruleset
    assert lab.ping(node1.pods[0], external.ip, tries=3)  # egress still works: the CNI bridge masquerades
