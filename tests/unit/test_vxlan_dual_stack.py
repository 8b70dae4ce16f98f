"""Kernel VXLAN's lease attributes and devices per family (issue 17), pure: no kernel."""

from __future__ import annotations

import ipaddress

from overlayd.backend.base import NodeOptions, Underlay
from overlayd.backend.vxlan import KernelVxlanBackend, vtep_mac
from overlayd.netconf import parse_config

IP6 = ipaddress.IPv6Address("2001:db8::11")


def backend(enable_ipv4: bool) -> KernelVxlanBackend:
    config = parse_config({"Network": "10.244.0.0/16", "EnableIPv4": enable_ipv4, "EnableIPv6": True,
                           "IPv6Network": "fd00:10:244::/56", "Backend": {"Type": "vxlan", "VNI": 4}})
    public_ip = ipaddress.IPv4Address("198.18.0.11") if enable_ipv4 else None
    return KernelVxlanBackend(config, Underlay("eth0", public_ip, 1500, public_ip6=IP6), NodeOptions())


def test_ipv6_only_node_publishes_backend_v6_data_alone():
    b = backend(enable_ipv4=False)
    attrs = b.lease_attrs()
    assert (attrs.public_ip, attrs.public_ip6, attrs.backend_data) == (None, IP6, None)
    assert attrs.backend_v6_data == {"VNI": 4, "VtepMAC": vtep_mac(IP6, 4)}
    assert [v.device for v in b.vteps.values()] == ["flannel-v6.4"] and b.device == "flannel-v6.4"


def test_dual_stack_node_has_two_devices_with_their_own_macs():
    b = backend(enable_ipv4=True)
    attrs = b.lease_attrs()
    assert [v.device for v in b.vteps.values()] == ["flannel.4", "flannel-v6.4"] and b.device == "flannel.4"
    assert attrs.backend_data["VtepMAC"] != attrs.backend_v6_data["VtepMAC"]
    assert attrs.backend_data == {"VNI": 4, "VtepMAC": vtep_mac(ipaddress.IPv4Address("198.18.0.11"), 4)}


def test_pods_get_the_mtu_of_the_device_that_carries_their_packets():
    """An IPv6 outer header is 20 bytes longer: flannel-v6.<VNI> is 20 below flannel.<VNI>; an
    IPv6-only node hands its pods that smaller MTU (not IPv4's, which every full-size packet
    would exceed); a dual-stack node keeps IPv4's, as flannel (larger IPv6 packets get Packet
    Too Big from the node)."""
    ipv6_only, dual = backend(enable_ipv4=False), backend(enable_ipv4=True)
    assert (ipv6_only.device_mtu(6), ipv6_only.mtu) == (1430, 1430)
    assert (dual.device_mtu(4), dual.device_mtu(6), dual.mtu) == (1450, 1430, 1450)
