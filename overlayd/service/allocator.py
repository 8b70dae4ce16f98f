"""Choosing a free ClusterIP or NodePort. Pure: the random source is passed in.

Both are the same problem: a random free number in ``lo..hi`` given the taken ones. As the
subnet allocator (:mod:`overlayd.lease.allocator`), the free numbers are never listed: the
k-th free one is found by skipping the taken ones before it, so a /12 (a million
ClusterIPs) costs what its taken addresses cost. Random rather than lowest-first, so that
two operators creating services at once rarely race for the same number (the store retries
a lost race with a fresh listing anyway).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
from collections.abc import Iterable

from ..errors import ServiceError, ServiceRangeFull
from ..netconf import ServiceRange
from .model import Service, ServicePort


def free_number(lo: int, hi: int, taken: Iterable[int], rng: random.Random | None = None) -> int | None:
    """A number in ``lo..hi`` (inclusive) not in ``taken``, uniformly at random; None when
    every one is taken."""
    blocked = sorted({t for t in taken if lo <= t <= hi})
    free = hi - lo + 1 - len(blocked)
    if free <= 0:
        return None
    pick = lo + (rng or random).randrange(free)
    for t in blocked:  # the pick-th free number: step over the taken ones at or below it
        if t > pick:
            break
        pick += 1
    return pick


def allocate(service: Service, existing: Iterable[Service], services: ServiceRange,
             rng: random.Random | None = None) -> Service:
    """``service`` with a ClusterIP (if it has none) and every NodePort 0 replaced by free
    ones from ``services``; :class:`ServiceError` if a ClusterIP or NodePort it names is
    outside the ranges or taken, :class:`ServiceRangeFull` if none is left."""
    existing = list(existing)
    service.check_range(services)
    ips = {int(s.cluster_ip) for s in existing}
    ports = {(p.node_port, p.protocol) for s in existing for p in s.ports if p.node_port}
    cluster_ip = service.cluster_ip
    if cluster_ip is not None and int(cluster_ip) in ips:
        owner = next(s.name for s in existing if s.cluster_ip == cluster_ip)
        raise ServiceError(f"ClusterIP {cluster_ip} is taken by service {owner}")
    if cluster_ip is None:
        number = free_number(int(services.first_ip), int(services.last_ip), ips, rng)
        if number is None:
            raise ServiceRangeFull(f"ServiceNetwork {services.network} is full: every ClusterIP is taken")
        cluster_ip = ipaddress.IPv4Address(number)
    chosen = []
    for p in service.ports:
        if p.node_port and (p.node_port, p.protocol) in ports:
            raise ServiceError(f"nodePort {p.node_port}/{p.proto} is taken")
        if p.node_port == 0:
            number = free_number(services.node_port_min, services.node_port_max,
                                 {n for n, proto in ports if proto == p.protocol}, rng)
            if number is None:
                raise ServiceRangeFull(f"NodePortRange {services.node_port_min}-{services.node_port_max} "
                                       f"is full for {p.protocol}")
            p = ServicePort(p.port, p.target_port, p.protocol, number)
        ports.add((p.node_port, p.protocol))
        chosen.append(p)
    return dataclasses.replace(service, cluster_ip=cluster_ip, ports=tuple(chosen))
