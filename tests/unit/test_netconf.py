import ipaddress

import pytest

from overlayd.errors import ConfigError
from overlayd.netconf import parse_config

A = ipaddress.IPv4Address


@pytest.mark.parametrize("raw, subnet_len, smin, smax, btype, port", [
    ({"Network": "10.244.0.0/16"}, 24, "10.244.1.0", "10.244.255.0", "udp", 8472),
    ({"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "udp", "Port": 8472}},
     24, "10.244.1.0", "10.244.255.0", "udp", 8472),
    ({"Network": "10.0.0.0/8"}, 24, "10.0.1.0", "10.255.255.0", "udp", 8472),
    ({"Network": "10.244.0.0/22"}, 24, "10.244.1.0", "10.244.3.0", "udp", 8472),
    ({"Network": "10.244.0.0/23"}, 25, "10.244.0.128", "10.244.1.128", "udp", 8472),
    ({"Network": "10.244.0.0/28"}, 30, "10.244.0.4", "10.244.0.12", "udp", 8472),
    ({"Network": "10.244.0.0/16", "SubnetLen": 26}, 26, "10.244.0.64", "10.244.255.192", "udp", 8472),
    ({"Network": "10.244.0.0/16", "SubnetMin": "10.244.10.0", "SubnetMax": "10.244.20.0"},
     24, "10.244.10.0", "10.244.20.0", "udp", 8472),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}, 24, "10.244.1.0", "10.244.255.0", "vxlan", 8472),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "Port": 4789, "VNI": 42}},
     24, "10.244.1.0", "10.244.255.0", "vxlan", 4789),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}, 24, "10.244.1.0", "10.244.255.0", "host-gw", 8472),
])
def test_valid_configs_and_defaults(raw, subnet_len, smin, smax, btype, port):
    cfg = parse_config(raw)
    assert cfg.subnet_len == subnet_len
    assert cfg.subnet_min == A(smin)
    assert cfg.subnet_max == A(smax)
    assert cfg.backend.type == btype
    assert cfg.backend.port == port


def test_json_text_and_round_trip():
    cfg = parse_config('{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 7}}')
    assert parse_config(cfg.to_json()) == cfg
    assert cfg.backend.vni == 7


@pytest.mark.parametrize("raw, field", [
    ("not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ({}, "Network: missing"),
    ({"Network": "banana"}, "Network"),
    ({"Network": 42}, "Network"),
    ({"Network": "10.244.1.0/16"}, "host bits"),
    ({"Network": "10.244.0.0/29"}, "Network: /29 is too small"),
    ({"Network": "10.244.0.0/16", "SubnetLen": 31}, "SubnetLen"),
    ({"Network": "10.244.0.0/16", "SubnetLen": 17}, "SubnetLen"),
    ({"Network": "10.244.0.0/16", "SubnetLen": "24"}, "SubnetLen: must be an integer"),
    ({"Network": "10.244.0.0/16", "SubnetLen": True}, "SubnetLen: must be an integer"),
    ({"Network": "10.244.0.0/16", "SubnetMin": "10.245.0.0"}, "SubnetMin: 10.245.0.0 is not inside"),
    ({"Network": "10.244.0.0/16", "SubnetMax": "10.243.255.0"}, "SubnetMax"),
    ({"Network": "10.244.0.0/16", "SubnetMin": "10.244.1.5"}, "SubnetMin: 10.244.1.5 is not on a /24 boundary"),
    ({"Network": "10.244.0.0/16", "SubnetMin": "nope"}, "SubnetMin: not an IPv4"),
    ({"Network": "10.244.0.0/16", "SubnetMin": "10.244.9.0", "SubnetMax": "10.244.2.0"}, "SubnetMin"),
    ({"Network": "10.244.0.0/16", "Bogus": 1}, "Bogus: unknown field"),
    ({"Network": "10.244.0.0/16", "Backend": "udp"}, "Backend: must be a JSON object"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "gre"}}, "Backend.Type"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "udp", "Port": 0}}, "Backend.Port"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "udp", "Port": 70000}}, "Backend.Port"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "udp", "VNI": 1}}, "Backend.VNI: not a setting of the udp"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1 << 24}}, "Backend.VNI"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": -1}}, "Backend.VNI"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "MTU": 100}}, "Backend.MTU"),
    # JSON nested too deeply for the parser is one line, not a RecursionError
    ("[" * 100000, "config is not valid JSON: nested too deeply"),
    ('{"Network": ' * 100000, "config is not valid JSON: nested too deeply"),
    (b"[" * 100000, "config is not valid JSON: nested too deeply"),
    # numbers are not addresses (ipaddress reads 123 as 0.0.0.123/32, 5 as 0.0.0.5)
    ({"Network": 123}, 'Network: not an IPv4 network string such as "10.244.0.0/16": 123'),
    ({"Network": 167772160}, "Network: not an IPv4 network string"),
    ({"Network": ["10.0.0.0", 8]}, "Network: not an IPv4 network string"),
    ({"Network": "10.244.0.0"}, "Network: not an IPv4 network string"),          # no prefix: a /32
    ({"Network": "10.0.0.0/255.0.0.0"}, "Network: not an IPv4 network string"),  # CIDR only, as flannel
    ({"Network": "10.244.0.0/16", "SubnetMin": 5}, "SubnetMin: not an IPv4 address string"),
    ({"Network": "10.244.0.0/16", "SubnetMax": 183304192}, "SubnetMax: not an IPv4 address string"),
    ({"Network": "10.244.0.0/16", "SubnetMin": None}, "SubnetMin: not an IPv4 address string"),
    # networks that cannot carry pod traffic, and what overlaps them
    ({"Network": "0.0.0.0/0"}, "Network: 0.0.0.0/0 overlaps 'this network' (0.0.0.0/8)"),
    ({"Network": "0.1.0.0/16"}, "Network: 0.1.0.0/16 overlaps 'this network'"),
    ({"Network": "127.0.0.0/8"}, "Network: 127.0.0.0/8 overlaps loopback"),
    ({"Network": "127.1.0.0/16"}, "Network: 127.1.0.0/16 overlaps loopback"),
    ({"Network": "64.0.0.0/2"}, "Network: 64.0.0.0/2 overlaps loopback"),
    ({"Network": "224.0.0.0/4"}, "Network: 224.0.0.0/4 overlaps multicast"),
    ({"Network": "239.1.0.0/16"}, "overlaps multicast"),
    ({"Network": "240.0.0.0/4"}, "Network: 240.0.0.0/4 overlaps reserved"),
    ({"Network": "255.255.255.0/24"}, "overlaps reserved"),
    ({"Network": "169.254.0.0/16"}, "Network: 169.254.0.0/16 overlaps link-local"),
    ({"Network": "168.0.0.0/6"}, "overlaps link-local"),
    # absurd subnet counts (the allocator used to list them all)
    ({"Network": "10.0.0.0/8", "SubnetLen": 30}, "SubnetLen: /30 gives 4194303 subnets"),
    ({"Network": "10.0.0.0/8", "SubnetLen": 25}, "SubnetLen: /25 gives 131071 subnets"),
    ({"Network": "100.64.0.0/10", "SubnetLen": 28}, "more than the 65536 supported"),
    # error messages stay short even for huge values
    ({"Network": "x" * 100000}, "Network: not an IPv4 network string"),
    ({"Network": "10.244.0.0/16", "SubnetLen": "9" * 100000}, "SubnetLen: must be an integer"),
    ({"Network": "10.244.0.0/16", "k" * 100000: 1}, "kkk...: unknown field"),
])
def test_invalid_configs_name_the_field(raw, field):
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    msg = str(err.value)
    assert field in msg
    assert "\n" not in msg and len(msg) < 200


@pytest.mark.parametrize("raw, count", [
    ({"Network": "10.0.0.0/8"}, 65535),
    ({"Network": "10.0.0.0/9", "SubnetLen": 25}, 65535),
    ({"Network": "10.0.0.0/8", "SubnetLen": 24, "SubnetMin": "10.0.0.0"}, 65536),   # the cap itself
    ({"Network": "10.0.0.0/8", "SubnetLen": 30, "SubnetMin": "10.0.0.4", "SubnetMax": "10.0.3.252"}, 255),
    ({"Network": "100.64.0.0/10"}, 16383),        # CGNAT space is fine
    ({"Network": "192.168.0.0/16"}, 255),
    ({"Network": "172.16.0.0/12"}, 4095),
])
def test_subnet_count_is_arithmetic_and_capped(raw, count):
    assert parse_config(raw).subnet_count == count


def test_contains_subnet_from_min_to_max():
    cfg = parse_config({"Network": "10.244.0.0/22"})
    assert cfg.subnet_count == 3
    assert cfg.contains_subnet(ipaddress.IPv4Network("10.244.2.0/24"))
    assert not cfg.contains_subnet(ipaddress.IPv4Network("10.244.0.0/24"))
    assert not cfg.contains_subnet(ipaddress.IPv4Network("10.244.2.0/25"))


@pytest.mark.parametrize("backend, underlay, mtu", [
    ({"Type": "udp"}, 1500, 1472),
    ({"Type": "vxlan"}, 1500, 1450),
    ({"Type": "host-gw"}, 1500, 1500),
    ({"Type": "udp"}, 9000, 8972),
    ({"Type": "vxlan", "MTU": 1400}, 1500, 1400),
])
def test_overlay_mtu(backend, underlay, mtu):
    cfg = parse_config({"Network": "10.244.0.0/16", "Backend": backend})
    assert cfg.backend.overlay_mtu(underlay) == mtu
