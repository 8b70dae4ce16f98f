"""Backend.DirectRouting for both VXLAN implementations. Which peers are direct is decided from the kernel's
route to them (one shared function); here the userspace backend's bookkeeping runs against a fake netlink
(the lab: tests/e2e/test_direct_routing.py)."""

from __future__ import annotations

import ipaddress

import pytest

from overlayd.backend import backend_class, vxlan_user
from overlayd.backend.base import NodeOptions, Underlay, delete_peer_routes
from overlayd.backend.vxlan import KernelVxlanBackend, direct_device
from overlayd.backend.vxlan_user import UserVxlanBackend
from overlayd.lease.model import Lease, LeaseAttrs
from overlayd.lease.watcher import Batch
from overlayd.netconf import parse_config
from overlayd.plumbing.iface import Route

CONFIG = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "DirectRouting": True}}
OWN = ipaddress.IPv4Network("10.244.1.0/24")
NEAR, FAR = "198.18.0.12", "198.19.0.2"  # on our segment; behind a router


def net(s: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(s)


def lease(subnet: str, ip: str, btype: str = "vxlan") -> Lease:
    return Lease(net(subnet), LeaseAttrs(ipaddress.IPv4Address(ip), btype, {"VNI": 1, "VtepMAC": "0e:00:00:00:00:05"}))


class FakeNetlink:
    """The kernel's main table as a dict (dst -> (dev, gateway)); ``route_to`` answers as ``ip route get``:
    a gateway for addresses off the segment. Link-level ``ensure_*`` calls do nothing."""

    def __init__(self):
        self.table: dict[ipaddress.IPv4Network, tuple[str, ipaddress.IPv4Address | None]] = {}

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False

    def __getattr__(self, name):
        if not name.startswith("ensure_"):
            raise AttributeError(name)

        async def nothing(*args, **kwargs):
            return None
        return nothing

    async def route_to(self, ip: str, default: bool = False) -> Route:
        off_segment = ipaddress.IPv4Address(ip) not in net("198.18.0.0/24")
        return Route("eth0", None, ipaddress.IPv4Address("198.18.0.1") if off_segment else None)

    async def device_state(self, dev, peers=True):
        return None

    async def ensure_route(self, dst, dev, gateway=None, onlink=False, state=None):
        self.table[dst] = (dev, gateway)

    async def delete_route(self, dst, dev=None):
        if dst in self.table and dev in (None, self.table[dst][0]):
            del self.table[dst]

    async def delete_link(self, dev):  # its routes go with it
        self.table = {dst: (d, gw) for dst, (d, gw) in self.table.items() if d != dev}

    async def delete_routes_within(self, network, prefixlen=None, keep=frozenset()):
        gone = [dst for dst in self.table if dst.subnet_of(network) and dst not in keep
                and (prefixlen is None or dst.prefixlen == prefixlen)]
        for dst in gone:
            del self.table[dst]
        return len(gone)

    def direct(self) -> dict[str, str]:
        """The peer routes through the underlay: subnet -> gateway."""
        return {str(dst): str(gw) for dst, (dev, gw) in self.table.items() if dev == "eth0"}


@pytest.fixture
def kernel(monkeypatch) -> FakeNetlink:
    fake = FakeNetlink()
    monkeypatch.setattr(vxlan_user, "Netlink", lambda: fake)
    return fake


def user_backend(config=CONFIG) -> UserVxlanBackend:
    backend = UserVxlanBackend(parse_config(config), Underlay("eth0", ipaddress.IPv4Address("198.18.0.11"), 1500),
                               NodeOptions(vxlan_impl="user"))
    backend.lease = lease(str(OWN), "198.18.0.11")
    return backend


def test_accepted_for_both_implementations():
    config = parse_config(CONFIG)
    assert config.backend.direct_routing and config.backend.to_json()["DirectRouting"] is True
    assert backend_class(config, NodeOptions(vxlan_impl="kernel")) is KernelVxlanBackend
    assert backend_class(config, NodeOptions(vxlan_impl="user")) is UserVxlanBackend


async def test_direct_device_is_the_segment_test_and_needs_the_switch():
    nl = FakeNetlink()
    assert await direct_device(nl, parse_config(CONFIG), ipaddress.IPv4Address(NEAR)) == "eth0"
    assert await direct_device(nl, parse_config(CONFIG), ipaddress.IPv4Address(FAR)) is None
    off = {**CONFIG, "Backend": {"Type": "vxlan"}}
    assert await direct_device(nl, parse_config(off), ipaddress.IPv4Address(NEAR)) is None


async def test_user_peers_on_the_segment_get_a_direct_route_and_stay_in_the_table(kernel):
    backend = user_backend()
    await backend.apply(Batch(added=[lease("10.244.2.0/24", NEAR), lease("10.244.3.0/24", FAR),
                                     lease("10.244.4.0/24", "198.18.0.13", btype="udp")]))
    assert kernel.direct() == {"10.244.2.0/24": NEAR}  # not the far peer, not a non-VXLAN one
    assert backend.peer_subnets() == ["10.244.2.0/24", "10.244.3.0/24"]  # both in the data plane
    assert backend.stats()["direct_peers"] == 1 and backend.stats()["peers"] == 2


async def test_user_peer_switching_between_direct_and_encapsulated(kernel):
    backend = user_backend()
    await backend.apply(Batch(added=[lease("10.244.2.0/24", NEAR)]))
    await backend.apply(Batch(added=[lease("10.244.2.0/24", FAR)]))  # moved behind the router
    assert kernel.direct() == {} and backend.peer_subnets() == ["10.244.2.0/24"]
    assert backend.table.lookup((net("10.244.2.0/24").network_address + 5).packed).node_ip == FAR
    await backend.apply(Batch(added=[lease("10.244.2.0/24", "198.18.0.14")]))  # back on the segment
    assert kernel.direct() == {"10.244.2.0/24": "198.18.0.14"}
    await backend.apply(Batch(removed=[lease("10.244.2.0/24", "198.18.0.14")]))
    assert kernel.direct() == {} and backend.peer_subnets() == [] and backend.stats()["direct_peers"] == 0


async def test_user_reconcile_setup_and_teardown_own_the_direct_routes(kernel, monkeypatch):
    backend = user_backend()
    await backend.apply(Batch(added=[lease("10.244.2.0/24", NEAR)]))
    del kernel.table[net("10.244.2.0/24")]  # an operator deletes it
    await backend.reconcile(kernel)
    assert kernel.direct() == {"10.244.2.0/24": NEAR}

    kernel.table[net("10.244.9.0/24")] = ("eth0", ipaddress.IPv4Address("198.18.0.19"))  # left from before
    monkeypatch.setattr(vxlan_user, "open_tap", lambda *args: -1)
    monkeypatch.setattr(vxlan_user.sysctl, "disable_ipv6", lambda dev: None)
    monkeypatch.setattr(vxlan_user.sysctl, "set_rp_filter", lambda dev, value: None)
    monkeypatch.setattr(vxlan_user.sysctl, "set_accept_local", lambda dev: None)
    await delete_peer_routes(kernel, backend.config, backend.lease)  # the daemon's step before any backend's setup
    await backend.setup(backend.lease)  # stale routes gone, live ones are put back
    assert kernel.direct() == {"10.244.2.0/24": NEAR}
    assert kernel.table[net("10.244.0.0/16")] == ("overlay0", None)

    backend.dev_fd = None  # nothing to close
    await backend.teardown(kernel)
    assert kernel.direct() == {} and backend.stats()["direct_peers"] == 0


async def test_user_without_direct_routing_routes_nothing_directly(kernel):
    backend = user_backend({**CONFIG, "Backend": {"Type": "vxlan"}})
    await backend.apply(Batch(added=[lease("10.244.2.0/24", NEAR)]))
    assert kernel.direct() == {} and backend.peer_subnets() == ["10.244.2.0/24"]
