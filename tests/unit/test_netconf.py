import ipaddress

import pytest

from overlayd.errors import ConfigError
from overlayd.netconf import parse_config

A = ipaddress.IPv4Address

# net-conf.json exactly as flannel's Documentation/kube-flannel.yml ships it (v0.28)
KUBE_FLANNEL_NET_CONF = """\
{
  "Network": "10.244.0.0/16",
  "EnableNFTables": false,
  "Backend": {
    "Type": "vxlan"
  }
}
"""

# what the Helm chart (chart/kube-flannel/templates/config.yaml) renders with every vxlan option
CHART_VXLAN_ALL_OPTIONS = """\
{
  "Network": "10.244.0.0/16",
  "EnableNFTables": true,
  "Backend": {
    "Port": 4789,
    "VNI": 4096,
    "GBP": false,
    "DirectRouting": false,
    "MTU": 1500,
    "MacPrefix": "0E-2A",
    "Type": "vxlan"
  }
}
"""


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
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "udp", "Port": -1}}, "Backend.Port"),
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
    # Backend.MTU is flannel's: the MTU of the encapsulated packets, the overlay gets less
    ({"Type": "vxlan", "MTU": 1400}, 1500, 1350),
    ({"Type": "vxlan", "MTU": 9000}, 1500, 8950),
    ({"Type": "udp", "MTU": 1400}, 9000, 1372),
    ({"Type": "vxlan", "MTU": 0}, 1500, 1450),  # Go's zero value: not set
])
def test_overlay_mtu(backend, underlay, mtu):
    cfg = parse_config({"Network": "10.244.0.0/16", "Backend": backend})
    assert cfg.backend.overlay_mtu(underlay) == mtu


@pytest.mark.parametrize("raw, backend, notes", [
    # kube-flannel's manifest and the Helm chart, as shipped
    (KUBE_FLANNEL_NET_CONF, {"type": "vxlan", "port": 8472, "vni": 1, "mtu": None},
     ["EnableNFTables: false: overlayd always uses nftables"]),
    (CHART_VXLAN_ALL_OPTIONS, {"type": "vxlan", "port": 4789, "vni": 4096, "mtu": 1500, "direct_routing": False},
     ["Backend.MacPrefix: ignored (Windows only in flannel)"]),
    ('{"Network": "10.244.0.0/16", "Backend": {"Port": 8285, "Type": "udp"}}', {"type": "udp", "port": 8285}, []),
    ('{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}', {"type": "host-gw"}, []),
    # switches that ask for nothing overlayd lacks
    ({"Network": "10.244.0.0/16", "EnableIPv4": True, "EnableIPv6": False, "EnableNFTables": True}, {"type": "udp"}, []),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "GBP": False, "Learning": False,
                                              "DirectRouting": False, "Name": "flannel.4096"}},
     {"type": "vxlan", "direct_routing": False}, ["Backend.Name: ignored (Windows only in flannel)"]),
    # flannel ignores the IPv6 fields unless EnableIPv6 is true
    ({"Network": "10.244.0.0/16", "IPv6Network": "fd00::/56", "IPv6SubnetLen": 64, "EnableIPv6": False},
     {"type": "udp"}, ["IPv6Network, IPv6SubnetLen: ignored without EnableIPv6"]),
    # Go's encoding/json matches field names ignoring case
    ({"network": "10.244.0.0/16", "subnetlen": 25, "backend": {"type": "vxlan", "vni": 7, "port": 4789}},
     {"type": "vxlan", "vni": 7, "port": 4789}, []),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "directRouting": False, "Vni": 2}},
     {"type": "vxlan", "vni": 2}, []),
    # Go's zero values mean "not set": the defaults
    ({"Network": "10.244.0.0/16", "SubnetLen": 0, "SubnetMin": "0.0.0.0", "SubnetMax": "0.0.0.0",
      "Backend": {"Type": "vxlan", "Port": 0, "MTU": 0}}, {"type": "vxlan", "port": 8472, "mtu": None}, []),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 0}}, {"type": "vxlan", "vni": 0}, []),
])
def test_flannel_configs_as_shipped_are_accepted(raw, backend, notes):
    cfg = parse_config(raw)
    assert cfg.network == ipaddress.IPv4Network("10.244.0.0/16")
    for name, value in backend.items():
        assert getattr(cfg.backend, name) == value, name
    assert len(cfg.notes) == len(notes)
    for note, prefix in zip(cfg.notes, notes):
        assert note.startswith(prefix) and "\n" not in note
    assert parse_config(cfg.to_json()) == cfg


def test_zero_values_are_the_defaults():
    zeros = parse_config({"Network": "10.244.0.0/16", "SubnetLen": 0, "SubnetMin": "0.0.0.0",
                          "Backend": {"Type": "udp", "Port": 0}})
    assert zeros == parse_config({"Network": "10.244.0.0/16"})


@pytest.mark.parametrize("raw, message", [
    # asks for what overlayd lacks: one line naming the field and why
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "GBP": True}},
     "Backend.GBP: true is not supported by overlayd: no VXLAN Group Based Policy"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "Learning": True}},
     "Backend.Learning: true is not supported by overlayd"),
    # wrong types
    ({"Network": "10.244.0.0/16", "EnableIPv6": "false"}, 'EnableIPv6: must be true or false, got "false"'),
    ({"Network": "10.244.0.0/16", "EnableNFTables": 1}, "EnableNFTables: must be true or false, got 1"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "GBP": "no"}}, "Backend.GBP: must be true or false"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "MacPrefix": 14}}, "Backend.MacPrefix: must be a string"),
    # vxlan settings are not the udp or host-gw backend's
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "udp", "DirectRouting": False}},
     "Backend.DirectRouting: not a setting of the udp backend"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw", "MTU": 1400}}, "Backend.MTU: not a setting of the host-gw"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "ListenPort": 51820}},
     "Backend.ListenPort: not a setting of the vxlan backend"),
    # one field given twice in different cases
    ({"Network": "10.244.0.0/16", "network": "10.245.0.0/16"}, "Network: given twice"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "type": "udp"}}, "Backend.Type: given twice"),
    # the zero value of an address is the default, other addresses outside Network are not
    ({"Network": "10.244.0.0/16", "SubnetMin": "0.0.0.1"}, "SubnetMin: 0.0.0.1 is not inside"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "MTU": 500}}, "Backend.MTU: must be between 576"),
])
def test_flannel_fields_overlayd_lacks_are_refused_in_one_line(raw, message):
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert message in str(err.value)
    assert "\n" not in str(err.value) and len(str(err.value)) < 200


# every backend flannel registers (pkg/backend/*) or registered (the retired cloud ones) but ours
@pytest.mark.parametrize("btype", ["ipip", "ipsec", "alloc", "extension", "tencent-vpc", "ali-vpc", "aws-vpc", "gce"])
def test_flannel_backends_overlayd_lacks_are_named(btype):
    with pytest.raises(ConfigError) as err:
        parse_config({"Network": "10.244.0.0/16", "Backend": {"Type": btype}})
    assert str(err.value) == (f"Backend.Type: {btype} is a flannel backend not supported by overlayd "
                              "(use one of: udp, vxlan, host-gw, wireguard)")




@pytest.mark.parametrize("backend, btype", [
    ({"Type": "VXLAN", "VNI": 2}, "vxlan"), ({"Type": "Vxlan"}, "vxlan"), ({"Type": "UDP", "Port": 8285}, "udp"),
    ({"Type": "Host-GW"}, "host-gw"), ({"Type": "HOST-GW"}, "host-gw"),
])
def test_backend_type_ignores_case_as_in_flannel(backend, btype):
    """flannel's backend manager (pkg/backend/manager.go, GetBackend) lowercases the type
    (``strings.ToLower(backendType)``) before looking it up, so ``"VXLAN"`` runs vxlan;
    overlayd accepts it too and stores the lowercase name."""
    cfg = parse_config({"Network": "10.244.0.0/16", "Backend": backend})
    assert cfg.backend.type == btype
    assert cfg.to_json()["Backend"]["Type"] == btype
    assert parse_config(cfg.to_json()) == cfg


def test_backend_type_case_does_not_open_other_backends_settings():
    with pytest.raises(ConfigError, match="Backend.VNI: not a setting of the udp backend"):
        parse_config({"Network": "10.244.0.0/16", "Backend": {"Type": "UDP", "VNI": 1}})
    with pytest.raises(ConfigError, match="Backend.Port: not a setting of the wireguard backend"):
        parse_config({"Network": "10.244.0.0/16", "Backend": {"Type": "WireGuard", "Port": 1}})


@pytest.mark.parametrize("backend", [{}, {"Port": 8285}, {"Type": ""}, None, {"Type": 5}, {"Type": None}])
def test_a_backend_without_a_type_is_refused_as_in_flannel(backend):
    """flannel (pkg/subnet/config.go) keeps ``Backend`` as a ``json.RawMessage``;
    ``parseBackendType`` returns "udp" only when it is empty (no Backend field at all) and
    otherwise decodes ``struct{ Type string }`` from it: ``{}`` gives the type "" (and so
    does ``null``, which Go keeps as the raw bytes ``null``, golang/go#40495), for which
    GetBackend (pkg/backend/manager.go) fails with "unknown backend type"; a Type that is
    not a string fails to decode. overlayd refuses all of them, in one line."""
    with pytest.raises(ConfigError) as err:
        parse_config({"Network": "10.244.0.0/16", "Backend": backend})
    assert str(err.value).startswith("Backend")
    assert "\n" not in str(err.value)


def test_no_backend_at_all_is_udp_as_in_flannel():
    """``parseBackendType``: ``if len(be) == 0 { return "udp", nil }`` (no Backend field)."""
    assert parse_config({"Network": "10.244.0.0/16"}).backend.type == "udp"
