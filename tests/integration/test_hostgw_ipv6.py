"""host-gw with IPv6 (issue 17) in a throwaway network namespace: a peer's IPv6 subnet is routed
via its PublicIPv6 beside its IPv4 subnet via its PublicIP, an IPv6-only peer's alone; drift
repaired, both routes gone with the peer, stale ones from before a restart removed."""

from __future__ import annotations

import textwrap

import pytest

from .test_plumbing import PRELUDE, netns, run_script  # noqa: F401 (netns: a fixture)

pytestmark = pytest.mark.root

#: PRELUDE, plus what a backend test needs: ``dual_stack`` (a config and underlay) and
#: ``changes_of`` (what one backend call changed, through a Netlink of its own)
BACKEND_PRELUDE = PRELUDE + textwrap.dedent('''
    from overlayd.backend.base import NodeOptions, Underlay
    from overlayd.lease.model import Lease, LeaseAttrs
    from overlayd.lease.watcher import Batch
    from overlayd.netconf import parse_config

    def dual_stack(backend):
        """A dual-stack config with this ``Backend`` object, and the node's underlay: eth0,
        198.18.0.11 and 2001:db8::11."""
        config = parse_config({"Network": "10.244.0.0/16", "EnableIPv6": True, "IPv6Network": "fd00:10:244::/56",
                               "Backend": backend})
        return config, Underlay("eth0", ipaddress.IPv4Address("198.18.0.11"), 1500,
                                public_ip6=ipaddress.IPv6Address("2001:db8::11"))

    async def changes_of(call):
        async with Netlink() as nl:
            await call(nl)
            return nl.changes

    async def finish(backend, run, seen):
        """A userspace backend's end: its stats into ``seen``, its data plane ``run`` stopped, the
        backend torn down and closed; ``seen`` printed."""
        seen["stats"] = backend.stats()
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await changes_of(backend.teardown)
        await backend.close()
        print(json.dumps(seen))
''')

SCRIPT = BACKEND_PRELUDE + textwrap.dedent('''
    from overlayd.backend.base import delete_peer_routes
    from overlayd.backend.hostgw import HostGwBackend

    def routes():
        return sorted(line.split(" proto")[0].split(" metric")[0].strip()
                      for family in ("-4", "-6") for line in sh("ip", family, "route", "show", "dev", "eth0").splitlines()
                      if line.startswith(("10.244.", "fd00:")))

    def lease(subnet, ip, ip6, subnet6):
        attrs = LeaseAttrs(ip and ipaddress.IPv4Address(ip), "host-gw", None, public_ip6=ipaddress.IPv6Address(ip6))
        return Lease(ipaddress.ip_network(subnet), attrs, subnet6=ipaddress.IPv6Network(subnet6))

    async def main():
        veth("eth0", "198.18.0.11/24", "2001:db8::11/64")
        config, underlay = dual_stack({"Type": "host-gw"})
        backend = HostGwBackend(config, underlay, NodeOptions())
        sh("ip", "route", "add", "fd00:10:244:9::/64", "via", "2001:db8::19", "dev", "eth0")  # left from before
        backend.lease = own = lease("10.244.3.0/24", "198.18.0.11", "2001:db8::11", "fd00:10:244:3::/64")
        await changes_of(lambda nl: delete_peer_routes(nl, config, own))  # the daemon's step before any setup
        await backend.setup(own)
        seen = {"after_setup": routes()}
        peer = lease("10.244.7.0/24", "198.18.0.17", "2001:db8::17", "fd00:10:244:7::/64")
        peer6 = lease("fd00:10:244:8::/64", None, "2001:db8::18", "fd00:10:244:8::/64")
        await backend.apply(Batch(added=[peer, peer6]))
        seen["added"] = routes()
        seen["peers"] = backend.peer_subnets()
        sh("ip", "route", "del", "fd00:10:244:7::/64")
        seen["repaired"] = await changes_of(backend.reconcile)
        # the peer's lease changes: IPv4 only now (its IPv6 subnet and PublicIPv6 gone)
        peer4 = Lease(peer.subnet, LeaseAttrs(peer.attrs.public_ip, "host-gw", None))
        await backend.apply(Batch(added=[peer4]))
        seen["changed"] = routes()
        # a peer whose PublicIPv6 is off our segment (its PublicIP is on it): its IPv4 route alone
        far6 = lease("10.244.5.0/24", "198.18.0.15", "2001:db8:5::15", "fd00:10:244:5::/64")
        await backend.apply(Batch(added=[far6]))
        seen["far6"] = routes()
        seen["far6_stats"] = backend.stats()
        await backend.apply(Batch(removed=[peer4, far6]))
        seen["removed"] = routes()
        await changes_of(backend.teardown)
        seen["torn_down"] = routes()
        print(json.dumps(seen))

    asyncio.run(main())
''')


def test_hostgw_routes_both_families(netns):
    seen = run_script(netns, SCRIPT)
    assert seen["after_setup"] == []
    assert seen["added"] == ["10.244.7.0/24 via 198.18.0.17", "fd00:10:244:7::/64 via 2001:db8::17",
                             "fd00:10:244:8::/64 via 2001:db8::18"]
    assert seen["peers"] == ["10.244.7.0/24", "fd00:10:244:7::/64", "fd00:10:244:8::/64"]
    assert seen["repaired"] == ["route fd00:10:244:7::/64 via 2001:db8::17 dev eth0 was missing"]
    assert seen["changed"] == ["10.244.7.0/24 via 198.18.0.17", "fd00:10:244:8::/64 via 2001:db8::18"]
    assert seen["far6"] == ["10.244.5.0/24 via 198.18.0.15", *seen["changed"]]
    assert seen["far6_stats"] == {"routes": 3, "skipped_peers": 1}  # skipped: not all of it is routed
    assert seen["removed"] == ["fd00:10:244:8::/64 via 2001:db8::18"]
    assert seen["torn_down"] == []
