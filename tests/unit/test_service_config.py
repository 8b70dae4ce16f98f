"""ServiceNetwork and NodePortRange in the network config (issue 22): vectors."""

import ipaddress

import pytest

from overlayd.errors import ConfigError
from overlayd.netconf import ServiceRange, parse_config

NET = {"Network": "10.244.0.0/16"}


@pytest.mark.parametrize("extra, network, lo, hi", [
    ({"ServiceNetwork": "10.96.0.0/16"}, "10.96.0.0/16", 30000, 32767),
    ({"servicenetwork": "10.96.0.0/12"}, "10.96.0.0/12", 30000, 32767),  # names ignore case, as Go's JSON
    ({"ServiceNetwork": "10.96.0.0/29", "NodePortRange": "30000-30010"}, "10.96.0.0/29", 30000, 30010),
    ({"ServiceNetwork": "192.168.0.0/24", "NodePortRange": "40000-40000"}, "192.168.0.0/24", 40000, 40000),
])
def test_valid_service_ranges(extra, network, lo, hi):
    cfg = parse_config({**NET, **extra})
    assert cfg.services == ServiceRange(ipaddress.IPv4Network(network), lo, hi)
    assert cfg.to_json()["ServiceNetwork"] == network
    assert cfg.to_json()["NodePortRange"] == f"{lo}-{hi}"
    assert parse_config(cfg.to_json()) == cfg  # round trip


def test_no_service_network_means_no_services():
    cfg = parse_config(NET)
    assert cfg.services is None
    assert "ServiceNetwork" not in cfg.to_json()


def test_cluster_ip_count():
    cfg = parse_config({**NET, "ServiceNetwork": "10.96.0.0/29"})
    assert cfg.services.first_ip == ipaddress.IPv4Address("10.96.0.1")
    assert cfg.services.last_ip == ipaddress.IPv4Address("10.96.0.6")


@pytest.mark.parametrize("extra, message", [
    ({"ServiceNetwork": "10.244.0.0/20"}, "ServiceNetwork: 10.244.0.0/20 overlaps Network 10.244.0.0/16"),
    ({"ServiceNetwork": "10.0.0.0/8"}, "ServiceNetwork: /8 is too large"),
    ({"ServiceNetwork": "10.96.0.0/30"}, "ServiceNetwork: /30 is too small"),
    ({"ServiceNetwork": "10.96.0.1/16"}, "ServiceNetwork: 10.96.0.1/16 has host bits set"),
    ({"ServiceNetwork": 5}, "ServiceNetwork: not an IPv4 network string"),
    ({"ServiceNetwork": "fd00::/112"}, "ServiceNetwork: fd00::/112 is IPv6, not IPv4"),
    ({"ServiceNetwork": "127.0.0.0/16"}, "ServiceNetwork: 127.0.0.0/16 overlaps loopback"),
    ({"NodePortRange": "30000-32767"}, "NodePortRange: given without a ServiceNetwork"),
    ({"ServiceNetwork": "10.96.0.0/16", "NodePortRange": "32767-30000"},
     "NodePortRange: 32767 is above 30000"),
    ({"ServiceNetwork": "10.96.0.0/16", "NodePortRange": "0-10"}, "NodePortRange: ports are 1-65535"),
    ({"ServiceNetwork": "10.96.0.0/16", "NodePortRange": "30000"}, "NodePortRange: not a range such as"),
    ({"ServiceNetwork": "10.96.0.0/16", "NodePortRange": 30000}, "NodePortRange: not a range such as"),
    ({"ServiceNetwork": "10.96.0.0/16", "NodePortRange": "8000-9000"},
     "NodePortRange: 8000-9000 holds Backend.Port 8472"),
])
def test_invalid_service_ranges(extra, message):
    with pytest.raises(ConfigError) as err:
        parse_config({**NET, **extra})
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)
