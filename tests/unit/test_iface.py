"""Underlay interface selection (flannel's --iface, --iface-regex, --iface-can-reach, --public-ip): vectors
for the pure :func:`overlayd.plumbing.iface.choose`, and the flags through click's CliRunner."""

import ipaddress

import pytest
from click.testing import CliRunner

from overlayd.cli import daemon as daemon_cli
from overlayd.errors import ConfigError
from overlayd.plumbing.iface import Interface, Route, choose

A = ipaddress.IPv4Address


def iface(name, *addresses, mtu=1500):
    return Interface(name, tuple(A(a) for a in addresses), mtu)


# ifindex order, as the kernel lists them
NODE = [
    iface("lo", "127.0.0.1", mtu=65536),
    iface("eth0", "198.18.0.11", "198.18.0.99"),
    iface("eth1", "192.0.2.7", mtu=9000),
    iface("bond0"),  # no IPv4 address
    iface("eth2", "198.19.0.5"),
]
DEFAULT = Route("eth0", A("198.18.0.11"))

# (flags, expected (iface, address, public IP, MTU)): flannel's order of precedence
CHOICES = [
    ({}, ("eth0", "198.18.0.11", "198.18.0.11", 1500)),  # the default route's interface
    ({"default_route": Route("eth0")}, ("eth0", "198.18.0.11", "198.18.0.11", 1500)),  # no prefsrc: first address
    ({"public_ip": "192.0.2.7"}, ("eth1", "192.0.2.7", "192.0.2.7", 9000)),  # the interface holding it
    ({"public_ip": "198.18.0.99"}, ("eth0", "198.18.0.99", "198.18.0.99", 1500)),  # a second address counts
    ({"ifaces": ("eth1",)}, ("eth1", "192.0.2.7", "192.0.2.7", 9000)),
    ({"ifaces": ("198.18.0.99",)}, ("eth0", "198.18.0.99", "198.18.0.99", 1500)),  # by IP: that address
    ({"ifaces": ("eth9", "bond0", "eth2", "eth1")}, ("eth2", "198.19.0.5", "198.19.0.5", 1500)),  # first that exists
    ({"ifaces": ("192.0.2.200", "192.0.2.7")}, ("eth1", "192.0.2.7", "192.0.2.7", 9000)),
    # behind NAT: the interface address is the tunnel's end, the public IP is published
    ({"ifaces": ("eth2",), "public_ip": "203.0.113.9"}, ("eth2", "198.19.0.5", "203.0.113.9", 1500)),
    ({"regexes": (r"^192\.0\.2\.",)}, ("eth1", "192.0.2.7", "192.0.2.7", 9000)),  # addresses first
    ({"regexes": (r"\.99$",)}, ("eth0", "198.18.0.99", "198.18.0.99", 1500)),  # the matching address
    ({"regexes": ("eth2",)}, ("eth2", "198.19.0.5", "198.19.0.5", 1500)),  # then names
    ({"regexes": ("eth",)}, ("eth0", "198.18.0.11", "198.18.0.11", 1500)),  # unanchored, first in order
    ({"regexes": ("^bond",)}, None),  # a name match without IPv4 does not count
    ({"regexes": ("^wlan", "^eth[12]$")}, ("eth1", "192.0.2.7", "192.0.2.7", 9000)),  # regexes in order
    ({"ifaces": ("eth2",), "regexes": ("eth1",)}, ("eth2", "198.19.0.5", "198.19.0.5", 1500)),  # --iface first
    ({"ifaces": ("eth9",), "regexes": ("eth1",)}, ("eth1", "192.0.2.7", "192.0.2.7", 9000)),
    ({"can_reach": "192.0.2.1", "reach_route": Route("eth1", A("192.0.2.7"))},
     ("eth1", "192.0.2.7", "192.0.2.7", 9000)),
    ({"can_reach": "198.18.5.5", "reach_route": Route("eth0", A("198.18.0.99"))},  # the route's source
     ("eth0", "198.18.0.99", "198.18.0.99", 1500)),
    ({"ifaces": ("eth2",), "can_reach": "192.0.2.1", "reach_route": Route("eth1")},  # can-reach last
     ("eth2", "198.19.0.5", "198.19.0.5", 1500)),
    ({"regexes": ("^wlan",), "can_reach": "192.0.2.1", "reach_route": Route("eth1")},
     ("eth1", "192.0.2.7", "192.0.2.7", 9000)),
]


@pytest.mark.parametrize("flags, expected", CHOICES)
def test_choose(flags, expected):
    flags = {"default_route": DEFAULT, **flags}
    if expected is None:
        with pytest.raises(ConfigError):
            choose(NODE, **flags)
        return
    got = choose(NODE, **flags)
    assert (got.iface, str(got.address), str(got.public_ip), got.mtu) == expected


# nothing matches: one line naming what was tried and what exists; no fallback to the default route
REFUSALS = [
    ({"ifaces": ("eth9",)}, "--iface eth9 (interfaces: lo:[127.0.0.1], eth0:[198.18.0.11 198.18.0.99]"),
    ({"ifaces": ("bond0", "203.0.113.1")}, "--iface bond0, --iface 203.0.113.1"),
    ({"regexes": ("^wlan",)}, "--iface-regex ^wlan"),
    ({"can_reach": "203.0.113.1", "reach_route": None}, "--iface-can-reach 203.0.113.1"),
    ({"can_reach": "203.0.113.1", "reach_route": Route("bond0")}, "--iface-can-reach 203.0.113.1"),
    ({"public_ip": "203.0.113.9"}, "--public-ip: no interface holds 203.0.113.9; pass --iface"),
    ({"public_ip": "nope"}, "--public-ip: not an IPv4 address"),
    ({"default_route": None}, "no default route"),
    ({"default_route": Route("bond0")}, "the default route's interface bond0 has no IPv4 address"),
]


@pytest.mark.parametrize("flags, needle", REFUSALS)
def test_choose_refuses_in_one_line(flags, needle):
    with pytest.raises(ConfigError) as info:
        choose(NODE, **{"default_route": DEFAULT, **flags})
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.fixture
def captured(monkeypatch):
    """The options the daemon would run with (the daemon itself is not started)."""
    seen = []
    monkeypatch.setattr("overlayd.daemon.run", lambda options: seen.append(options) or 0)
    return seen


def test_flags_reach_the_daemon_in_order(captured):
    result = CliRunner().invoke(daemon_cli.cli, [
        "--iface", "eth1", "--iface", "198.18.0.11", "--iface-regex", "^en", "--iface-regex", "^eth",
        "--iface-can-reach", "192.0.2.1", "--public-ip", "203.0.113.9"])
    assert result.exit_code == 0, result.output
    opts = captured[0]
    assert opts.iface == ("eth1", "198.18.0.11") and opts.iface_regex == ("^en", "^eth")
    assert (opts.iface_can_reach, opts.public_ip) == ("192.0.2.1", "203.0.113.9")


def test_flags_from_the_environment(captured):
    result = CliRunner().invoke(daemon_cli.cli, [], env={"OVERLAYD_IFACE": "eth1 eth0",
                                                         "OVERLAYD_IFACE_REGEX": "^eth"})
    assert result.exit_code == 0, result.output
    assert captured[0].iface == ("eth1", "eth0") and captured[0].iface_regex == ("^eth",)


@pytest.mark.parametrize("args, needle", [
    (["--iface-regex", "eth(["], "'eth([' is not a regular expression"),
    (["--iface-can-reach", "gateway"], "'gateway' is not an IP address"),  # either family (issue 17)
    (["--public-ip", "198.18.0"], "'198.18.0' is not an IPv4 address"),
])
def test_bad_flags_are_one_line(captured, args, needle):
    result = CliRunner().invoke(daemon_cli.cli, args)
    assert result.exit_code == 2 and not captured
    assert needle in result.output and "Traceback" not in result.output
