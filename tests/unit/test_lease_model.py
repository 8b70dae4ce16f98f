import ipaddress
import json

import pytest

from overlayd.errors import LeaseError
from overlayd.lease.model import (LeaseAttrs, config_key, parse_subnet_key, subnet_key,
                                  subnets_prefix)

N = ipaddress.IPv4Network


@pytest.mark.parametrize("prefix, subnet, key", [
    ("/coreos.com/network", "10.244.3.0/24", "/coreos.com/network/subnets/10.244.3.0-24"),
    ("/coreos.com/network/", "10.244.3.0/24", "/coreos.com/network/subnets/10.244.3.0-24"),
    ("/x", "10.0.0.128/25", "/x/subnets/10.0.0.128-25"),
])
def test_subnet_key_round_trip(prefix, subnet, key):
    assert subnet_key(prefix, N(subnet)) == key
    assert parse_subnet_key(prefix, key) == N(subnet)
    assert parse_subnet_key(prefix, key.encode()) == N(subnet)


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
        parse_subnet_key("/coreos.com/network", key)


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
