"""The userspace backends' peer table takes both subnets of a dual-stack lease (issue 17 point 3): the
IPv6 one is routed and its holder may send from it; an IPv4-only network ignores it, as before."""

from __future__ import annotations

import ipaddress
import json

import pytest

from overlayd.backend import create_backend
from overlayd.backend.base import NodeOptions, Underlay
from overlayd.encap.table import Peer
from overlayd.lease.model import Lease, LeaseAttrs
from overlayd.lease.watcher import Batch
from overlayd.netconf import parse_config

DUAL = {"Network": "10.244.0.0/16", "EnableIPv6": True, "IPv6Network": "fd00:10:244::/56",
        "Backend": {"Type": "udp"}}
UNDERLAY = Underlay("eth0", ipaddress.IPv4Address("198.18.0.11"), 1500)


def lease(third: int, public_ip: str) -> Lease:
    return Lease(ipaddress.IPv4Network(f"10.244.{third}.0/24"), LeaseAttrs(ipaddress.IPv4Address(public_ip), "udp"),
                 subnet6=ipaddress.IPv6Network(f"fd00:10:244:{third}::/64"))


def backend(raw: dict):
    return create_backend(parse_config(json.dumps(raw)), UNDERLAY, NodeOptions(datapath="python"))


@pytest.mark.asyncio
async def test_both_subnets_of_a_dual_stack_peer_are_in_the_table():
    b = backend(DUAL)
    peer = lease(2, "198.18.0.12")
    await b.apply(Batch(added=[peer]))
    assert b.table.lookup6(ipaddress.IPv6Address("fd00:10:244:2::9").packed) == Peer("198.18.0.12")
    assert b.table.lookup(bytes([10, 244, 2, 9])) == Peer("198.18.0.12")
    assert len(b.table.held_by("198.18.0.12")) == 2
    assert b.peer_subnets() == ["10.244.2.0/24", "fd00:10:244:2::/64"]
    await b.apply(Batch(removed=[peer]))
    assert len(b.table) == 0 and b.table.held_by("198.18.0.12") is None


@pytest.mark.asyncio
async def test_an_ipv4_only_network_ignores_a_peers_ipv6_subnet():
    b = backend({"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}})
    await b.apply(Batch(added=[lease(2, "198.18.0.12")]))
    assert b.peer_subnets() == ["10.244.2.0/24"]
    assert b.table.mask6 == 0
