"""The node's IPv6 underlay in the backend interface (issue 17, point 2): ``Underlay.public_ip6`` (and
``address6``, the IPv6 tunnels' local end), published by ``Backend.lease_attrs`` as flannel's
``PublicIPv6`` with the ``backend_v6_data()`` hook as ``BackendV6Data``."""

import ipaddress
import json

from overlayd.backend.base import Backend, NodeOptions, Underlay
from overlayd.backend import create_backend
from overlayd.netconf import parse_config
from overlayd.plumbing.iface import Interface, Route, choose, families

IP, IP6 = ipaddress.IPv4Address("198.18.0.11"), ipaddress.IPv6Address("2001:db8::11")
NAT6 = ipaddress.IPv6Address("2001:db8:ffff::9")
DUAL = parse_config({"Network": "10.244.0.0/16", "EnableIPv6": True, "IPv6Network": "fd00:10:244::/56",
                     "Backend": {"Type": "udp"}})


class Plain(Backend):
    """A backend that only says what it publishes."""

    type_name = "plain"

    async def setup(self, lease):
        pass

    async def apply(self, batch):
        pass

    def peer_subnets(self):
        return []


class WithV6Data(Plain):
    def backend_data(self):
        return {"VNI": 1, "VtepMAC": "0e:00:00:00:00:04"}

    def backend_v6_data(self):
        return {"VNI": 1, "VtepMAC": "0e:00:00:00:00:06"}


def test_underlay_ipv6_fields_default_as_ipv4_ones():
    assert Underlay("eth0", IP, 1500).public_ip6 is None and Underlay("eth0", IP, 1500).address6 is None
    u = Underlay("eth0", IP, 1500, public_ip6=IP6)
    assert (u.address, u.address6) == (IP, IP6)  # no NAT: the public IPs are the tunnels' ends
    u = Underlay("eth0", None, 1500, public_ip6=NAT6, address6=IP6)  # IPv6 only, behind NAT66
    assert (u.public_ip, u.address, u.public_ip6, u.address6) == (None, None, NAT6, IP6)


def test_lease_attrs_publish_public_ipv6_and_backend_v6_data():
    attrs = WithV6Data(DUAL, Underlay("eth0", IP, 1500, public_ip6=NAT6, address6=IP6), NodeOptions()).lease_attrs()
    assert json.loads(attrs.encode()) == {
        "PublicIP": "198.18.0.11", "PublicIPv6": "2001:db8:ffff::9", "BackendType": "plain",
        "BackendData": {"VNI": 1, "VtepMAC": "0e:00:00:00:00:04"},
        "BackendV6Data": {"VNI": 1, "VtepMAC": "0e:00:00:00:00:06"}}


def test_backend_v6_data_is_none_by_default_and_ipv4_leases_are_unchanged():
    plain = Plain(DUAL, Underlay("eth0", IP, 1500), NodeOptions())
    assert plain.backend_v6_data() is None
    assert json.loads(plain.lease_attrs().encode()) == {"PublicIP": "198.18.0.11", "BackendType": "plain"}
    ipv6_only = Plain(DUAL, Underlay("eth0", None, 1500, public_ip6=IP6), NodeOptions()).lease_attrs()
    assert json.loads(ipv6_only.encode()) == {"PublicIP": "0.0.0.0", "PublicIPv6": "2001:db8::11",
                                              "BackendType": "plain"}  # flannel's IPv6-only lease


def test_every_registered_backend_publishes_the_public_ipv6():
    """udp (and the others through the base) carry PublicIPv6 in a dual-stack lease."""
    backend = create_backend(DUAL, Underlay("eth0", IP, 1500, public_ip6=IP6), NodeOptions())
    assert backend.lease_attrs().public_ip6 == IP6


def test_the_daemon_s_path_from_config_to_lease_attrs():
    """families(config) -> choose(...) -> Underlay.from_choice -> lease_attrs, as daemon.py chains them."""
    node = [Interface("eth0", (IP,), 1400, (IP6,))]
    ipv4_only = parse_config({"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}})
    ipv6_only = parse_config({"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd00:10:244::/56",
                              "Backend": {"Type": "udp"}})
    assert (families(ipv4_only), families(DUAL), families(ipv6_only)) == ((4,), (4, 6), (6,))
    seen = {}
    for name, config in (("ipv4", ipv4_only), ("dual", DUAL), ("ipv6", ipv6_only)):
        choice = choose(node, ifaces=("eth0",), public_ip6=str(NAT6), families=families(config),
                        default_route=Route("eth0"), default_route6=Route("eth0"))
        underlay = Underlay.from_choice(choice)
        assert (underlay.iface, underlay.mtu) == ("eth0", 1400)
        assert underlay.address6 == (IP6 if 6 in families(config) else None)
        attrs = Plain(config, underlay, NodeOptions()).lease_attrs()
        seen[name] = (attrs.public_ip, attrs.public_ip6)
    assert seen == {"ipv4": (IP, None), "dual": (IP, NAT6), "ipv6": (None, NAT6)}
