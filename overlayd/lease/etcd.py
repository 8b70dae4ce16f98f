"""The etcd v3 :class:`Store`, on aetcd (asyncio, gRPC).

Design notes (what aetcd leaves to us, measured against Debian's etcd 3.4.23):

* Several endpoints, one client at a time: aetcd talks to one ``host:port``.
  Every call goes through :meth:`EtcdStore._call`, which tries the current
  endpoint and fails over to the next ones; when all fail it raises
  :class:`StoreUnavailable` and the caller waits for etcd and retries.
* Two channels: the watch has its own client. With one shared channel, the
  loop that saw a failure closed it and cancelled the other loop's call in
  flight; that CancelledError escaped and the renew task died silently. A
  CancelledError that did not come from cancelling our own task is still
  treated as "etcd unavailable", never passed on.
* Atomic, idempotent create: we choose the etcd lease ID ourselves, grant it
  (a retry that finds it granted carries on) and run ``if version(key) == 0
  then put(key, value, lease=ID) else get(key)``. A reply lost on failover is
  retried on the next endpoint and recognises its own first attempt by the
  lease ID on the key, instead of "losing" to itself and taking a second
  subnet. A lost race revokes the grant; a grant whose fate is unknown (all
  endpoints failed) is revoked later if no key is bound to it.
* Reservations: a lease key without an etcd lease (flannel's documented way to
  pin a subnet to a node). It is listed with ``handle == 0``, reused by the
  node with its PublicIP without ever gaining a TTL, and never handed out.
* Renewal: ``LeaseKeepAlive`` answers TTL 0 for an expired lease instead of
  failing; we turn that into :class:`LeaseError`, and also when the key is no
  longer bound to our lease (then the now useless grant is revoked).
* Watches: a broken stream ends with ``ConnectionFailedError`` and a
  compacted start revision with ``RevisionCompactedError``, at creation or
  later; they become :class:`StoreUnavailable` / :class:`WatchReset`, and
  the caller re-lists. A lease value that no longer decodes is reported as a
  deletion (the peer it was is gone), with a warning naming the key.
* TLS is not supported yet: ``https://`` endpoints are refused with a clear
  error rather than silently spoken to in plaintext.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
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

PROBE_TIMEOUT = 3.0  # seconds a connectivity probe may take

_UNAVAILABLE = (aex.ConnectionFailedError, aex.ConnectionTimeoutError, asyncio.TimeoutError,
                aex.WatchTimeoutError, aex.InternalError)

# gRPC channel options. Keepalives so that a dead etcd eventually breaks an idle
# watch stream (the Connectivity probe notices much sooner). Each channel gets
# its own subchannel pool and a short reconnect backoff: by default gRPC shares
# subchannels process-wide, so a fresh channel inherited a subchannel still in
# reconnect backoff (up to 120 s) after etcd restarted, and failed with
# "connection refused" against an etcd that was answering again.
_GRPC_OPTIONS = {
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.max_pings_without_data": 0,
    "grpc.use_local_subchannel_pool": 1,
    "grpc.initial_reconnect_backoff_ms": 250,
    "grpc.min_reconnect_backoff_ms": 250,
    "grpc.max_reconnect_backoff_ms": 2_000,
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
        self._clients: dict[str, aetcd.Client] = {}  # "kv" and "watch": one channel each
        self._unsettled: set[int] = set()  # lease IDs of creates that failed with no known outcome
        self._decoded: dict[bytes, tuple[int, Lease | None]] = {}  # key -> (mod revision, lease)

    def _endpoint_str(self, index: int) -> str:
        host, port = self.endpoints[index]
        return f"{host}:{port}"

    async def _connect(self, role: str) -> aetcd.Client:
        client = self._clients.get(role)
        if client is None:
            host, port = self.endpoints[self._current]
            client = aetcd.Client(host=host, port=port, timeout=self.timeout,
                                  options=_GRPC_OPTIONS)
            await client.connect()
            self._clients[role] = client
        return client

    async def _drop_client(self, role: str) -> None:
        client = self._clients.pop(role, None)
        if client is not None:
            try:
                await client.close()
            except Exception:  # closing a broken channel may fail in many ways
                log.debug("closing etcd client failed", exc_info=True)

    async def _call(self, op, role: str = "kv", timeout: float | None = None):
        """Run ``op(client)`` on the current endpoint, failing over to the others."""
        errors = []
        for _ in range(len(self.endpoints)):
            endpoint = self._endpoint_str(self._current)
            try:
                client = await self._connect(role)
                return await asyncio.wait_for(op(client), (timeout or self.timeout) + 1)
            except _UNAVAILABLE as exc:
                errors.append(f"{endpoint}: {_short(exc)}")
            except asyncio.CancelledError:
                if _really_cancelled():
                    raise
                errors.append(f"{endpoint}: call cancelled (channel closed)")
            except aex.RevisionCompactedError as exc:  # from watch() at creation
                raise WatchReset(f"watch revision compacted: {_short(exc)}") from None
            except aex.ClientError as exc:
                raise StoreError(f"etcd error: {_short(exc)}") from None
            await self._drop_client(role)
            if self._endpoint_str(self._current) == endpoint:
                self._current = (self._current + 1) % len(self.endpoints)
        raise StoreUnavailable("etcd unreachable (" + "; ".join(errors) + ")")

    async def probe(self) -> None:
        """One cheap read that fails with :class:`StoreUnavailable` when etcd does not answer."""
        await self._call(lambda c: c.get(config_key(self.prefix).encode()),
                         timeout=min(self.timeout, PROBE_TIMEOUT))

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
            leases, decoded = [], {}
            for kv in res:
                # a key's mod revision names its value: decode only what changed since the
                # last listing (at 1000 nodes every acquisition lists 1000 leases), and warn
                # about a bad value once, not on every listing
                cached = self._decoded.get(kv.key)
                if cached is not None and cached[0] == kv.mod_revision:
                    lease = cached[1]
                else:
                    try:
                        lease = self._decode(kv.key, kv.value, kv.lease, kv.mod_revision)
                    except LeaseError as exc:
                        log.warning("ignoring %s: %s", kv.key.decode(errors="replace"), exc)
                        lease = None
                decoded[kv.key] = (kv.mod_revision, lease)
                if lease is None:
                    continue
                if with_ttl and kv.lease:
                    info = await c.get_lease_info(kv.lease, keys=False)
                    if info.TTL > 0:
                        lease = Lease(lease.subnet, lease.attrs, time.time() + info.TTL,
                                      lease.handle, lease.revision)
                leases.append(lease)
            self._decoded = decoded
            return leases, res.header.revision
        return await self._call(op)

    async def _settle(self, c) -> None:
        """Revoke grants from creates whose outcome we never saw, unless a key is bound to them."""
        for lease_id in list(self._unsettled):
            info = await c.get_lease_info(lease_id, keys=True)
            if info.TTL > 0 and not info.keys:
                await c.revoke_lease(lease_id)
                log.info("revoked etcd lease %x left by an interrupted create", lease_id)
            self._unsettled.discard(lease_id)

    async def _put_if(self, compare, subnet: ipaddress.IPv4Network, attrs: LeaseAttrs,
                      ttl: int | None, old_handle: int = 0, reclaim_invalid: bool = False
                      ) -> Lease | None:
        """Put the lease if ``compare`` holds; None if it does not. ``ttl`` None: no TTL
        (a reservation). Safe to retry after a lost reply: see the module note."""
        key = subnet_key(self.prefix, subnet).encode()
        value = attrs.encode()
        lease_id = _new_lease_id() if ttl is not None else 0

        async def op(c):
            if self._unsettled:
                await self._settle(c)
            if lease_id:
                try:
                    await c.lease(ttl, lease_id)
                except aex.DuplicateLeaseError:
                    pass  # granted by an attempt whose reply was lost
            ok, responses = await c.transaction(
                compare=[compare(c, key)],
                success=[c.transactions.put(key, value, lease=lease_id)],
                failure=[c.transactions.get(key)],
            )
            if ok:
                revision = responses[0].response_put.header.revision
            else:
                kv = responses[0][0][1] if responses and responses[0] else None
                if kv is not None and kv.value == value and kv.lease == lease_id:
                    revision = kv.mod_revision  # our own earlier attempt won
                elif kv is not None and reclaim_invalid and not _decodes(kv.value):
                    log.warning("%s holds no valid lease (%r...): taking it back", key.decode(),
                                kv.value[:40])
                    ok, responses = await c.transaction(
                        compare=[c.transactions.mod(key) == kv.mod_revision],
                        success=[c.transactions.put(key, value, lease=lease_id)], failure=[])
                    if not ok:
                        return await _abandon(c, lease_id)
                    revision = responses[0].response_put.header.revision
                else:
                    return await _abandon(c, lease_id)
            if old_handle and old_handle != lease_id:
                try:
                    await c.revoke_lease(old_handle)  # the key moved to the new grant
                except aex.ClientError:
                    pass  # already expired: nothing to release
            expiration = None if ttl is None else time.time() + ttl
            return Lease(subnet, attrs, expiration, lease_id, revision)

        try:
            return await self._call(op)
        except StoreUnavailable:
            if lease_id:  # granted or not, bound or not: settled once etcd answers again
                self._unsettled.add(lease_id)
            raise

    async def create_lease(self, subnet, attrs, ttl, reclaim_invalid: bool = False):
        """Create the lease if the key is free (or, with ``reclaim_invalid``, holds garbage)."""
        return await self._put_if(lambda c, k: c.transactions.version(k) == 0, subnet, attrs, ttl,
                                  reclaim_invalid=reclaim_invalid)

    async def update_lease(self, lease, attrs, ttl):
        """Rewrite ``lease`` if unchanged since listed; a reservation stays one (no TTL)."""
        return await self._put_if(lambda c, k: c.transactions.mod(k) == lease.revision,
                                  lease.subnet, attrs, None if lease.handle == 0 else ttl,
                                  old_handle=lease.handle)

    async def renew_lease(self, lease):
        """Keep the etcd lease alive AND check the key is still bound to it.

        A keepalive alone is not enough: an operator's ``etcdctl del`` (or a
        ``put`` without our lease) leaves the etcd lease alive while the key
        is gone or no longer ours, and the other nodes have dropped us. For a
        reservation (no etcd lease) only the key is checked.
        """
        key = subnet_key(self.prefix, lease.subnet).encode()

        async def op(c):
            reply = await c.refresh_lease(lease.handle) if lease.handle else None
            kv = await c.get(key)
            if lease.handle and (kv is None or kv.lease != lease.handle) and reply and reply.TTL > 0:
                await c.revoke_lease(lease.handle)  # nothing of ours is bound to it any more
            return reply, kv

        reply, kv = await self._call(op)
        if lease.handle and (reply is None or reply.TTL <= 0):
            raise LeaseError(f"lease on {lease.subnet} has expired")
        if kv is None:
            raise LeaseError(f"lease key for {lease.subnet} was deleted")
        if kv.lease != lease.handle or not _decodes(kv.value) \
                or LeaseAttrs.decode(kv.value).public_ip != lease.public_ip:
            raise LeaseError(f"lease key for {lease.subnet} was rewritten by someone else")
        expiration = time.time() + reply.TTL if lease.handle else None
        return Lease(lease.subnet, lease.attrs, expiration, lease.handle, kv.mod_revision)

    async def delete_lease(self, subnet):
        key = subnet_key(self.prefix, subnet).encode()
        return bool(await self._call(lambda c: c.delete(key)))

    async def reserve(self, subnet: ipaddress.IPv4Network, attrs: LeaseAttrs) -> Lease:
        """Pin ``subnet`` to the node with ``attrs.public_ip``: a lease key without TTL.

        A live lease of that node is converted in place (its value kept);
        :class:`LeaseError` if another node holds the subnet.
        """
        leases, _ = await self.list_leases()
        current = next((l for l in leases if l.subnet == subnet), None)
        if current is None:
            lease = await self.create_lease(subnet, attrs, None)
        elif current.public_ip != attrs.public_ip:
            raise LeaseError(f"{subnet} is leased by {current.public_ip}, not {attrs.public_ip}")
        else:
            lease = await self._put_if(lambda c, k: c.transactions.mod(k) == current.revision,
                                       subnet, current.attrs, None)
        if lease is None:
            raise LeaseError(f"{subnet} changed while reserving it; try again")
        return lease

    async def release(self, subnet: ipaddress.IPv4Network, ttl: int) -> Lease:
        """Turn a reservation back into an ordinary lease that expires after ``ttl`` seconds
        unless its node renews it; :class:`LeaseError` if ``subnet`` is not reserved."""
        leases, _ = await self.list_leases()
        current = next((l for l in leases if l.subnet == subnet), None)
        if current is None or current.handle != 0:
            raise LeaseError(f"{subnet} is not reserved")
        lease = await self._put_if(lambda c, k: c.transactions.mod(k) == current.revision,
                                   subnet, current.attrs, ttl)
        if lease is None:
            raise LeaseError(f"{subnet} changed while releasing it; try again")
        return lease

    async def watch_leases(self, revision: int) -> AsyncIterator[list[LeaseEvent]]:
        prefix = subnets_prefix(self.prefix).encode()
        watch = await self._call(lambda c: c.watch_prefix(prefix, start_revision=revision + 1),
                                 role="watch")
        try:
            async for ev in watch:
                event = self._event(ev)
                if event is not None:
                    yield [event]
        except aex.RevisionCompactedError as exc:
            raise WatchReset(f"watch revision compacted: {exc}") from None
        except (*_UNAVAILABLE, aex.ClientError) as exc:
            await self._drop_client("watch")
            raise StoreUnavailable(f"etcd watch broke: {_short(exc)}") from None
        except asyncio.CancelledError:
            if _really_cancelled():
                raise
            await self._drop_client("watch")
            raise StoreUnavailable("etcd watch cancelled (channel closed)") from None
        finally:
            try:
                await watch.cancel()
            except Exception:
                log.debug("cancelling the watch failed", exc_info=True)
        # The stream ended without an error (client closed): treat as broken.
        await self._drop_client("watch")
        raise StoreUnavailable("etcd watch ended")

    def _event(self, ev) -> LeaseEvent | None:
        key = ev.kv.key.decode(errors="replace")
        try:
            subnet = parse_subnet_key(self.prefix, ev.kv.key)
        except LeaseError as exc:
            log.warning("ignoring watch event on %s: %s", key, exc)
            return None
        if ev.kind == "DELETE":
            return LeaseEvent(subnet, None, ev.kv.mod_revision)
        try:
            lease = self._decode(ev.kv.key, ev.kv.value, ev.kv.lease, ev.kv.mod_revision)
        except LeaseError as exc:
            log.warning("%s no longer holds a valid lease (%s): treating it as gone", key, exc)
            return LeaseEvent(subnet, None, ev.kv.mod_revision)
        return LeaseEvent(subnet, lease, ev.kv.mod_revision)

    async def close(self) -> None:
        for role in list(self._clients):
            await self._drop_client(role)


def _new_lease_id() -> int:
    """A random positive 63-bit etcd lease ID (etcd rejects 0 and negative IDs)."""
    return secrets.randbits(62) + 1


def _decodes(value: bytes) -> bool:
    try:
        LeaseAttrs.decode(value)
    except LeaseError:
        return False
    return True


async def _abandon(c, lease_id: int) -> None:
    """A create that lost: release its grant; None for the caller."""
    if lease_id:
        await c.revoke_lease(lease_id)
    return None


def _really_cancelled() -> bool:
    """Whether the running task is being cancelled (not a call cancelled under us)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    return text[:200]
