"""An operator switches the network's backend and restarts the nodes: the devices the old backend
left that outlive a daemon (kernel VXLAN's flannel.<VNI>, kernel WireGuard's flannel-wg) are
removed at start. Kept, flannel.1 held the tunnel's UDP port: the udp backend on the same Port
could not open its socket and the daemon restarted in a loop."""

from __future__ import annotations

import json

import pytest

from overlayd.lab.topology import PREFIX, network_config, run

pytestmark = [pytest.mark.root, pytest.mark.etcd]


def links(lab, node) -> list[str]:
    return [link["ifname"] for link in json.loads(run(["ip", "-n", node.netns, "-j", "link", "show"]).stdout)]


def test_kernel_vxlan_to_udp_on_the_same_port_removes_flannel_1(make_lab):
    lab = make_lab("vxlan", nodes=2, variants=[{"vxlan_impl": "kernel"}] * 2)
    assert all("flannel.1" in links(lab, node) for node in lab.nodes)
    lab.etcdctl("put", f"{PREFIX}/config", json.dumps(network_config("udp", lab.network, lab.vni, lab.port)))
    for node in lab.nodes:
        lab.restart_node(node)
    assert all(lab.reachability(tries=5).values())
    for node in lab.nodes:
        assert "flannel.1" not in links(lab, node) and "tun0" in links(lab, node)
        with open(lab.log_file(node), encoding="utf-8") as f:
            assert "removed flannel.1, a device of the vxlan backend (the network's backend is now udp)" in f.read()
