"""Which lease keys the daemons act on, and why not the others: one rule for the daemons and
``overlayctl subnets`` (issue 16).

A key is a peer's only if it is a subnet the config could hand out (of SubnetLen,
between SubnetMin and SubnetMax): :func:`misfit` says why not. Every other key (a
reservation outside the Network, a /23 left over a change of SubnetLen that overlaps
live /24 leases) is ignored by the daemons with a warning, and marked by the CLI with
the same words. A node holds one lease: a key for another subnet that carries a node's
PublicIP (:func:`stray`) draws that subnet's traffic to the node from every peer,
which routes nothing there; the node warns about it and the CLI marks it.

Pure code: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from ..netconf import NetworkConfig
from .model import Lease


def misfit(subnet: ipaddress.IPv4Network | ipaddress.IPv6Network, config: NetworkConfig) -> str | None:
    """Why a lease known by ``subnet`` cannot be a peer's under ``config`` (None: it can).
    An IPv6 ``subnet`` is an IPv6-only lease's, checked against the IPv6 pool."""
    if config.contains_subnet(subnet):
        return None
    v6 = subnet.version == 6
    pool, k = (config.ipv6, "IPv6") if v6 else (config.ipv4, "")
    if pool is None:
        return (f"an IPv6-only lease, and the network has no IPv6 pool (EnableIPv6)" if v6
                else "an IPv4 lease, and the network is IPv6-only (EnableIPv4 false)")
    if not subnet.subnet_of(pool.network):
        return f"outside the {k}Network {pool.network}"
    if subnet.prefixlen != pool.subnet_len:
        return f"not a /{pool.subnet_len} ({k}SubnetLen)"
    if subnet.network_address < pool.subnet_min:
        return f"below {k}SubnetMin {pool.subnet_min}"
    return f"above {k}SubnetMax {pool.subnet_max}"


def stray(lease: Lease, own_subnet: ipaddress.IPv4Network, own_ip: ipaddress.IPv4Address) -> bool:
    """Whether ``lease`` names the node at ``own_ip``, whose lease is ``own_subnet``, for another subnet."""
    return lease.public_ip == own_ip and lease.subnet != own_subnet


def audit(leases: Iterable[Lease], config: NetworkConfig) -> dict[ipaddress.IPv4Network, list[str]]:
    """What is wrong with each lease in a full listing (only those with something to say):
    :func:`misfit` (with the valid leases it overlaps), and, for valid leases, a PublicIP
    that another valid lease also carries (all but one of them are :func:`stray` for that node)."""
    leases = sorted(leases, key=lambda l: (l.subnet.version, l.subnet))
    valid = [l for l in leases if misfit(l.subnet, config) is None]
    notes: dict[ipaddress.IPv4Network, list[str]] = {}
    for lease in leases:
        why = misfit(lease.subnet, config)
        if why is None:
            others = [str(o.subnet) for o in valid if o is not lease and stray(o, lease.subnet, lease.public_ip)]
            if others:
                notes[lease.subnet] = [f"{lease.public_ip} also holds {', '.join(others)}"]
            continue
        notes[lease.subnet] = [f"ignored: {why}"]
        overlapped = [str(o.subnet) for o in valid
                      if o.subnet.version == lease.subnet.version and o.subnet.overlaps(lease.subnet)]
        if overlapped:
            notes[lease.subnet].append(f"overlaps {', '.join(overlapped)}")
    return notes
