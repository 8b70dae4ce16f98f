"""Underlay selection for IPv6 and dual-stack configs (issue 17, point 2): flannel's --iface,
--iface-regex, --iface-can-reach and --public-ipv6 choosing PublicIPv6, as vectors for the pure
:func:`overlayd.plumbing.iface.choose` and :func:`usable_ipv6`, and the flag through CliRunner."""

import ipaddress

import pytest
from click.testing import CliRunner

from overlayd.cli import daemon as daemon_cli
from overlayd.errors import ConfigError
from overlayd.plumbing.iface import (IFA_F_DADFAILED, IFA_F_DEPRECATED, IFA_F_PERMANENT, IFA_F_TEMPORARY,
                                     Interface, Route, choose, usable_ipv6)

A, A6 = ipaddress.IPv4Address, ipaddress.IPv6Address


def iface(name, v4=(), v6=(), mtu=1500):
    return Interface(name, tuple(map(A, v4)), mtu, tuple(map(A6, v6)))


NODE = [
    iface("lo", ["127.0.0.1"], mtu=65536),  # ::1 is never usable: not listed
    iface("eth0", ["198.18.0.11"], ["2001:db8:0:1::11", "2001:db8:0:1::99"]),
    iface("eth1", ["192.0.2.7"], mtu=9000),  # IPv4 only
    iface("v6only0", [], ["fd00:aa::7"], mtu=9000),  # a ULA counts
    iface("eth2", ["198.19.0.5"], ["2001:db8:0:2::5"]),
]
DEFAULTS = {"default_route": Route("eth0", A("198.18.0.11")), "default_route6": Route("eth0", A6("2001:db8:0:1::11"))}
DUAL, V6 = (4, 6), (6,)

# (flags, expected (iface, address, public IP, address6, public IPv6, MTU))
CHOICES = [
    ({"families": DUAL}, ("eth0", "198.18.0.11", "198.18.0.11", "2001:db8:0:1::11", "2001:db8:0:1::11", 1500)),
    ({"families": V6}, ("eth0", None, None, "2001:db8:0:1::11", "2001:db8:0:1::11", 1500)),
    ({"families": V6, "default_route6": Route("eth0", A6("2001:db8:0:1::99"))},  # the route's source
     ("eth0", None, None, "2001:db8:0:1::99", "2001:db8:0:1::99", 1500)),
    ({"families": DUAL, "default_route6": Route("eth0")},  # no source: the first usable
     ("eth0", "198.18.0.11", "198.18.0.11", "2001:db8:0:1::11", "2001:db8:0:1::11", 1500)),
    # --iface by IPv6 address: that address, the interface's IPv4 beside it on a dual-stack node
    ({"families": V6, "ifaces": ("2001:db8:0:1::99",)}, ("eth0", None, None, "2001:db8:0:1::99", "2001:db8:0:1::99", 1500)),
    ({"families": DUAL, "ifaces": ("2001:db8:0:2::5",)}, ("eth2", "198.19.0.5", "198.19.0.5", "2001:db8:0:2::5", "2001:db8:0:2::5", 1500)),
    ({"families": DUAL, "ifaces": ("198.19.0.5",)}, ("eth2", "198.19.0.5", "198.19.0.5", "2001:db8:0:2::5", "2001:db8:0:2::5", 1500)),
    ({"families": V6, "ifaces": ("v6only0",)}, ("v6only0", None, None, "fd00:aa::7", "fd00:aa::7", 9000)),
    # a candidate without an address of a needed family is skipped, as flannel's failed lookups are
    ({"families": DUAL, "ifaces": ("eth1", "v6only0", "eth2")}, ("eth2", "198.19.0.5", "198.19.0.5", "2001:db8:0:2::5", "2001:db8:0:2::5", 1500)),
    ({"families": V6, "ifaces": ("198.18.0.11", "eth2")}, ("eth2", None, None, "2001:db8:0:2::5", "2001:db8:0:2::5", 1500)),
    # regexes over IPv6 addresses; dual stack: the same regex must match one address of each family
    ({"families": V6, "regexes": (r"^fd00:",)}, ("v6only0", None, None, "fd00:aa::7", "fd00:aa::7", 9000)),
    ({"families": V6, "regexes": (r"::99$",)}, ("eth0", None, None, "2001:db8:0:1::99", "2001:db8:0:1::99", 1500)),
    ({"families": DUAL, "regexes": (r"^198\.19\.|^2001:db8:0:2:",)},
     ("eth2", "198.19.0.5", "198.19.0.5", "2001:db8:0:2::5", "2001:db8:0:2::5", 1500)),
    ({"families": DUAL, "regexes": (r"^192\.0\.2\.",)}, None),  # eth1 has no IPv6 address
    ({"families": DUAL, "regexes": (r"^eth[12]$",)},  # then names: eth1 lacks IPv6, eth2 has both
     ("eth2", "198.19.0.5", "198.19.0.5", "2001:db8:0:2::5", "2001:db8:0:2::5", 1500)),
    # --iface-can-reach an IPv6 address: the route's interface and source
    ({"families": V6, "can_reach": "2001:db8:ff::1", "reach_route": Route("eth0", A6("2001:db8:0:1::99"))},
     ("eth0", None, None, "2001:db8:0:1::99", "2001:db8:0:1::99", 1500)),
    ({"families": DUAL, "can_reach": "2001:db8:ff::1", "reach_route": Route("eth2", A6("2001:db8:0:2::5"))},
     ("eth2", "198.19.0.5", "198.19.0.5", "2001:db8:0:2::5", "2001:db8:0:2::5", 1500)),
    ({"families": DUAL, "can_reach": "2001:db8:ff::1", "reach_route": Route("v6only0")}, None),
    # --public-ipv6: published (behind NAT) when flags chose the interface; else the interface holding it
    ({"families": DUAL, "ifaces": ("eth2",), "public_ip6": "2001:db8:ffff::9"},
     ("eth2", "198.19.0.5", "198.19.0.5", "2001:db8:0:2::5", "2001:db8:ffff::9", 1500)),
    ({"families": V6, "public_ip6": "fd00:aa::7"}, ("v6only0", None, None, "fd00:aa::7", "fd00:aa::7", 9000)),
    ({"families": DUAL, "public_ip6": "2001:db8:0:2::5"},
     ("eth2", "198.19.0.5", "198.19.0.5", "2001:db8:0:2::5", "2001:db8:0:2::5", 1500)),
    ({"families": DUAL, "public_ip": "198.19.0.5", "public_ip6": "2001:db8:ffff::9"},  # --public-ip decides first
     ("eth2", "198.19.0.5", "198.19.0.5", "2001:db8:0:2::5", "2001:db8:ffff::9", 1500)),
    # a family the config does not need: neither chosen nor published
    ({"public_ip6": "2001:db8:ffff::9"}, ("eth0", "198.18.0.11", "198.18.0.11", None, None, 1500)),
    ({"ifaces": ("2001:db8:0:2::5", "eth1")}, ("eth1", "192.0.2.7", "192.0.2.7", None, None, 9000)),
    ({"can_reach": "2001:db8:ff::1", "reach_route": Route("eth2", A6("2001:db8:0:2::5"))},  # its IPv4 then
     ("eth2", "198.19.0.5", "198.19.0.5", None, None, 1500)),
]


def show(value):
    return None if value is None else str(value)


@pytest.mark.parametrize("flags, expected", CHOICES)
def test_choose(flags, expected):
    flags = {**DEFAULTS, **flags}
    if expected is None:
        with pytest.raises(ConfigError):
            choose(NODE, **flags)
        return
    got = choose(NODE, **flags)
    assert (got.iface, show(got.address), show(got.public_ip), show(got.address6), show(got.public_ip6),
            got.mtu) == expected


# a node without the IPv6 address the config needs, and other refusals: one typed line each
REFUSALS = [
    ({"families": DUAL, "default_route": Route("eth1"), "default_route6": Route("eth1")},
     "the default route's interface eth1 has no IPv6 address; pass --iface"),
    ({"families": V6, "default_route6": None}, "no IPv6 default route to pick the underlay interface from"),
    ({"families": DUAL, "default_route6": Route("eth2")},
     "the IPv6 default route's interface eth2 is not the IPv4 default route's eth0"),
    ({"families": DUAL, "ifaces": ("eth1",)},
     "no interface with IPv4 and IPv6 addresses matches --iface eth1 (interfaces: lo:[127.0.0.1], "
     "eth0:[198.18.0.11 2001:db8:0:1::11 2001:db8:0:1::99]"),
    ({"families": V6, "ifaces": ("2001:db8::77",), "regexes": ("^wlan",), "can_reach": "2001:db8:ff::1",
      "reach_route": None},
     "no interface with an IPv6 address matches --iface 2001:db8::77, --iface-regex ^wlan, "
     "--iface-can-reach 2001:db8:ff::1"),
    ({"families": DUAL, "public_ip": "192.0.2.7"}, "--public-ip: its interface eth1 has no IPv6 address"),
    ({"families": V6, "public_ip6": "2001:db8:ffff::9"}, "--public-ipv6: no interface holds 2001:db8:ffff::9"),
    ({"families": DUAL, "public_ip6": "198.18.0.11"}, "--public-ipv6: not an IPv6 address: '198.18.0.11'"),
    ({"families": ()}, "the underlay needs IPv4, IPv6 or both"),
    # peers cannot reach a link-local (scopeless) or a multicast address
    ({"families": DUAL, "ifaces": ("eth0",), "public_ip6": "fe80::1"},
     "--public-ipv6: fe80::1 is not a global or unique-local unicast address"),
    ({"families": V6, "public_ip6": "ff02::1"}, "--public-ipv6: ff02::1 is not a global or unique-local unicast"),
]


@pytest.mark.parametrize("flags, needle", REFUSALS)
def test_choose_refuses_in_one_line(flags, needle):
    with pytest.raises(ConfigError) as info:
        choose(NODE, **{**DEFAULTS, **flags})
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_usable_ipv6_as_flannel_ranks_them():
    """Link-local, loopback, deprecated and DAD-failed addresses out; configured before SLAAC,
    stable before temporary (privacy) addresses; otherwise the kernel's order."""
    entries = [
        (A6("fe80::1"), IFA_F_PERMANENT),
        (A6("2001:db8::7e"), IFA_F_TEMPORARY),
        (A6("2001:db8::5a"), 0),  # SLAAC (not permanent)
        (A6("2001:db8::dead"), IFA_F_PERMANENT | IFA_F_DEPRECATED),
        (A6("2001:db8::bad"), IFA_F_PERMANENT | IFA_F_DADFAILED),
        (A6("::1"), IFA_F_PERMANENT),
        (A6("fd00:1::1"), IFA_F_PERMANENT),
        (A6("2001:db8::1"), IFA_F_PERMANENT),
    ]
    assert [str(a) for a in usable_ipv6(entries)] == ["fd00:1::1", "2001:db8::1", "2001:db8::5a", "2001:db8::7e"]


@pytest.fixture
def captured(monkeypatch):
    """The options the daemon would run with (the daemon itself is not started)."""
    seen = []
    monkeypatch.setattr("overlayd.daemon.run", lambda options: seen.append(options) or 0)
    return seen


def test_public_ipv6_and_ipv6_flags_reach_the_daemon(captured):
    result = CliRunner().invoke(daemon_cli.cli, ["--public-ipv6", "2001:DB8::9", "--iface-can-reach", "2001:db8::1",
                                                 "--iface", "2001:db8::7"])
    assert result.exit_code == 0, result.output
    opts = captured[0]
    assert (opts.public_ip6, opts.iface_can_reach, opts.iface) == ("2001:db8::9", "2001:db8::1", ("2001:db8::7",))


def test_public_ipv6_from_the_environment(captured):
    result = CliRunner().invoke(daemon_cli.cli, [], env={"OVERLAYD_PUBLIC_IPV6": "fd00:aa::7"})
    assert result.exit_code == 0, result.output
    assert captured[0].public_ip6 == "fd00:aa::7"


@pytest.mark.parametrize("args, needle", [
    (["--public-ipv6", "198.18.0.11"], "'198.18.0.11' is not an IPv6 address"),
    (["--iface-can-reach", "gateway"], "'gateway' is not an IP address"),
])
def test_bad_ipv6_flags_are_one_line(captured, args, needle):
    result = CliRunner().invoke(daemon_cli.cli, args)
    assert result.exit_code == 2 and not captured
    assert needle in result.output and "Traceback" not in result.output
