"""The etcd v3 :class:`Store`, on aetcd (asyncio, gRPC).

Design notes (what aetcd leaves to us, measured against Debian's etcd 3.4.23):

* Several endpoints, one client at a time: aetcd talks to one ``host:port``.
  Every call goes through :meth:`EtcdStore._call`, which tries the current
  endpoint and fails over to the next ones; when all fail it raises
  :class:`StoreUnavailable` and the caller backs off and retries.
* Atomic create: a transaction ``if version(key) == 0 then put(key, value,
  lease)``; a lost race returns None and the grant is revoked (no leaked etcd
  leases). Reuse rewrites a key only if its mod revision is the one we listed.
* Renewal: ``LeaseKeepAlive`` answers TTL 0 for an expired lease instead of
  failing; we turn that into :class:`LeaseError`.
* Watches: a broken stream ends with ``ConnectionFailedError`` and a
  compacted start revision with ``RevisionCompactedError``; both become
  :class:`StoreUnavailable` / :class:`WatchReset`, and the caller re-lists.
* TLS is not supported yet: ``https://`` endpoints are refused with a clear
  error rather than silently spoken to in plaintext.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aetcd
import aetcd.exceptions as aex

from ..errors import ConfigError, LeaseError, StoreError, StoreUnavailable, WatchReset
from .model import (DEFAULT_PREFIX, Lease, LeaseAttrs, config_key, parse_subnet_key,
                    subnet_key, subnets_prefix)
from .watcher import LeaseEvent

log = logging.getLogger(__name__)

_UNAVAILABLE = (aex.ConnectionFailedError, aex.ConnectionTimeoutError, asyncio.TimeoutError,
                aex.WatchTimeoutError, aex.InternalError)

# gRPC keepalives so that a silently dead etcd breaks the watch stream.
_GRPC_OPTIONS = {
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.max_pings_without_data": 0,
}


def parse_endpoints(spec: str | list[str]) -> list[tuple[str, int]]:
    """``"http://a:2379,b:2379"`` -> ``[("a", 2379), ("b", 2379)]``; ConfigError if malformed."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    endpoints = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        url = urlsplit(item if "://" in item else f"http://{item}")
        if url.scheme == "https":
            raise ConfigError(f"etcd endpoint {item}: TLS (https) is not supported yet")
        if url.scheme != "http" or not url.hostname or url.path not in ("", "/"):
            raise ConfigError(f"etcd endpoint {item!r}: expected http://HOST:PORT")
        try:
            port = url.port or 2379
        except ValueError:
            raise ConfigError(f"etcd endpoint {item!r}: bad port") from None
        endpoints.append((url.hostname, port))
    if not endpoints:
        raise ConfigError("no etcd endpoint given")
    return endpoints


class EtcdStore:
    """Leases and config in etcd under ``prefix``, flannel's layout."""

    def __init__(self, endpoints: str | list[str], prefix: str = DEFAULT_PREFIX,
                 timeout: float = 5.0):
        self.endpoints = parse_endpoints(endpoints)
        self.prefix = prefix.rstrip("/") or DEFAULT_PREFIX
        self.timeout = timeout
        self._current = 0
        self._client: aetcd.Client | None = None

    def _endpoint_str(self, index: int) -> str:
        host, port = self.endpoints[index]
        return f"{host}:{port}"

    async def _connect(self) -> aetcd.Client:
        if self._client is None:
            host, port = self.endpoints[self._current]
            client = aetcd.Client(host=host, port=port, timeout=self.timeout,
                                  options=_GRPC_OPTIONS)
            await client.connect()
            self._client = client
        return self._client

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except Exception:  # closing a broken channel may fail in many ways
                log.debug("closing etcd client failed", exc_info=True)

    async def _call(self, op):
        """Run ``op(client)`` on the current endpoint, failing over to the others."""
        errors = []
        for _ in range(len(self.endpoints)):
            try:
                client = await self._connect()
                return await asyncio.wait_for(op(client), self.timeout + 1)
            except _UNAVAILABLE as exc:
                errors.append(f"{self._endpoint_str(self._current)}: {_short(exc)}")
                await self._drop_client()
                self._current = (self._current + 1) % len(self.endpoints)
            except aex.ClientError as exc:
                raise StoreError(f"etcd error: {_short(exc)}") from None
        raise StoreUnavailable("etcd unreachable (" + "; ".join(errors) + ")")

    async def get_config(self) -> bytes | None:
        res = await self._call(lambda c: c.get(config_key(self.prefix).encode()))
        return None if res is None else res.value

    async def put_config(self, raw: bytes) -> None:
        await self._call(lambda c: c.put(config_key(self.prefix).encode(), raw))

    def _decode(self, key: bytes, value: bytes, lease_id: int, mod_revision: int,
                expiration: float | None = None) -> Lease:
        subnet = parse_subnet_key(self.prefix, key)
        return Lease(subnet, LeaseAttrs.decode(value), expiration, lease_id, mod_revision)

    async def list_leases(self, with_ttl: bool = False) -> tuple[list[Lease], int]:
        """Every decodable lease and the listing's revision.

        ``with_ttl`` also asks etcd for each lease's remaining TTL (one call
        per lease: for ``overlayctl``, not for the daemon's hot path).
        """
        async def op(c):
            res = await c.get_prefix(subnets_prefix(self.prefix).encode())
            leases = []
            for kv in res:
                try:
                    lease = self._decode(kv.key, kv.value, kv.lease, kv.mod_revision)
                except LeaseError as exc:
                    log.warning("ignoring %s: %s", kv.key.decode(errors="replace"), exc)
                    continue
                if with_ttl and kv.lease:
                    info = await c.get_lease_info(kv.lease, keys=False)
                    if info.TTL > 0:
                        lease = Lease(lease.subnet, lease.attrs, time.time() + info.TTL,
                                      lease.handle, lease.revision)
                leases.append(lease)
            return leases, res.header.revision
        return await self._call(op)

    async def _put_if(self, compare, subnet: ipaddress.IPv4Network, attrs: LeaseAttrs,
                      ttl: int, old_handle: int = 0) -> Lease | None:
        key = subnet_key(self.prefix, subnet).encode()

        async def op(c):
            grant = await c.lease(ttl)
            ok, responses = await c.transaction(
                compare=[compare(c, key)],
                success=[c.transactions.put(key, attrs.encode(), lease=grant.id)],
                failure=[],
            )
            if not ok:
                await c.revoke_lease(grant.id)
                return None
            if old_handle:
                try:
                    await c.revoke_lease(old_handle)  # the key moved to the new grant
                except aex.ClientError:
                    pass  # already expired: nothing to release
            revision = responses[0].response_put.header.revision
            return Lease(subnet, attrs, time.time() + grant.ttl, grant.id, revision)
        return await self._call(op)

    async def create_lease(self, subnet, attrs, ttl):
        return await self._put_if(lambda c, k: c.transactions.version(k) == 0, subnet, attrs, ttl)

    async def update_lease(self, lease, attrs, ttl):
        return await self._put_if(lambda c, k: c.transactions.mod(k) == lease.revision,
                                  lease.subnet, attrs, ttl, old_handle=lease.handle)

    async def renew_lease(self, lease):
        """Keep the etcd lease alive AND check the key is still bound to it.

        A keepalive alone is not enough: an operator's ``etcdctl del`` (or a
        ``put`` without our lease) leaves the etcd lease alive while the key
        is gone or no longer ours, and the other nodes have dropped us.
        """
        key = subnet_key(self.prefix, lease.subnet).encode()

        async def op(c):
            return await c.refresh_lease(lease.handle), await c.get(key)

        reply, kv = await self._call(op)
        if reply is None or reply.TTL <= 0:
            raise LeaseError(f"lease on {lease.subnet} has expired")
        if kv is None:
            raise LeaseError(f"lease key for {lease.subnet} was deleted")
        if kv.lease != lease.handle:
            raise LeaseError(f"lease key for {lease.subnet} was rewritten by someone else")
        return Lease(lease.subnet, lease.attrs, time.time() + reply.TTL, lease.handle,
                     lease.revision)

    async def delete_lease(self, subnet):
        key = subnet_key(self.prefix, subnet).encode()
        return bool(await self._call(lambda c: c.delete(key)))

    async def watch_leases(self, revision: int) -> AsyncIterator[list[LeaseEvent]]:
        prefix = subnets_prefix(self.prefix).encode()
        watch = await self._call(lambda c: c.watch_prefix(prefix, start_revision=revision + 1))
        try:
            async for ev in watch:
                event = self._event(ev)
                if event is not None:
                    yield [event]
        except aex.RevisionCompactedError as exc:
            raise WatchReset(f"watch revision compacted: {exc}") from None
        except _UNAVAILABLE as exc:
            await self._drop_client()
            raise StoreUnavailable(f"etcd watch broke: {_short(exc)}") from None
        except aex.ClientError as exc:
            await self._drop_client()
            raise StoreUnavailable(f"etcd watch failed: {_short(exc)}") from None
        finally:
            try:
                await watch.cancel()
            except Exception:
                log.debug("cancelling the watch failed", exc_info=True)
        # The stream ended without an error (client closed): treat as broken.
        raise StoreUnavailable("etcd watch ended")

    def _event(self, ev) -> LeaseEvent | None:
        try:
            subnet = parse_subnet_key(self.prefix, ev.kv.key)
            if ev.kind == "DELETE":
                return LeaseEvent(subnet, None, ev.kv.mod_revision)
            lease = self._decode(ev.kv.key, ev.kv.value, ev.kv.lease, ev.kv.mod_revision)
            return LeaseEvent(subnet, lease, ev.kv.mod_revision)
        except LeaseError as exc:
            log.warning("ignoring watch event: %s", exc)
            return None

    async def close(self) -> None:
        await self._drop_client()


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    return text[:200]
