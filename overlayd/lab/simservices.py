"""Services in bulk for ``scripts/bench-control --services``: the project's own
:class:`~overlayd.service.etcd.ServiceStore` writes them, as ``overlayctl`` would.

Endpoints belong to simulated nodes (:mod:`overlayd.lab.simnodes` leases, PublicIPs
198.19.x.y): each is bound to its node's etcd lease, and no real daemon health-checks it
(a daemon checks only its own), so they stay ready. Run inside the lab's etcd namespace::

    python -m overlayd.lab.simservices create --endpoints URL --services 1000 --per-service 10 --owners 50
    python -m overlayd.lab.simservices add --endpoints URL --service svc-1 --ip 10.244.3.250
    python -m overlayd.lab.simservices remove --endpoints URL --service svc-1 --ip 10.244.3.250

Services are ``svc-1`` .. ``svc-S``, each ``80:8080/tcp``; endpoint ``j`` of service ``i``
(0-based, ``k = i * per_service + j``) is host ``2 + k // owners`` of owner ``k % owners``'s
subnet, so every pod address is distinct. Each command prints one JSON object, with
``done_at``: the wall-clock time the write was acknowledged (``add``/``remove`` also
``started_at``: when it was issued, its reads of the service included), from which the
benchmark times propagation.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
import time

from ..lease.etcd import EtcdStore
from ..service.etcd import ServiceStore
from ..service.model import Service, ServicePort
from .simnodes import sim_ip

CONCURRENCY = 64  # endpoint writes in flight


def service_name(index: int) -> str:
    """The name of service ``index`` (0-based): ``svc-1`` ..."""
    return f"svc-{index + 1}"


def endpoint_ip(subnets: list[ipaddress.IPv4Network], service: int, endpoint: int,
                per_service: int) -> tuple[int, ipaddress.IPv4Address]:
    """Owner index and pod address of ``endpoint`` of ``service`` (both 0-based); pure."""
    k = service * per_service + endpoint
    owner = k % len(subnets)
    host = 2 + k // len(subnets)
    if host >= subnets[owner].num_addresses - 1:
        raise ValueError(f"{len(subnets)} owners' subnets are too small for {k + 1} endpoints")
    return owner, subnets[owner].network_address + host


async def _owners(store: ServiceStore, first: int, count: int) -> list:
    """The simulated nodes' leases (``first`` .. ``first + count - 1``), in that order."""
    leases, _ = await store.etcd.list_leases()
    by_ip = {l.public_ip: l for l in leases if l.subnet.version == 4}
    missing = [i for i in range(first, first + count) if sim_ip(i) not in by_ip]
    if missing:
        raise SystemExit(f"simservices: no lease for simulated node(s) {missing[:5]} (simnodes acquire first)")
    return [by_ip[sim_ip(i)] for i in range(first, first + count)]


async def create(endpoints: str, prefix: str, services: int, per_service: int, first: int, owners: int) -> dict:
    store = ServiceStore(EtcdStore(endpoints, prefix))
    try:
        leases = await _owners(store, first, owners)
        subnets = [l.subnet for l in leases]
        started = time.monotonic()
        for i in range(services):  # one at a time: concurrent creates race for addresses
            await store.create(Service(service_name(i), None, (ServicePort(80, 8080),)))
        created = time.monotonic()
        gate = asyncio.Semaphore(CONCURRENCY)

        async def add(i: int, j: int) -> None:
            owner, ip = endpoint_ip(subnets, i, j, per_service)
            async with gate:
                await store.add_endpoint(service_name(i), ip, owner=leases[owner])
        await asyncio.gather(*(add(i, j) for i in range(services) for j in range(per_service)))
        done = time.monotonic()
    finally:
        await store.close()
    return {"services": services, "endpoints": services * per_service, "create_s": round(created - started, 2),
            "endpoints_s": round(done - created, 2), "done_at": time.time()}


async def change(endpoints: str, prefix: str, action: str, service: str, ip: str) -> dict:
    store = ServiceStore(EtcdStore(endpoints, prefix))
    try:
        address = ipaddress.IPv4Address(ip)
        started_at = time.time()
        if action == "add":
            await store.add_endpoint(service, address)
        else:
            await store.remove_endpoint(service, address)
        done_at = time.time()
    finally:
        await store.close()
    return {"action": action, "service": service, "ip": ip, "started_at": started_at, "done_at": done_at}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simservices", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["create", "add", "remove"])
    parser.add_argument("--endpoints", required=True)
    parser.add_argument("--prefix", default="/coreos.com/network")
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--per-service", type=int, default=10)
    parser.add_argument("--owners-first", type=int, default=1, help="index of the first simulated owner node")
    parser.add_argument("--owners", type=int, default=50, help="simulated nodes the endpoints belong to")
    parser.add_argument("--service", help="add/remove: the service")
    parser.add_argument("--ip", help="add/remove: the endpoint's address")
    args = parser.parse_args(argv)
    if args.action == "create":
        result = asyncio.run(create(args.endpoints, args.prefix, args.services, args.per_service,
                                    args.owners_first, args.owners))
    else:
        result = asyncio.run(change(args.endpoints, args.prefix, args.action, args.service, args.ip))
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
