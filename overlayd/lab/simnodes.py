"""Simulated nodes for ``scripts/bench-control``: lease holders without namespaces.

Each simulated node runs the project's own :class:`LeaseManager` against the
lab's etcd, exactly as a daemon acquires its lease, but publishes a made-up
PublicIP (198.19.x.y, from the benchmark range) and sets up nothing. Run
inside the lab's etcd namespace (that is where etcd's address is reachable)::

    python -m overlayd.lab.simnodes acquire --endpoints URL --count 1000 --first 1
    python -m overlayd.lab.simnodes revoke --endpoints URL --first 1 --count 1

It prints one JSON object: what the benchmark reports (time to all acquired,
lost races per node, duplicates, the first subnets, and the wall-clock time
the work was done, from which the benchmark times propagation). The leases stay
in etcd (with the TTL given) after the process exits, as a node's do.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import random
import statistics
import sys
import time

from ..errors import StoreUnavailable
from ..lease.etcd import EtcdStore
from ..lease.manager import LeaseManager
from ..lease.model import LeaseAttrs
from ..netconf import NetworkConfig, parse_config

SIM_BASE = ipaddress.IPv4Address("198.19.0.0")  # simulated PublicIPs: 198.19.0.1 ...
STORES = 32  # gRPC channels shared by the simulated nodes (one per node would be 1000 channels)


def sim_ip(index: int) -> ipaddress.IPv4Address:
    """The PublicIP of simulated node ``index`` (1-based)."""
    return SIM_BASE + index


def sim_attrs(config: NetworkConfig, index: int) -> LeaseAttrs:
    """What simulated node ``index`` publishes: a VXLAN node also needs its VNI and a VtepMAC
    (a locally administered MAC derived from the index), or real daemons skip it."""
    data = None
    if config.backend.type == "vxlan":
        mac = "0e:51:" + ":".join(f"{b:02x}" for b in index.to_bytes(4, "big"))
        data = {"VNI": config.backend.vni, "VtepMAC": mac}
    return LeaseAttrs(sim_ip(index), config.backend.type, data)


async def acquire(endpoints: str, prefix: str, first: int, count: int, ttl: int) -> dict:
    stores = [EtcdStore(endpoints, prefix) for _ in range(min(STORES, count))]
    try:
        config = parse_config(await stores[0].get_config())
        managers = [LeaseManager(stores[i % len(stores)], config, sim_attrs(config, first + i), ttl=ttl)
                    for i in range(count)]
        start = time.monotonic()
        leases = await asyncio.gather(*(_acquire(m) for m in managers))
        elapsed, done_at = time.monotonic() - start, time.time()
        listed, _ = await stores[0].list_leases()
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    retries = [m.attempts - 1 for m in managers]
    return {
        "nodes": count, "seconds": round(elapsed, 3),
        "retries_mean": round(statistics.fmean(retries), 3), "retries_max": max(retries),
        # two nodes that both believe they hold one subnet (the listing has one entry per key)
        "duplicates": count - len({l.subnet for l in leases}),
        "acquired": len({str(l.subnet) for l in leases}), "listed": len(listed),
        "subnets": [str(l.subnet) for l in leases][:10], "done_at": done_at,
    }


async def _acquire(manager: LeaseManager):
    """Acquire as the daemon does: etcd timing out under the load is retried, not fatal."""
    retries = 0
    while True:
        try:
            return await manager.acquire()
        except StoreUnavailable:
            retries += 1
            if retries > 20:
                raise
            await asyncio.sleep(random.uniform(0.5, 1.5))


async def revoke(endpoints: str, prefix: str, first: int, count: int) -> dict:
    store = EtcdStore(endpoints, prefix)
    try:
        listed, _ = await store.list_leases()
        wanted = {sim_ip(first + i) for i in range(count)}
        gone = [l for l in listed if l.public_ip in wanted]
        for lease in gone:
            await store.delete_lease(lease.subnet)
    finally:
        await store.close()
    return {"revoked": [str(l.subnet) for l in gone], "done_at": time.time()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simnodes", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["acquire", "revoke"])
    parser.add_argument("--endpoints", required=True)
    parser.add_argument("--prefix", default="/coreos.com/network")
    parser.add_argument("--first", type=int, default=1, help="index of the first simulated node")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--ttl", type=int, default=3600)
    args = parser.parse_args(argv)
    if args.action == "acquire":
        result = asyncio.run(acquire(args.endpoints, args.prefix, args.first, args.count, args.ttl))
    else:
        result = asyncio.run(revoke(args.endpoints, args.prefix, args.first, args.count))
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
