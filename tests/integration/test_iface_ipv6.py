"""IPv6 underlay selection against a real kernel (issue 17, point 2): Netlink.underlay reads each
link's IPv6 addresses (link-local and deprecated ones left out, configured before SLAAC-like ones),
the IPv6 default route and 'ip route get' for an IPv6 --iface-can-reach, in a throwaway namespace
with 2001:db8:: addresses (the rules themselves: tests/unit/test_iface_ipv6.py)."""

from __future__ import annotations

import json
import textwrap

import pytest

from .test_plumbing import PRELUDE, netns, run_script  # noqa: F401 (netns: a fixture)

pytestmark = pytest.mark.root

# up0: dual stack, default routes of both families; side0: IPv6 only (a deprecated address beside a
# good one, a non-permanent one before a permanent one), MTU 9000, 2001:db8:ff::/48 via its gateway;
# v4only0: IPv4 only
SCRIPT = PRELUDE + textwrap.dedent('''
    from overlayd.errors import ConfigError

    CASES = json.loads(%r)

    async def main():
        veth("up0", "198.18.0.11/24", "2001:db8:0:1::11/64")
        veth("side0", "2001:db8:0:2::dead/64", "2001:db8:0:2::5/64")
        sh("ip", "link", "set", "side0", "mtu", "9000")
        sh("ip", "addr", "change", "2001:db8:0:2::dead/64", "dev", "side0", "preferred_lft", "0")  # deprecated
        sh("ip", "addr", "add", "2001:db8:0:2::77/64", "dev", "side0", "nodad", "valid_lft", "3600",
           "preferred_lft", "3600")  # listed first (newest), but not permanent
        veth("v4only0", "192.0.2.7/24")
        sh("ip", "route", "add", "default", "via", "198.18.0.1")
        sh("ip", "-6", "route", "add", "default", "via", "2001:db8:0:1::1")
        sh("ip", "-6", "route", "add", "2001:db8:ff::/48", "via", "2001:db8:0:2::1")
        out = []
        async with Netlink() as nl:
            for flags in CASES:
                try:
                    c = await nl.underlay(tuple(flags.pop("ifaces", ())), flags.pop("public_ip", None),
                                          regexes=tuple(flags.pop("regexes", ())), **flags)
                    out.append([c.iface, *(None if a is None else str(a) for a in
                                           (c.address, c.public_ip, c.address6, c.public_ip6)), c.mtu])
                except ConfigError as exc:
                    out.append(str(exc))
        print(json.dumps(out))

    asyncio.run(main())
''')

DUAL, V6 = [4, 6], [6]
CASES = [
    ({"families": DUAL}, ["up0", "198.18.0.11", "198.18.0.11", "2001:db8:0:1::11", "2001:db8:0:1::11", 1500]),
    ({"families": V6}, ["up0", None, None, "2001:db8:0:1::11", "2001:db8:0:1::11", 1500]),
    ({}, ["up0", "198.18.0.11", "198.18.0.11", None, None, 1500]),  # IPv4 only: as before
    ({"families": V6, "ifaces": ["side0"]}, ["side0", None, None, "2001:db8:0:2::5", "2001:db8:0:2::5", 9000]),
    ({"families": V6, "ifaces": ["2001:db8:0:2::77"]},
     ["side0", None, None, "2001:db8:0:2::77", "2001:db8:0:2::77", 9000]),
    ({"families": V6, "regexes": ["::5$"]}, ["side0", None, None, "2001:db8:0:2::5", "2001:db8:0:2::5", 9000]),
    ({"families": V6, "regexes": ["dead"]}, "no interface with an IPv6 address matches --iface-regex dead"),
    ({"families": V6, "can_reach": "2001:db8:ff::1"},  # the kernel's source for it, as 'ip route get' shows
     ["side0", None, None, "2001:db8:0:2::77", "2001:db8:0:2::77", 9000]),
    ({"families": V6, "public_ip6": "2001:db8:0:2::5"},
     ["side0", None, None, "2001:db8:0:2::5", "2001:db8:0:2::5", 9000]),
    ({"families": DUAL, "ifaces": ["up0"], "public_ip6": "2001:db8:ffff::9"},
     ["up0", "198.18.0.11", "198.18.0.11", "2001:db8:0:1::11", "2001:db8:ffff::9", 1500]),
    ({"families": DUAL, "ifaces": ["v4only0"]}, "no interface with IPv4 and IPv6 addresses matches --iface v4only0"),
]


def test_ipv6_underlay_selection_reads_the_kernel(netns):  # noqa: F811 (the fixture)
    got = run_script(netns, SCRIPT % json.dumps([flags for flags, _ in CASES]))
    for (flags, expected), answer in zip(CASES, got, strict=True):
        if isinstance(expected, str):
            assert isinstance(answer, str) and answer.startswith(expected), (flags, answer)
        else:
            assert answer == expected, (flags, answer)
