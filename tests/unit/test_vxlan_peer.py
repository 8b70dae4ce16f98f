"""Which leases are usable VXLAN peers: hand-written leases must never crash a node."""

from __future__ import annotations

import ipaddress

import pytest

from overlayd.backend.vxlan import vtep_mac, vxlan_peer_mac
from overlayd.lease.model import Lease, LeaseAttrs


def lease(btype="vxlan", data=None):
    return Lease(ipaddress.IPv4Network("10.244.5.0/24"),
                 LeaseAttrs(ipaddress.IPv4Address("198.18.0.15"), btype, data), None, 0, 1)


@pytest.mark.parametrize("btype, data, expected", [
    ("vxlan", {"VNI": 1, "VtepMAC": "0E:00:00:00:00:05"}, "0e:00:00:00:00:05"),
    ("vxlan", {"VtepMAC": "0e:00:00:00:00:05"}, "0e:00:00:00:00:05"),   # VNI omitted: ours
    ("vxlan", {"VNI": 2, "VtepMAC": "0e:00:00:00:00:05"}, None),         # another VXLAN network
    ("vxlan", {"VNI": 1, "VtepMAC": "not-a-mac"}, None),
    ("vxlan", {"VNI": 1, "VtepMAC": 42}, None),
    ("vxlan", {"VNI": 1}, None),
    ("vxlan", None, None),
    ("vxlan", ["not", "a", "dict"], None),
    ("udp", {"VNI": 1, "VtepMAC": "0e:00:00:00:00:05"}, None),
])
def test_vxlan_peer_mac(btype, data, expected):
    assert vxlan_peer_mac(lease(btype, data), 1) == expected


def test_vtep_mac_is_stable_per_node_and_vni():
    ip = ipaddress.IPv4Address("198.18.0.11")
    assert vtep_mac(ip, 1) == vtep_mac(ip, 1)
    assert vtep_mac(ip, 1) != vtep_mac(ip, 2) != vtep_mac(ipaddress.IPv4Address("198.18.0.12"), 2)
