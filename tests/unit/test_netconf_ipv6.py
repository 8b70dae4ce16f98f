"""IPv6 pools in the network config (issue 17, point 1): flannel's fields and rules.

Vectors marked "flannel" are taken from flannel's pkg/subnet/config_test.go
(TestIPv6ConfigDefaults, TestIPv6ConfigOverrides) and kube-flannel's dual-stack
net-conf.json; the rules they exercise are CheckNetworkConfig's in pkg/subnet/config.go.
"""

import ipaddress
import random

import pytest

from overlayd.errors import ConfigError, NetworkFullError
from overlayd.lease.allocator import choose_subnet, is_free
from overlayd.netconf import parse_config

N6 = ipaddress.IPv6Network
A6 = ipaddress.IPv6Address
DUAL = {"Network": "10.244.0.0/16", "EnableIPv6": True, "IPv6Network": "2001:cafe:42::/56",
        "Backend": {"Type": "vxlan"}}  # kube-flannel's dual-stack net-conf.json


def dual(**fields):
    return parse_config({**DUAL, **fields})


@pytest.mark.parametrize("raw, network, length, first, last", [
    # flannel TestIPv6ConfigDefaults (field names in any case, as Go's encoding/json)
    ({"enableIPv6": True, "ipv6Network": "fc00::/48", "enableIPv4": False},
     "fc00::/48", 64, "fc00:0:0:1::", "fc00:0:0:ffff::"),
    # flannel TestIPv6ConfigOverrides
    ({"EnableIPv6": True, "IPv6Network": "fc00::/48", "IPv6SubnetMin": "fc00:0:0:1::",
      "IPv6SubnetMax": "fc00:0:0:f::", "IPv6SubnetLen": 124, "enableIPv4": False},
     "fc00::/48", 124, "fc00:0:0:1::", "fc00:0:0:f::"),
    # kube-flannel dual stack: a /56 cut into /64s, the first one never handed out
    (DUAL, "2001:cafe:42::/56", 64, "2001:cafe:42:1::", "2001:cafe:42:ff::"),
    # the default length: 64 up to a /62, then prefix + 2 (four subnets)
    ({**DUAL, "IPv6Network": "fd00::/62"}, "fd00::/62", 64, "fd00:0:0:1::", "fd00:0:0:3::"),
    ({**DUAL, "IPv6Network": "fd00::/63"}, "fd00::/63", 65, "fd00:0:0:0:8000::", "fd00:0:0:1:8000::"),
    ({**DUAL, "IPv6Network": "fd00::/124"}, "fd00::/124", 126, "fd00::4", "fd00::c"),
    # zero values mean the default, as in Go
    ({**DUAL, "IPv6SubnetLen": 0, "IPv6SubnetMin": "::", "IPv6SubnetMax": "::"},
     "2001:cafe:42::/56", 64, "2001:cafe:42:1::", "2001:cafe:42:ff::"),
])
def test_ipv6_pools_follow_flannels_defaults(raw, network, length, first, last):
    pool = parse_config(raw).ipv6
    assert (pool.network, pool.subnet_len, pool.subnet_min, pool.subnet_max) == \
        (N6(network), length, A6(first), A6(last))


@pytest.mark.parametrize("fields, message", [
    ({"IPv6Network": None}, 'IPv6Network: not an IPv6 network string such as "fd00:10:244::/56": null'),
    ({"IPv6Network": "10.244.0.0/16"}, "IPv6Network: 10.244.0.0/16 is IPv4, not IPv6"),
    ({"IPv6Network": 42}, "IPv6Network: not an IPv6 network string"),
    ({"IPv6Network": "fd00::1/64"}, "IPv6Network: fd00::1/64 has host bits set"),
    ({"IPv6Network": "fd00::/125"}, "IPv6Network: /125 is too small; the minimum useful prefix is /124"),
    ({"IPv6Network": "::/0"}, "IPv6Network: ::/0 overlaps the reserved ::/8"),
    ({"IPv6Network": "fe80::/56"}, "IPv6Network: fe80::/56 overlaps link-local (fe80::/10)"),
    ({"IPv6Network": "ff02::/56"}, "IPv6Network: ff02::/56 overlaps multicast (ff00::/8)"),
    ({"IPv6SubnetLen": 127}, "IPv6SubnetLen: must be 126 or less"),
    ({"IPv6SubnetLen": 129}, "IPv6SubnetLen: must be between 1 and 128"),
    ({"IPv6SubnetLen": 57}, "IPv6SubnetLen: /57 leaves fewer than four subnets in 2001:cafe:42::/56"),
    ({"IPv6SubnetLen": "64"}, "IPv6SubnetLen: must be an integer"),
    ({"IPv6SubnetMin": "2001:cafe:43::"}, "IPv6SubnetMin: 2001:cafe:43:: is not inside IPv6Network"),
    ({"IPv6SubnetMax": "2001:cafe:42:1::1"}, "IPv6SubnetMax: 2001:cafe:42:1::1 is not on a /64 boundary"),
    ({"IPv6SubnetMin": "10.244.1.0"}, "IPv6SubnetMin: 10.244.1.0 is IPv4, not IPv6"),
    ({"IPv6SubnetMin": "2001:cafe:42:9::", "IPv6SubnetMax": "2001:cafe:42:8::"},
     "IPv6SubnetMin: 2001:cafe:42:9:: is above IPv6SubnetMax 2001:cafe:42:8::"),
])
def test_bad_ipv6_pools_are_one_line_naming_the_field(fields, message):
    with pytest.raises(ConfigError) as err:
        parse_config({**DUAL, **fields})
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("raw, message", [
    ({"Network": "10.244.0.0/16", "EnableIPv6": True}, 'IPv6Network: missing (e.g. "fd00:10:244::/56")'),
    ({"Network": "10.244.0.0/16", "EnableIPv4": False}, "EnableIPv4: false leaves no address family"),
    ({"EnableIPv4": False, "EnableIPv6": False}, "EnableIPv4: false leaves no address family"),
])
def test_families_switched_on_and_off(raw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config(raw)


def test_ipv6_only_ignores_the_ipv4_fields_as_flannel_does():
    cfg = parse_config({"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd00::/56",
                        "Network": "10.244.0.0/16", "SubnetLen": 24})
    assert cfg.ipv4 is None and cfg.ipv6.network == N6("fd00::/56")
    assert cfg.notes == ("Network, SubnetLen: ignored with EnableIPv4 false (as flannel does)",)


def test_an_ipv4_config_has_no_ipv6_pool_and_ignores_the_ipv6_fields():
    cfg = parse_config({"Network": "10.244.0.0/16", "IPv6Network": "fd00::/56"})
    assert cfg.ipv6 is None
    assert cfg.notes == ("IPv6Network: ignored without EnableIPv6 (as flannel does)",)


def test_dual_stack_and_ipv6_only_configs_are_accepted():
    """Every caller acts on IPv6 configs now that every backend carries IPv6 (issue 17)."""
    cfg = parse_config(DUAL)
    assert cfg.ipv4 is not None and str(cfg.ipv6.network) == DUAL["IPv6Network"]
    only6 = parse_config({"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd00::/56"})
    assert only6.ipv4 is None and str(only6.ipv6.network) == "fd00::/56"
    with pytest.raises(ConfigError, match="IPv6SubnetLen: must be 126 or less"):
        parse_config({**DUAL, "IPv6SubnetLen": 127})


def test_a_dual_stack_config_round_trips_through_its_json():
    cfg = dual(IPv6SubnetMin="2001:cafe:42:10::", IPv6SubnetMax="2001:cafe:42:20::")
    out = cfg.to_json()
    assert (out["EnableIPv6"], out["IPv6Network"], out["IPv6SubnetLen"],
            out["IPv6SubnetMin"], out["IPv6SubnetMax"]) == \
        (True, "2001:cafe:42::/56", 64, "2001:cafe:42:10::", "2001:cafe:42:20::")
    assert parse_config(out) == cfg
    assert "EnableIPv6" not in parse_config({"Network": "10.244.0.0/16"}).to_json()


def test_contains_subnet_knows_each_family():
    cfg = dual()
    assert cfg.contains_subnet(N6("2001:cafe:42:7::/64"))
    assert not cfg.contains_subnet(N6("2001:cafe:42::/64"))  # the first subnet is never leased
    assert not cfg.contains_subnet(N6("2001:cafe:42:7::/65"))
    assert cfg.contains_subnet(ipaddress.IPv4Network("10.244.7.0/24"))
    assert not parse_config({"Network": "10.244.0.0/16"}).contains_subnet(N6("2001:cafe:42:7::/64"))


def test_the_allocator_hands_out_ipv6_subnets_from_the_pool():
    pool = dual(IPv6SubnetMin="2001:cafe:42:10::", IPv6SubnetMax="2001:cafe:42:13::").ipv6
    taken = [N6("2001:cafe:42:11::/64"), N6("2001:cafe:42:12::/63"),  # the latter blocks 12 and 13
             ipaddress.IPv4Network("10.244.16.0/20")]  # another family blocks nothing here
    rng = random.Random(1)
    assert {choose_subnet(pool, taken, rng) for _ in range(20)} == {N6("2001:cafe:42:10::/64")}
    assert not is_free(pool, taken, N6("2001:cafe:42:13::/64"))
    with pytest.raises(NetworkFullError, match="all 4 /64 subnets"):
        choose_subnet(pool, taken + [N6("2001:cafe:42:10::/64")])


def test_the_allocator_does_not_enumerate_a_vast_ipv6_pool():
    pool = parse_config({"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd00::/8",
                         "IPv6SubnetLen": 120}).ipv6
    assert pool.subnet_count == 2 ** 112 - 1
    every = [N6("fd00::/8")]
    hole = N6("fdff:ffff:ffff:ffff:ffff:ffff:ffff:fe00/120")
    around = list(N6("fd00::/8").address_exclude(hole))
    assert choose_subnet(pool, around, random.Random(0)) == hole
    with pytest.raises(NetworkFullError):
        choose_subnet(pool, every)
