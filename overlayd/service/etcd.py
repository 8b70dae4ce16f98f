"""Services and endpoints in etcd, beside the leases (key layout: :mod:`.model`).

Design notes:

* :class:`ServiceStore` wraps an :class:`~overlayd.lease.etcd.EtcdStore` (the daemon's own,
  the lease one) for its endpoint failover, TLS and error classification (``call``,
  ``watch_range``); the services' watch has a channel of its own there (role
  ``watch:services``), so one watch breaking never cancels the other's calls, and both fail
  over together when the store's probe finds a member hung (a separate store kept its
  channels on a hung member: nothing there called etcd to notice).
* Atomic allocation without index keys: a create lists the services (revision R), picks a
  free ClusterIP and NodePorts, and puts the key in a transaction that also requires
  ``version(key) == 0`` and that no key under ``services/`` changed after R (the lease
  store's ``unchanged_since``). A lost race re-lists and tries again (bounded); nothing
  else ever holds an address, so there is nothing to leak or reclaim.
* Endpoints carry their node's etcd lease: added with the lease ID of the node whose
  subnet holds the pod IP (a reservation, without TTL, binds none), and rewritten by the
  health checker with the ID they were listed with, only if unchanged since (so a removed
  endpoint is never put back by a late health result).
* Deleting a service deletes its endpoints in the same transaction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import random
from collections.abc import AsyncIterator

import aetcd

from ..errors import ConfigError, ServiceError
from ..lease.etcd import EtcdStore
from ..lease.model import Lease
from ..netconf import ServiceRange, parse_config
from .allocator import allocate
from .model import (Change, Endpoint, Service, decode, endpoint_key, endpoints_prefix, service_key,
                    services_prefix, watch_range)

CREATE_ATTEMPTS = 20  # lost allocation races before giving up (each re-lists)
WATCH_ROLE = "watch:services"  # the services' watch channel in the shared EtcdStore


def _range_end(prefix: bytes) -> bytes:
    return aetcd.utils.prefix_range_end(prefix)


class ServiceStore:
    """Services and endpoints under ``etcd.prefix``."""

    def __init__(self, etcd: EtcdStore, rng: random.Random | None = None):
        self.etcd = etcd
        self.prefix = etcd.prefix
        self.rng = rng or random.Random()

    async def service_range(self) -> ServiceRange:
        """The config's ServiceNetwork and NodePortRange; :class:`ServiceError` without them."""
        raw = await self.etcd.get_config()
        if raw is None:
            raise ConfigError(f"no network config at {self.prefix}/config (write one first)")
        config = parse_config(raw)
        if config.services is None:
            raise ServiceError("the network config has no ServiceNetwork: add one (e.g. \"ServiceNetwork\": "
                               "\"10.96.0.0/16\") with 'overlayctl config set' to use services")
        return config.services

    async def list(self) -> tuple[list[Change], int]:
        """Every service and endpoint key (a garbled one as a deletion with its error) and the
        listing's revision: one read, so services and endpoints agree."""
        start, end = (part.encode() for part in watch_range(self.prefix))

        async def op(c):
            res = await c.get_range(start, end)
            changes = [decode(self.prefix, kv.key, kv.value, kv.mod_revision, kv.lease) for kv in res]
            return [ch for ch in changes if ch is not None], res.header.revision
        return await self.etcd.call(op)

    async def services(self) -> tuple[list[Service], int]:
        """Every valid service, by name, and the listing's revision."""
        head = services_prefix(self.prefix).encode()

        async def op(c):
            res = await c.get_range(head, _range_end(head))
            changes = [decode(self.prefix, kv.key, kv.value, kv.mod_revision) for kv in res]
            return [ch.value for ch in changes if ch is not None and ch.value is not None], res.header.revision
        return await self.etcd.call(op)

    async def get(self, name: str) -> Service:
        """The service ``name``; :class:`ServiceError` when there is none (or it is garbled)."""
        key = service_key(self.prefix, name)
        kv = await self.etcd.call(lambda c: c.get(key.encode()))
        if kv is None:
            raise ServiceError(f"no service {name}")
        change = decode(self.prefix, key, kv.value, kv.mod_revision)
        if change.value is None:
            raise ServiceError(change.error)
        return change.value

    async def create(self, request: Service) -> Service:
        """Store ``request`` with a free ClusterIP and NodePorts where it has none (NodePort 0):
        atomic against every other create (see the module note)."""
        services = await self.service_range()
        key = service_key(self.prefix, request.name).encode()
        head = services_prefix(self.prefix).encode()
        for _ in range(CREATE_ATTEMPTS):
            existing, revision = await self.services()
            if any(s.name == request.name for s in existing):
                raise ServiceError(f"service {request.name} already exists (delete it first)")
            chosen = allocate(request, existing, services, self.rng)

            async def op(c, chosen=chosen, revision=revision):
                ok, responses = await c.transaction(
                    compare=[c.transactions.version(key) == 0,
                             c.transactions.mod(head, _range_end(head)) < revision + 1],
                    success=[c.transactions.put(key, chosen.encode())], failure=[])
                return responses[0].response_put.header.revision if ok else None
            written = await self.etcd.call(op)
            if written is not None:
                return dataclasses.replace(chosen, revision=written)
        raise ServiceError(f"creating service {request.name}: lost {CREATE_ATTEMPTS} races for an "
                           "address in a row (too many creates at once?); try again")

    async def delete(self, name: str) -> tuple[Service, int]:
        """Delete the service ``name`` and its endpoints, atomically; the service as it was and
        how many endpoints went with it."""
        current = await self.get(name)
        key = service_key(self.prefix, name).encode()
        eps = endpoints_prefix(self.prefix, name).encode()

        async def op(c):
            ok, responses = await c.transaction(
                compare=[c.transactions.mod(key) == current.revision],
                success=[c.transactions.delete(key), c.transactions.delete(eps, _range_end(eps))], failure=[])
            return responses[1].response_delete_range.deleted if ok else None
        deleted = await self.etcd.call(op)
        if deleted is None:
            raise ServiceError(f"service {name} changed while deleting it; try again")
        return current, deleted

    async def endpoints(self, service: str | None = None) -> list[Endpoint]:
        """The valid endpoints (of ``service``, else of all), as keys sort."""
        head = endpoints_prefix(self.prefix, service).encode()

        async def op(c):
            res = await c.get_range(head, _range_end(head))
            changes = [decode(self.prefix, kv.key, kv.value, kv.mod_revision, kv.lease) for kv in res]
            return [ch.value for ch in changes if ch is not None and ch.value is not None]
        return await self.etcd.call(op)

    async def owner(self, ip: ipaddress.IPv4Address) -> Lease:
        """The lease of the node whose subnet holds ``ip``; :class:`ServiceError` if none does."""
        leases, _ = await self.etcd.list_leases()
        lease = next((l for l in leases if l.subnet.version == 4 and ip in l.subnet), None)
        if lease is None:
            raise ServiceError(f"endpoint {ip}: no node's subnet holds it (see 'overlayctl subnets')")
        return lease

    async def add_endpoint(self, service: str, ip: ipaddress.IPv4Address, port: int | None = None,
                           ready: bool = True, owner: Lease | None = None, source: str | None = None) -> Endpoint:
        """Put the endpoint ``ip[:port]`` of ``service``, bound to the etcd lease of ``owner``
        (by default the node whose subnet holds ``ip``), if the service is unchanged since read;
        ``source`` says who manages it (see :class:`~.model.Endpoint`)."""
        current = await self.get(service)
        if port is not None and len(current.ports) > 1:
            raise ServiceError(f"endpoint {ip}:{port}: service {service} has {len(current.ports)} ports; "
                               "give the endpoint without a port (each port's targetPort is used)")
        lease = owner or await self.owner(ip)
        ep = Endpoint(service, lease.subnet, ip, port, ready, lease.handle, source=source)
        key, skey = endpoint_key(self.prefix, ep).encode(), service_key(self.prefix, service).encode()

        written = await self._put_if_unchanged(skey, current.revision, key, ep.encode(), lease.handle)
        if written is None:
            raise ServiceError(f"service {service} changed or was deleted while adding {ep.address}; try again")
        return dataclasses.replace(ep, revision=written)

    async def remove_endpoint(self, service: str, ip: ipaddress.IPv4Address, port: int | None = None) -> Endpoint:
        """Delete the endpoint ``ip[:port]`` of ``service`` (whichever node owns it)."""
        found = [ep for ep in await self.endpoints(service) if (ep.ip, ep.port) == (ip, port)]
        if not found:
            address = str(ip) if port is None else f"{ip}:{port}"
            raise ServiceError(f"service {service} has no endpoint {address}")
        for ep in found:
            await self.etcd.call(lambda c, ep=ep: c.delete(endpoint_key(self.prefix, ep).encode()))
        return found[0]

    async def delete_endpoint(self, ep: Endpoint) -> bool:
        """Delete ``ep``'s own key (on its node, at its address); whether it was there."""
        return bool(await self.etcd.call(lambda c: c.delete(endpoint_key(self.prefix, ep).encode())))

    async def set_ready(self, ep: Endpoint, ready: bool) -> Endpoint | None:
        """Rewrite ``ep`` as ready or not, on its etcd lease, only if its key is unchanged since
        ``ep`` was read; the new endpoint, or None when it changed or went meanwhile."""
        new = dataclasses.replace(ep, ready=ready)
        key = endpoint_key(self.prefix, ep).encode()
        written = await self._put_if_unchanged(key, ep.revision, key, new.encode(), ep.handle)
        return None if written is None else dataclasses.replace(new, revision=written)

    async def _put_if_unchanged(self, guard: bytes, revision: int, key: bytes, value: bytes,
                                lease: int) -> int | None:
        """Put ``value`` at ``key`` on etcd lease ``lease`` if key ``guard`` was last modified at
        ``revision``: the put's revision, or None if ``guard`` changed."""
        async def op(c):
            ok, responses = await c.transaction(
                compare=[c.transactions.mod(guard) == revision],
                success=[c.transactions.put(key, value, lease=lease)], failure=[])
            return responses[0].response_put.header.revision if ok else None
        return await self.etcd.call(op)

    async def watch(self, revision: int) -> AsyncIterator[list[Change]]:
        """Changes to services and endpoints after ``revision``; ends as the lease watch does
        (:class:`~overlayd.errors.StoreUnavailable`, :class:`~overlayd.errors.WatchReset`)."""
        start, end = (part.encode() for part in watch_range(self.prefix))
        async with contextlib.aclosing(self.etcd.watch_range(start, end, revision, role=WATCH_ROLE)) as events:
            async for ev in events:
                change = decode(self.prefix, ev.kv.key, None if ev.kind == "DELETE" else ev.kv.value,
                                ev.kv.mod_revision, ev.kv.lease)
                if change is not None:
                    yield [change]

    async def close(self) -> None:
        await self.etcd.close()
