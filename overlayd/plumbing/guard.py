"""The guard route: no pod traffic leaves the node unencapsulated, whether overlayd runs or not.

Design note. Without it, a packet for the Network that matches none of our
routes follows the node's default route onto the physical network with its
pod source address, in clear. That happens (a) with the userspace backends
(udp's ``tun0``, userspace VXLAN's ``overlay0``) whenever overlayd is down:
their devices are non-persistent, so the device and its ``<Network> dev
tun0`` route vanish when the process exits or is killed; and (b) with the
kernel VXLAN and host-gw backends at any time for a subnet of the Network
that no known peer holds (a node that left, one not seen yet), since they
route per peer and have no Network route.

Two ways were weighed. A persistent tun/tap (TUNSETPERSIST, adopted on the
next start) keeps the route while down, and packets written to a tun with
no reader are dropped; but it covers only the userspace backends, pods see
silence instead of an error, and a device outliving its owner has to be
adopted (or refused, if its flags differ) on every start. An ``unreachable``
route for the whole Network at the highest metric there is covers all four
backends and every way of being down (a clean stop, SIGKILL, a crash, an
operator deleting the device), costs nothing while overlayd runs, and makes
pods fail fast (ICMP host unreachable) instead of timing out. We chose the
route alone:

- udp / userspace VXLAN: ``<Network> dev tun0`` (metric 0) wins while the
  device exists; when it goes, the guard is what is left. A restart
  re-creates the device and its route; nothing is duplicated.
- kernel VXLAN: ``flannel.<VNI>`` and its per-peer routes, neighbours and
  FDB entries stay while overlayd is down (flannel's behaviour), so traffic
  to known peers keeps flowing, encapsulated by the kernel; a subnet with no
  peer route hits the guard.
- host-gw: per-peer routes are more specific and win; unknown subnets of the
  Network hit the guard instead of the default route, also while running.

Dual stack: one guard per Network, the IPv6 one beside the IPv4 one
(``unreachable fd00:10:244::/56 metric 4294967295``), ensured alike; a pod's
IPv6 packet then gets ICMPv6 "no route" instead of leaving in clear.

The guard is installed with the node's other shared state (before the
daemon reports ready), re-ensured by drift repair, and removed only by
``--cleanup-on-exit``. Being a route of the main table it lives in the
node's network namespace and goes with it.
"""

from __future__ import annotations

import ipaddress
import logging

from .netlink import Netlink

log = logging.getLogger(__name__)

#: the highest route metric: any other route to the Network (our device's) wins
METRIC = 0xFFFFFFFF


async def ensure(nl: Netlink, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
    """The guard route ``unreachable <network> metric METRIC`` is in place (either family)."""
    await nl.ensure_unreachable(network, METRIC)


async def retire_others(nl: Netlink, keep: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
                        bridge: str) -> None:
    """Remove what is left of every pod network this node had and has no more (IPv6 turned off,
    a Network changed), each known by its guard route: every route into it (the backend's, host-gw's
    to the peers), ``bridge``'s gateway address in it, and the guard itself (one log line each)."""
    for old in await nl.unreachable_networks(METRIC):
        if old in keep:
            continue
        routes = await nl.delete_routes_within(old)  # the guard among them
        addresses = await nl.delete_addresses_within(bridge, old)
        log.info("pod network %s is no longer configured: removed %d routes into it and %d addresses "
                 "of %s in it", old, routes, addresses, bridge)


async def remove(nl: Netlink, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
    """Delete the guard route (decommissioning only) if it exists."""
    await nl.delete_unreachable(network, METRIC)
