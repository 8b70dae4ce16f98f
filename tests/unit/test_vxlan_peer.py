"""Which leases are usable VXLAN peers (hand-written leases must never crash a node),
and what the userspace VXLAN codec accepts from them."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from overlayd.backend.vxlan import vtep_mac, vxlan_peer_mac
from overlayd.dataplane.codecs import VxlanCodec
from overlayd.encap.drops import Drop
from overlayd.encap.ether import mac_to_bytes
from overlayd.encap.table import Peer, PeerTable
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


# --- what the userspace VXLAN codec accepts (anti-spoofing on receive) -----------------------

OWN_MAC, PEER_MAC = "0e:00:00:00:00:01", "0e:00:00:00:00:05"


@pytest.fixture
def codec():
    table = PeerTable(24)
    table.set(ipaddress.IPv4Network("10.244.5.0/24"), Peer("198.18.0.15", mac_to_bytes(PEER_MAC)))
    return VxlanCodec(table, ipaddress.IPv4Network("10.244.1.0/24"), 1, mac_to_bytes(OWN_MAC))


def vxlan_dgram(src="10.244.5.7", dst="10.244.1.5", src_mac=PEER_MAC, vni=1) -> bytes:
    return bytes(VXLAN(flags=0x08, vni=vni) / Ether(src=src_mac, dst=OWN_MAC) / IP(src=src, dst=dst) / UDP())


@pytest.mark.parametrize("dgram, sender, expected", [
    (vxlan_dgram(), ("198.18.0.15", 8472), "ok"),
    (vxlan_dgram(), ("198.18.0.15", 51234), "ok"),            # any source port: kernel VTEPs vary it
    (vxlan_dgram(), ("198.18.0.99", 8472), Drop.UNKNOWN_SENDER),
    (vxlan_dgram(vni=2), ("198.18.0.15", 8472), Drop.WRONG_VNI),
    (vxlan_dgram(src="10.244.6.7"), ("198.18.0.15", 8472), Drop.SPOOFED_SOURCE),
    (vxlan_dgram(src="10.244.1.7"), ("198.18.0.15", 8472), Drop.SPOOFED_SOURCE),
    (vxlan_dgram(src="8.8.8.8"), ("198.18.0.15", 8472), Drop.SPOOFED_SOURCE),
    (vxlan_dgram(dst="10.244.1.0"), ("198.18.0.15", 8472), "ok"),
    (vxlan_dgram(dst="10.244.1.255"), ("198.18.0.15", 8472), Drop.TO_BROADCAST_ADDRESS),
    (vxlan_dgram(src_mac="0e:00:00:00:00:66"), ("198.18.0.15", 8472), Drop.WRONG_SOURCE_MAC),
])
def test_vxlan_codec_inbound(codec, dgram, sender, expected):
    verdict = codec.inbound(dgram, sender)
    assert verdict == (dgram[8:] if expected == "ok" else expected)
