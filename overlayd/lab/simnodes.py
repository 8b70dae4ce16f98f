"""Simulated nodes for ``scripts/bench-control``: lease holders without namespaces.

Each simulated node runs the project's own :class:`LeaseManager` against the
lab's etcd, exactly as a daemon acquires its lease, but publishes a made-up
PublicIP (198.19.x.y, from the benchmark range) and sets up nothing. Run
inside the lab's etcd namespace (that is where etcd's address is reachable)::

    python -m overlayd.lab.simnodes acquire --endpoints URL --count 5000 --wave 1000
    python -m overlayd.lab.simnodes revoke --endpoints URL --first 1 --count 1

Nodes join in waves: ``--wave`` of them acquire at once, the next wave once every node of
the previous one holds its lease (``--wave`` as large as ``--count``: all at once). A
cluster does not start 5000 daemons in one second (nodes are provisioned in batches, a
DaemonSet rolls out node by node), and one process standing for 5000 nodes cannot: each
acquisition lists every lease and runs the allocator over it, ~20 ms of this process's
CPU at 5000 leases that a real node spends once on its own CPU; 5000 of them at once on
this one core starved the event loop past etcd calls' deadlines. A node that etcd does
not answer in time, or answers "busy", retries exactly as the daemon does
(:func:`overlayd.daemon.retry_unavailable`: jittered backoff doubling from 0.5 s to 30 s).

It prints one JSON object: what the benchmark reports (time to all acquired, each
node's time from its wave's start to its lease (median, p99, max), lost races per node,
etcd retries, duplicates, the first subnets, this process's CPU time, and the wall-clock
time the work was done, from which the benchmark times propagation). The leases stay
in etcd (with the TTL given) after the process exits, as a node's do.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import statistics
import sys
import time

from ..daemon import retry_unavailable
from ..errors import OverlayError
from ..lease.etcd import EtcdStore
from ..lease.manager import LeaseManager
from ..lease.model import LeaseAttrs
from ..netconf import NetworkConfig, parse_config

SIM_BASE = ipaddress.IPv4Address("198.19.0.0")  # simulated PublicIPs: 198.19.0.1 ...
STORES = 32  # gRPC channels shared by the simulated nodes (one per node would be 1000 channels)
SETTLE_SECONDS = 65.0  # how long the simulated nodes go on settling after the last acquisition


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


async def acquire(endpoints: str, prefix: str, first: int, count: int, ttl: int, wave: int,
                  deadline: float) -> dict:
    stores = [EtcdStore(endpoints, prefix) for _ in range(min(STORES, count))]
    try:
        config = parse_config(await stores[0].get_config())
        managers = [LeaseManager(stores[i % len(stores)], config, sim_attrs(config, first + i), ttl=ttl)
                    for i in range(count)]
        busy = [0] * count  # etcd retries per node (timed out or busy), as the daemon retries them
        took = [0.0] * count  # seconds from its wave's start to its lease
        cpu, start = time.process_time(), time.monotonic()
        try:
            leases = await asyncio.wait_for(_waves(managers, wave, busy, took), deadline)
        except asyncio.TimeoutError:
            done = sum(m.lease is not None for m in managers)
            raise SimError(f"{done} of {count} simulated nodes acquired a lease in {deadline:g} s") from None
        elapsed, done_at, cpu = time.monotonic() - start, time.time(), time.process_time() - cpu
        await _settle(stores)
        unsettled = sorted(set().union(*(s.unsettled for s in stores)))
        listed, _ = await stores[0].list_leases()
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    lost = [m.attempts - 1 for m in managers]
    return {
        "nodes": count, "wave": wave, "seconds": round(elapsed, 3),
        "node_seconds": {"p50": round(statistics.median(took), 3), "p99": round(_p99(took), 3),
                         "max": round(max(took), 3)},
        "retries_mean": round(statistics.fmean(lost), 3), "retries_max": max(lost),
        "busy_retries": sum(busy), "cpu_seconds": round(cpu, 1),
        # two nodes that both believe they hold one subnet (the listing has one entry per key)
        "duplicates": count - len({l.subnet for l in leases}),
        "acquired": len({str(l.subnet) for l in leases}), "listed": len(listed),
        "subnets": [str(l.subnet) for l in leases][:10], "done_at": done_at,
        # grants of interrupted creates the nodes still look for when the simulation stops (a daemon
        # looks for an hour): not leaked, unless etcd applies one after its last lookup
        "unsettled": unsettled,
    }


class SimError(Exception):
    """The simulation did not finish: one line for the benchmark."""


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


async def _waves(managers: list[LeaseManager], wave: int, busy: list[int], took: list[float]) -> list:
    """Acquire ``wave`` leases at once, wave after wave; the leases in the managers' order."""
    leases = []
    for first in range(0, len(managers), wave):
        begun = time.monotonic()
        leases += await asyncio.gather(*(_acquire(managers[i], i, begun, busy, took)
                                         for i in range(first, min(first + wave, len(managers)))))
    return leases


async def _settle(stores: list[EtcdStore]) -> None:
    """What the nodes' daemons do next: probe etcd, every second here, which settles the grants
    of their interrupted creates. Bounded by :data:`SETTLE_SECONDS`: a daemon goes on looking for
    a grant etcd does not know yet for an hour (:data:`~overlayd.lease.etcd.SETTLE_WINDOW`), the
    simulator stops: the grants still looked for are in the result's ``unsettled``."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while any(s.unsettled for s in stores) and time.monotonic() < deadline:
        await asyncio.gather(*(s.probe() for s in stores if s.unsettled), return_exceptions=True)
        await asyncio.sleep(1)


async def _acquire(manager: LeaseManager, index: int, begun: float, busy: list[int], took: list[float]):
    """Acquire as the daemon does, counting its etcd retries and timing it from ``begun``."""
    async def pause(seconds: float) -> None:
        busy[index] += 1
        await asyncio.sleep(seconds)

    lease = await retry_unavailable(manager.acquire, "cannot lease a subnet", sleep=pause)
    took[index] = time.monotonic() - begun
    return lease


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
    parser.add_argument("--wave", type=int, default=0,
                        help="nodes acquiring at once, wave after wave (default: all of them)")
    parser.add_argument("--deadline", type=float, default=600, help="seconds before giving up")
    args = parser.parse_args(argv)
    # the daemon's retry logs one warning per node and problem: thousands of lines here
    logging.basicConfig(level=logging.ERROR, format="simnodes: %(message)s")
    try:
        if args.action == "acquire":
            result = asyncio.run(acquire(args.endpoints, args.prefix, args.first, args.count, args.ttl,
                                         args.wave or args.count, args.deadline))
        else:
            result = asyncio.run(revoke(args.endpoints, args.prefix, args.first, args.count))
    except (SimError, OverlayError) as exc:
        print(f"simnodes: {exc}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
