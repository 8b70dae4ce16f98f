"""Kernel change notices in a throwaway network namespace: a change to what drift repair owns
(a route, a permanent neighbour or FDB entry, a link, an address, an nft table, a forwarding sysctl) makes a
pass due; ARP traffic's neighbour entries and a quiet namespace do not."""

from __future__ import annotations

import textwrap

import pytest

from .test_plumbing import netns, run_script  # noqa: F401 (netns: a fixture)

pytestmark = pytest.mark.root

SCRIPT = textwrap.dedent('''
    import asyncio, json, subprocess
    from overlayd.plumbing.kernelwatch import KernelWatch

    def sh(*argv):
        subprocess.run(argv, capture_output=True, text=True, check=True)

    async def main():
        watch = KernelWatch()
        watch.open()
        sh("sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")  # no IPv6 autoconfiguration notices
        sh("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        sh("ip", "link", "set", "v1", "up")
        sh("ip", "link", "set", "v0", "up")
        sh("ip", "addr", "add", "198.18.0.1/24", "dev", "v0", "nodad")
        sh("ip", "link", "add", "vx0", "type", "vxlan", "id", "5", "dstport", "4789", "nolearning")

        async def due_after(*argv):
            """Run argv, then whether a pass is due once the notices are read (a pass first, if one is due)."""
            await asyncio.sleep(0.3)
            watch.due()
            if argv:
                sh(*argv)
            await asyncio.sleep(0.3)  # the notices are queued before the command returns; read them
            return watch.due()

        seen = {"blind": watch.blind}
        seen["quiet"] = await due_after()
        seen["arp"] = await due_after("ip", "neigh", "replace", "198.18.0.9", "lladdr", "02:00:00:00:00:09",
                                      "dev", "v0", "nud", "stale")
        seen["neighbour"] = await due_after("ip", "neigh", "replace", "198.18.0.9", "lladdr",
                                            "02:00:00:00:00:09", "dev", "v0", "nud", "permanent")
        seen["neighbour gone"] = await due_after("ip", "neigh", "del", "198.18.0.9", "dev", "v0")
        fdb = ("02:00:00:00:00:07", "dev", "vx0", "dst", "198.18.0.7", "self")
        seen["fdb"] = await due_after("bridge", "fdb", "append", *fdb, "permanent")
        seen["fdb gone"] = await due_after("bridge", "fdb", "del", *fdb)
        seen["route"] = await due_after("ip", "route", "add", "10.244.0.0/16", "dev", "v0")
        seen["address"] = await due_after("ip", "addr", "add", "10.244.3.1/24", "dev", "v0")
        seen["link"] = await due_after("ip", "link", "set", "v0", "mtu", "1400")
        seen["nft"] = await due_after("nft", "add", "table", "ip", "overlayd-test")
        seen["forwarding"] = await due_after("sysctl", "-qw", "net.ipv4.conf.v0.forwarding=1")
        seen["quiet again"] = await due_after()
        seen["checks"] = watch.checks
        watch.close()
        print(json.dumps(seen))

    asyncio.run(main())
''')


def test_changes_to_owned_state_make_a_pass_due_and_arp_does_not(netns):  # noqa: F811
    seen = run_script(netns, SCRIPT)
    assert seen.pop("checks")["periodic"] == 0
    assert seen == {"blind": False, "quiet": False, "arp": False, "neighbour": True, "neighbour gone": True,
                    "fdb": True, "fdb gone": True, "route": True, "address": True, "link": True, "nft": True, "forwarding": True,
                    "quiet again": False}
