import ipaddress
import json

import pytest

from overlayd.errors import LeaseError
from overlayd.lease.model import (LeaseAttrs, config_key, parse_lease_key, subnet_key,
                                  subnets_prefix)

N = ipaddress.IPv4Network


@pytest.mark.parametrize("prefix, subnet, key", [
    ("/coreos.com/network", "10.244.3.0/24", "/coreos.com/network/subnets/10.244.3.0-24"),
    ("/coreos.com/network/", "10.244.3.0/24", "/coreos.com/network/subnets/10.244.3.0-24"),
    ("/x", "10.0.0.128/25", "/x/subnets/10.0.0.128-25"),
])
def test_subnet_key_round_trip(prefix, subnet, key):
    assert subnet_key(prefix, N(subnet)) == key
    assert parse_lease_key(prefix, key) == (N(subnet), None)
    assert parse_lease_key(prefix, key.encode()) == (N(subnet), None)


@pytest.mark.parametrize("key", [
    "/coreos.com/network/config",
    "/coreos.com/network/subnets/10.244.3.0",
    "/coreos.com/network/subnets/10.244.3.0-x",
    "/coreos.com/network/subnets/10.244.3.1-24",
    "/coreos.com/network/subnets/300.1.1.0-24",
    "/other/subnets/10.244.3.0-24",
])
def test_bad_keys(key):
    with pytest.raises(LeaseError):
        parse_lease_key("/coreos.com/network", key)


def test_prefix_keys():
    assert config_key("/coreos.com/network") == "/coreos.com/network/config"
    assert subnets_prefix("/p/") == "/p/subnets/"


@pytest.mark.parametrize("raw, ip, btype, data", [
    ('{"PublicIP":"198.18.0.11","BackendType":"udp"}', "198.18.0.11", "udp", None),
    ('{"PublicIP":"198.18.0.11","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}',
     "198.18.0.11", "vxlan", {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:ff"}),
    # flannel writes BackendData null for udp and adds PublicIPv6 when dual-stack
    ('{"PublicIP":"198.18.0.12","PublicIPv6":null,"BackendType":"host-gw","BackendData":null}',
     "198.18.0.12", "host-gw", None),
])
def test_decode_flannel_lease_json(raw, ip, btype, data):
    attrs = LeaseAttrs.decode(raw)
    assert str(attrs.public_ip) == ip
    assert attrs.backend_type == btype
    assert attrs.backend_data == data
    assert LeaseAttrs.decode(attrs.encode()) == attrs


def test_encode_is_flannel_shape():
    attrs = LeaseAttrs(ipaddress.IPv4Address("198.18.0.11"), "vxlan", {"VNI": 1, "VtepMAC": "02:00:00:00:00:01"})
    assert json.loads(attrs.encode()) == {
        "PublicIP": "198.18.0.11", "BackendType": "vxlan",
        "BackendData": {"VNI": 1, "VtepMAC": "02:00:00:00:00:01"}}
    udp = LeaseAttrs(ipaddress.IPv4Address("198.18.0.11"), "udp")
    assert "BackendData" not in json.loads(udp.encode())


@pytest.mark.parametrize("raw", [
    "", "{", "[]", '{"BackendType":"udp"}', '{"PublicIP":"nope"}',
    '{"PublicIP":"1.2.3.4","BackendData":[1]}', '{"PublicIP":"1.2.3.4","BackendType":5}',
])
def test_decode_rejects_garbage(raw):
    with pytest.raises(LeaseError):
        LeaseAttrs.decode(raw)


@pytest.mark.parametrize("public_ip, why", [
    ("0.0.0.0", "PublicIP 0.0.0.0 is an unspecified"),
    ("0.1.2.3", "PublicIP 0.1.2.3 is an unspecified"),
    ("255.255.255.255", "PublicIP 255.255.255.255 is the broadcast address"),
    ("224.0.0.1", "PublicIP 224.0.0.1 is a multicast address"),
    ("239.255.0.9", "multicast"),
    ("127.0.0.1", "PublicIP 127.0.0.1 is a loopback address"),
    ("127.9.9.9", "loopback"),
    ("240.0.0.1", "PublicIP 240.0.0.1 is a reserved"),
    # numbers are not addresses (ipaddress reads 3325165579 as 198.51.100.11)
    (3325165579, "PublicIP must be a string"),
    (None, "PublicIP must be a string"),
])
def test_decode_refuses_a_public_ip_that_is_not_unicast(public_ip, why):
    raw = json.dumps({"PublicIP": public_ip, "BackendType": "udp"})
    with pytest.raises(LeaseError, match=why):
        LeaseAttrs.decode(raw)


@pytest.mark.parametrize("public_ip", ["198.18.0.11", "10.0.0.1", "169.254.3.4", "100.64.0.1", "8.8.8.8"])
def test_decode_accepts_unicast_public_ips(public_ip):
    raw = json.dumps({"PublicIP": public_ip, "BackendType": "udp"})
    assert str(LeaseAttrs.decode(raw).public_ip) == public_ip


def test_decode_of_deeply_nested_json_is_a_lease_error():
    with pytest.raises(LeaseError, match="malformed lease value"):
        LeaseAttrs.decode("[" * 100000)
