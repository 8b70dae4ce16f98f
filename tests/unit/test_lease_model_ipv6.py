"""flannel's dual-stack and IPv6-only lease keys and values (issue 17, point 1).

Key vectors are flannel's pkg/subnet/subnet_test.go (TestSubnetNodev4, TestSubnetNodev6,
TestSubnetNodeInvalid); the IPv6-only key is what flannel's MakeSubnetKey writes with
an empty IPv4 subnet. Value vectors are what Go's json.Marshal writes for flannel's
lease.LeaseAttrs (field order PublicIP, PublicIPv6, BackendType, BackendData,
BackendV6Data; a nil *ip.IP6 is null; RawMessage fields are omitempty).
"""

import ipaddress
import json

import pytest

from overlayd.errors import LeaseError
from overlayd.lease.audit import audit, misfit
from overlayd.lease.model import Lease, LeaseAttrs, parse_lease_key, subnet_key
from overlayd.lease.watcher import LeaseWatcher
from overlayd.netconf import parse_config

N4, N6 = ipaddress.IPv4Network, ipaddress.IPv6Network
A4, A6 = ipaddress.IPv4Address, ipaddress.IPv6Address
P = "/coreos.com/network"
V4 = parse_config({"Network": "10.244.0.0/16"})
DUAL = parse_config({"Network": "10.244.0.0/16", "EnableIPv6": True, "IPv6Network": "fd00:10:244::/56"})


@pytest.mark.parametrize("name, subnet, subnet6", [
    ("10.12.13.0-24", N4("10.12.13.0/24"), None),  # flannel TestSubnetNodev4
    ("10.12.13.0-24&fd00:12:13::-56", N4("10.12.13.0/24"), N6("fd00:12:13::/56")),  # TestSubnetNodev6
    ("10.244.3.0-24&fd00:10:244:3::-64", N4("10.244.3.0/24"), N6("fd00:10:244:3::/64")),
    # IPv6 only: known by the IPv6 subnet
    ("0.0.0.0-0&fd00:10:244:3::-64", N6("fd00:10:244:3::/64"), N6("fd00:10:244:3::/64")),
])
def test_flannels_keys_round_trip(name, subnet, subnet6):
    key = f"{P}/subnets/{name}"
    assert parse_lease_key(P, key) == (subnet, subnet6)
    assert parse_lease_key(P, key.encode()) == (subnet, subnet6)
    assert subnet_key(P, subnet, subnet6) == key


@pytest.mark.parametrize("name", [
    # flannel TestSubnetNodeInvalid
    "10.12.13-24", "10.12.13.300-24", "10.12.13.0-24hi", "&2001::-56", "10.12.13.0-24&:12:13:-56",
    "10.12.13.0-24&20011::-56", "10.12.13.0-24&2001-56", "10.12.13.0-24&2001::", "10.12.13.0-24&2001::-56hi",
    # ours: one subnet has one key, spelled as flannel spells it
    "0.0.0.0-0",  # the IPv4 half of an IPv6-only key alone would be 0.0.0.0/0
    "10.12.13.0-24&FD00:12:13::-56", "10.12.13.0-24&fd00:12:13:0::-56", "10.12.13.0-024",
    "10.12.13.0-24&fd00:12:13::1-56", "10.12.13.0-24&fd00:12:13::-129", "10.12.13.0-24&",
    "10.12.13.0-24&10.12.14.0-24",
])
def test_bad_keys_are_lease_errors(name):
    with pytest.raises(LeaseError, match="not a lease key"):
        parse_lease_key(P, f"{P}/subnets/{name}")


FLANNEL_DUAL = ('{"PublicIP":"198.18.0.11","PublicIPv6":"2001:db8::11","BackendType":"vxlan",'
                '"BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:0b"},'
                '"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:06:0b"}}')
FLANNEL_V6_ONLY = ('{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::11","BackendType":"vxlan",'
                   '"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:06:0b"}}')
FLANNEL_V4 = '{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"udp"}'


@pytest.mark.parametrize("raw, ip, ip6, data, data6", [
    (FLANNEL_DUAL, A4("198.18.0.11"), A6("2001:db8::11"), {"VNI": 1, "VtepMAC": "0e:00:00:00:00:0b"},
     {"VNI": 1, "VtepMAC": "0e:00:00:00:06:0b"}),
    (FLANNEL_V6_ONLY, None, A6("2001:db8::11"), None, {"VNI": 1, "VtepMAC": "0e:00:00:00:06:0b"}),
    (FLANNEL_V4, A4("198.18.0.11"), None, None, None),
    ('{"PublicIP":"198.18.0.11","PublicIPv6":"fd00::b","BackendType":"udp","BackendV6Data":null}',
     A4("198.18.0.11"), A6("fd00::b"), None, None),
])
def test_flannels_values_decode_and_round_trip(raw, ip, ip6, data, data6):
    attrs = LeaseAttrs.decode(raw)
    assert (attrs.public_ip, attrs.public_ip6, attrs.backend_data, attrs.backend_v6_data) == (ip, ip6, data, data6)
    assert LeaseAttrs.decode(attrs.encode()) == attrs


def test_our_values_are_what_flannels_decoder_reads():
    """flannel unmarshals PublicIP into ip.IP4 (a dotted string), PublicIPv6 into *ip.IP6
    (a string or null) and the data into json.RawMessage (any object)."""
    dual = json.loads(LeaseAttrs.decode(FLANNEL_DUAL).encode())
    assert dual == json.loads(FLANNEL_DUAL)
    only6 = json.loads(LeaseAttrs(None, "udp", public_ip6=A6("2001:db8::11")).encode())
    assert only6 == {"PublicIP": "0.0.0.0", "PublicIPv6": "2001:db8::11", "BackendType": "udp"}
    v4 = json.loads(LeaseAttrs(A4("198.18.0.11"), "udp").encode())
    assert v4 == {"PublicIP": "198.18.0.11", "BackendType": "udp"}  # as before: no IPv6 fields


@pytest.mark.parametrize("ip6, why", [
    ("::", "PublicIPv6 :: is the unspecified address"),
    ("::1", "PublicIPv6 ::1 is the loopback address"),
    ("ff02::1", "PublicIPv6 ff02::1 is a multicast address"),
    ("fe80::1", "PublicIPv6 fe80::1 is a link-local address"),
    ("::ffff:198.18.0.11", "PublicIPv6 ::ffff:c612:b is an IPv4-mapped address"),
    ("198.18.0.11", "malformed lease value"),
    (42, "PublicIPv6 must be a string"),
])
def test_a_public_ipv6_that_cannot_be_a_node_is_refused(ip6, why):
    raw = json.dumps({"PublicIP": "198.18.0.11", "PublicIPv6": ip6, "BackendType": "udp"})
    with pytest.raises(LeaseError, match=why):
        LeaseAttrs.decode(raw)


def test_no_address_at_all_is_refused_and_bad_v6_data_too():
    with pytest.raises(LeaseError, match="PublicIP 0.0.0.0 is an unspecified"):
        LeaseAttrs.decode('{"PublicIP":"0.0.0.0","PublicIPv6":null}')
    with pytest.raises(LeaseError, match="BackendV6Data"):
        LeaseAttrs.decode('{"PublicIP":"198.18.0.11","BackendV6Data":[1]}')


def test_an_ipv6_only_lease_is_known_by_its_ipv6_subnet():
    attrs = LeaseAttrs(None, "udp", public_ip6=A6("2001:db8::11"))
    six = N6("fd00:10:244:3::/64")
    assert Lease(six, attrs, subnet6=six).subnet == six
    with pytest.raises(ValueError, match="subnet6 must equal it"):
        Lease(six, attrs)


def test_an_ipv4_network_reads_flannels_dual_stack_leases_and_ignores_ipv6_only_ones():
    dual = Lease(N4("10.244.3.0/24"), LeaseAttrs.decode(FLANNEL_DUAL), revision=2,
                 subnet6=N6("fd00:10:244:3::/64"))
    only6 = Lease(N6("fd00:10:244:4::/64"), LeaseAttrs.decode(FLANNEL_V6_ONLY), revision=3,
                  subnet6=N6("fd00:10:244:4::/64"))
    v4 = Lease(N4("10.244.5.0/24"), LeaseAttrs.decode(FLANNEL_V4.replace(".11", ".15")), revision=4)
    assert misfit(only6.subnet, V4) == "an IPv6-only lease, and the network has no IPv6 pool (EnableIPv6)"
    assert audit([only6, dual, v4], V4) == {only6.subnet: [
        "ignored: an IPv6-only lease, and the network has no IPv6 pool (EnableIPv6)"]}
    watcher = LeaseWatcher(config=V4)
    batch = watcher.reset([only6, dual, v4], 10)
    assert set(watcher.peers) == {dual.subnet, v4.subnet}
    assert batch.ignored == [only6]


@pytest.mark.parametrize("subnet, why", [
    ("fd00:10:244:7::/64", None),
    ("fd00:10:245::/64", "outside the IPv6Network fd00:10:244::/56"),
    ("fd00:10:244:7::/65", "not a /64 (IPv6SubnetLen)"),
    ("fd00:10:244::/64", "below IPv6SubnetMin fd00:10:244:1::"),
])
def test_ipv6_only_leases_are_checked_against_the_ipv6_pool(subnet, why):
    assert misfit(N6(subnet), DUAL) == why
