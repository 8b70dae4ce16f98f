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
* TLS and users: aetcd 1.0's ``connect()`` only builds an insecure channel,
  so :class:`_Client` overrides it to build our own (``grpc.aio.secure_channel``
  with the CA, key and certificate files, read again on every reconnect so a
  rotated certificate is picked up). gRPC verifies the endpoint's host
  against the server certificate's SANs (IP SANs for IP endpoints). All
  endpoints are https or none: a mix is refused. A failed handshake is
  reported in words (which side refused) instead of gRPC's TSI code, and is
  retried like an unreachable etcd: a certificate may be rotated in, or the
  server's fixed. aetcd authenticates once per channel and never refreshes
  its token (etcd's simple tokens expire after ``--auth-token-ttl``, 300 s,
  of idleness; JWTs at a fixed time): "invalid auth token" drops the client
  and retries once, which authenticates again. A wrong password is a
  :class:`StoreError`, not retried. We chose this over switching client by
  measurement: see "The etcd client" in docs/design.md and "TLS and etcd clusters"
  in docs/operator-guide.md.
* A hung member (SIGSTOP, a frozen VM) accepts connections and never
  answers. While other endpoints remain, one gets at most
  ``FAILOVER_AFTER`` seconds, the last one the full timeout; leaving an
  endpoint also drops the watch channel on it, so the watch re-lists and
  resumes on the live member instead of waiting ~15 s for gRPC keepalives.
  A lone endpoint keeps its channel after a call fails (gRPC reconnects it), unless
  a new one may help (TLS files to read again): closing it would fail every call in
  flight on it, which at a few thousand concurrent callers was a collapse.
* Errors are classified once, by :func:`classify` (issue 16): a call that got
  no answer fails over and ends as :class:`StoreUnavailable`; an answer that
  is transient (``too many requests``, ``database space exceeded`` until an
  operator compacts, an aborted or unknown status) is :class:`StoreRetryable`;
  ``requested lease not found`` (a renewal or revoke racing an expiry) is a
  :class:`LeaseError`, which the renew loop answers by re-acquiring its
  subnet; anything else (permission denied, invalid argument) is a fatal
  :class:`StoreError`. Renewal, startup and the peer watch all retry the
  first two with jittered backoff; before, every answer but "unavailable"
  became a StoreError that stopped the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import ipaddress
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

# gRPC's C core logs TLS failures straight to stderr, several lines each; we
# report them as one line ourselves. Must be set before grpc is first imported.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import aetcd  # noqa: E402
import aetcd.exceptions as aex  # noqa: E402
import grpc  # noqa: E402
from aetcd import rpc, watcher  # noqa: E402
from aetcd.client import _handle_errors  # noqa: E402

from ..errors import ConfigError, LeaseError, StoreError, StoreRetryable, StoreUnavailable, WatchReset
from ..hostport import host_port
from .model import (DEFAULT_PREFIX, Lease, LeaseAttrs, config_key, parse_lease_key,
                    subnet_key, subnets_prefix)
from .watcher import LeaseEvent

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 3.0  # seconds a connectivity probe may take
SETTLE_WINDOW = 3600.0  # seconds a grant of a failed create that etcd does not know is looked for (_settle)
FAILOVER_AFTER = 2.0  # seconds one endpoint gets while others remain (see the module note)

_UNAVAILABLE = (aex.ConnectionFailedError, aex.ConnectionTimeoutError, asyncio.TimeoutError,
                aex.WatchTimeoutError, aex.InternalError)

class Verdict(enum.Enum):
    """What an etcd error means for the caller (see the module note)."""

    RETRY = "retry"  # transient: retry with jittered backoff
    LOST_LEASE = "lost lease"  # the etcd lease is gone: re-acquire the subnet
    FATAL = "fatal"  # will not fix itself: stop with one line


# gRPC statuses worth retrying (grpc's own retry guidance, and what etcd returns for a busy or
# electing cluster: "too many requests" and "database space exceeded" are RESOURCE_EXHAUSTED,
# "leader changed"/"no leader"/"request timed out" UNAVAILABLE).
RETRYABLE_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED",
                             "INTERNAL", "UNKNOWN", "CANCELLED"})


def classify(code: str, message: str) -> Verdict:
    """The verdict on an etcd error from its gRPC status name and message. Pure."""
    if code == "NOT_FOUND" and "lease not found" in message:
        return Verdict.LOST_LEASE
    return Verdict.RETRY if code in RETRYABLE_CODES else Verdict.FATAL


# aetcd turns gRPC statuses into these classes (keeping the AioRpcError as __cause__ when it had one)
_CODE_OF_CLASS = (
    (aex.RevisionCompactedError, "OUT_OF_RANGE"), (aex.DuplicateLeaseError, "ALREADY_EXISTS"),
    (aex.ConnectionFailedError, "UNAVAILABLE"), (aex.ConnectionTimeoutError, "DEADLINE_EXCEEDED"),
    (aex.WatchTimeoutError, "DEADLINE_EXCEEDED"), (aex.InternalError, "INTERNAL"),
    (aex.InvalidArgumentError, "INVALID_ARGUMENT"), (aex.UnauthenticatedError, "UNAUTHENTICATED"),
    (aex.PreconditionFailedError, "FAILED_PRECONDITION"),
)


def status_of(exc: BaseException) -> tuple[str, str]:
    """``(gRPC status name, message)`` of an error raised by aetcd."""
    cause = exc.__cause__
    if isinstance(cause, grpc.aio.AioRpcError):
        return cause.code().name, cause.details() or ""
    code = next((name for cls, name in _CODE_OF_CLASS if isinstance(exc, cls)), "UNKNOWN")
    return code, str(exc)


def store_error(exc: aex.ClientError) -> StoreError | LeaseError:
    """The typed error for an etcd error that came with an answer (see :func:`classify`)."""
    code, message = status_of(exc)
    text = _short(exc)
    verdict = classify(code, message)
    if verdict is Verdict.LOST_LEASE:
        return LeaseError(f"etcd lease gone: {text}")
    if verdict is Verdict.RETRY:
        return StoreRetryable(f"etcd busy ({code.lower()}): {text}")
    return StoreError(f"etcd error: {text}")


# gRPC channel options. Keepalives so that a dead etcd eventually breaks an idle
# watch stream (the Connectivity probe notices much sooner). Each channel gets
# its own subchannel pool and a short reconnect backoff: by default gRPC shares
# subchannels process-wide, so a fresh channel inherited a subchannel still in
# reconnect backoff (up to 120 s) after etcd restarted, and failed with
# "connection refused" against an etcd that was answering again. Replies of any size, as
# etcd's Go client takes them: gRPC's default 4 MiB is a listing of ~22,000 VXLAN leases
# (half that with dual-stack WireGuard values), beyond which a node never got its listing.
_GRPC_OPTIONS = {
    "grpc.max_receive_message_length": 2**31 - 1,
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.max_pings_without_data": 0,
    "grpc.use_local_subchannel_pool": 1,
    "grpc.initial_reconnect_backoff_ms": 250,
    "grpc.min_reconnect_backoff_ms": 250,
    "grpc.max_reconnect_backoff_ms": 2_000,
}


def parse_endpoints(spec: str | list[str]) -> tuple[bool, list[tuple[str, int]]]:
    """``"https://a:2379,b"`` -> ``(True, [("a", 2379), ("b", 2379)])``: whether they are
    TLS, and their addresses (an IPv6 literal is written in brackets, ``http://[2001:db8::2]:2379``,
    and given back without them); ConfigError if malformed or mixing http and https."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    endpoints, schemes = [], set()
    for item in (i.strip() for i in items):
        if not item:
            continue
        url = urlsplit(item if "://" in item else f"http://{item}")
        if url.scheme not in ("http", "https") or not url.hostname or url.path not in ("", "/"):
            raise ConfigError(f"etcd endpoint {item!r}: expected http://HOST:PORT or https://HOST:PORT")
        try:
            port = url.port or 2379
        except ValueError:
            raise ConfigError(f"etcd endpoint {item!r}: bad port") from None
        endpoints.append((url.hostname, port))
        schemes.add(url.scheme)
    if not endpoints:
        raise ConfigError("no etcd endpoint given")
    if len(schemes) > 1:
        raise ConfigError("etcd endpoints mix http:// and https://: use one scheme for all")
    return schemes == {"https"}, endpoints


@dataclasses.dataclass(frozen=True)
class EtcdCredentials:
    """How the client proves itself and checks etcd: TLS files (PEM) and an etcd user.

    Without ``cafile``, https endpoints are checked against gRPC's default roots.
    """

    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    username: str | None = None
    password: str | None = None

    def check(self, tls: bool) -> None:
        """ConfigError (naming the flag) for a combination or a file that cannot work."""
        if bool(self.certfile) != bool(self.keyfile):
            raise ConfigError("--etcd-certfile and --etcd-keyfile go together: give both or neither")
        if bool(self.username) != bool(self.password):
            raise ConfigError("--etcd-username and --etcd-password go together: give both or neither")
        files = self._files()
        if files and not tls:
            raise ConfigError(f"{files[0][0]} given but the etcd endpoints are http://: use https://")
        for flag, path in files:
            _read(flag, path)

    def _files(self) -> list[tuple[str, str]]:
        return [(flag, path) for flag, path in (("--etcd-cafile", self.cafile), ("--etcd-certfile", self.certfile),
                                                ("--etcd-keyfile", self.keyfile)) if path]

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """gRPC credentials from the files as they are now (ConfigError if one cannot be read)."""
        read = {flag: _read(flag, path) for flag, path in self._files()}
        return grpc.ssl_channel_credentials(read.get("--etcd-cafile"), read.get("--etcd-keyfile"),
                                            read.get("--etcd-certfile"))


def _read(flag: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot read it: {exc.strerror}") from None


class _Client(aetcd.Client):
    """aetcd's client on a channel we build (TLS when given credentials); see the module note."""

    def __init__(self, *args, credentials: grpc.ChannelCredentials | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._credentials = credentials

    @_handle_errors
    async def connect(self) -> None:
        """Open the channel (and authenticate, with a user); aetcd's own connect() is insecure only."""
        if self._connected.is_set():
            return
        target, options = host_port(self._host, self._port), list(self._options.items())
        if self._credentials is None:
            self.channel = grpc.aio.insecure_channel(target, options=options)
        else:
            self.channel = grpc.aio.secure_channel(target, self._credentials, options=options)
        try:
            if self._username is not None:
                reply = await rpc.AuthStub(self.channel).Authenticate(
                    rpc.AuthenticateRequest(name=self._username, password=self._password), timeout=self._timeout)
                self.metadata = (("token", reply.token),)
        except BaseException:
            await self.channel.close()
            self._init_channel_attrs()
            raise
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = watcher.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout,
                                        metadata=self.metadata)
        self._connected.set()


# What gRPC's TLS failures mean, by a marker in their text (measured with grpcio 1.85, etcd 3.4).
_TLS_FAILURES = (
    ("TSI_DATA_CORRUPTED", "TLS: etcd refused our client certificate (none given, or not signed by "
                           "its CA: --etcd-certfile/--etcd-keyfile)"),
    ("CERTIFICATE_VERIFY_FAILED", "TLS: etcd's certificate is not signed by --etcd-cafile"),
    ("Hostname Verification", "TLS: etcd's certificate does not name the endpoint's host"),
    ("TSI_", "TLS handshake failed"),
)


# gRPC's and the kernel's words for a call that got no answer, in ours (issue 21): the first
# marker found in the text (case-insensitive) wins; TLS failures are told apart above.
_PLAIN_WORDS = (
    ("connection refused", "connection refused"),
    ("deadline exceeded", "timed out"), ("timeout", "timed out"), ("timed out", "timed out"),
    ("no route to host", "no route to host"), ("network is unreachable", "network unreachable"),
    ("dns resolution failed", "cannot resolve the host name"), ("name or service not known",
                                                                  "cannot resolve the host name"),
    ("connection reset", "connection reset"), ("broken pipe", "connection closed"),
    ("socket closed", "connection closed"), ("connection closed", "connection closed"),
    ("permission denied", "permission denied"), ("too many requests", "too many requests"),
    ("no leader", "no leader elected"), ("leader changed", "leader changed"),
)
# what gRPC puts before the reason: "failed to connect to all addresses; last error: UNKNOWN: ipv4:1.2.3.4:2379: "
_GRPC_PREAMBLE = re.compile(r"^(failed to connect to all addresses; last error: )?([A-Z_]+: )?"
                            r"((ipv4|ipv6|unix|dns):\S+: )?(etcdserver: )?")


def plain_words(text: str) -> str:
    """A failed etcd call's error text (gRPC's, aetcd's or the kernel's) in plain words:
    ``connection refused``, ``timed out``, ``TLS handshake failed``, ``permission denied``...;
    gRPC's preamble stripped from anything else. Pure."""
    for marker, meaning in _TLS_FAILURES:
        if marker in text:
            return meaning
    lowered = text.lower()
    for marker, words in _PLAIN_WORDS:
        if marker in lowered:
            return words
    if text in ("TimeoutError", "CancelledError", "ConnectionTimeoutError"):  # exceptions without a message
        return "timed out"
    rest = _GRPC_PREAMBLE.sub("", text.strip()) or text.strip()
    return rest[:1].lower() + rest[1:]


def _join(errors: list[tuple[str, str]]) -> str:
    """``[(endpoint, text)]`` -> ``"a, b: text1; c: text2"`` (endpoints with one text grouped)."""
    by_text: dict[str, list[str]] = {}
    for endpoint, text in errors:
        by_text.setdefault(text, []).append(endpoint)
    return "; ".join(f"{', '.join(endpoints)}: {text}" for text, endpoints in by_text.items())


def _describe(exc: BaseException) -> tuple[str, bool]:
    """A failed call in plain words (:func:`plain_words`), and whether it was a TLS failure."""
    for marker, meaning in _TLS_FAILURES:
        if marker in str(exc):
            return meaning, True
    return plain_words(_short(exc)), False


class EtcdStore:
    """Leases and config in etcd under ``prefix``, flannel's layout."""

    def __init__(self, endpoints: str | list[str], prefix: str = DEFAULT_PREFIX,
                 timeout: float = 5.0, credentials: EtcdCredentials = EtcdCredentials()):
        self.tls, self.endpoints = parse_endpoints(endpoints)
        credentials.check(self.tls)
        self.credentials = credentials
        self.prefix = prefix.rstrip("/") or DEFAULT_PREFIX
        self.timeout = timeout
        self._current = 0
        # "kv" and one per watch ("watch", "watch:services"): one channel each, with the index of the
        # endpoint it talks to
        self._clients: dict[str, tuple[int, aetcd.Client]] = {}
        self._connecting = asyncio.Lock()
        self._watch_left: dict[str, str] = {}  # watch role -> the endpoint a failover took its channel off
        self._unsettled: dict[int, float] = {}  # lease IDs of creates that failed with no known outcome: when
        self._settle_due: dict[int, float] = {}  # of those etcd did not know yet: when to look again
        self.clock = time.monotonic
        self._decoded: dict[bytes, tuple[int, Lease | None]] = {}  # key -> (mod revision, lease)

    def _endpoint_str(self, index: int) -> str:
        host, port = self.endpoints[index]
        return f"{'https' if self.tls else 'http'}://{host_port(host, port)}"

    async def _connect(self, role: str) -> aetcd.Client:
        async with self._connecting:  # the probe and the renew loop share "kv"
            if role not in self._clients:
                host, port = self.endpoints[self._current]
                client = _Client(host=host, port=port, timeout=self.timeout, options=_GRPC_OPTIONS,
                                 username=self.credentials.username, password=self.credentials.password,
                                 credentials=self.credentials.channel_credentials() if self.tls else None)
                await client.connect()
                self._clients[role] = (self._current, client)
            return self._clients[role][1]

    async def _drop_client(self, role: str) -> None:
        _, client = self._clients.pop(role, (None, None))
        if client is not None:
            try:
                await client.close()
            except Exception:  # closing a broken channel may fail in many ways
                log.debug("closing etcd client failed", exc_info=True)

    async def _leave(self, index: int, fresh: bool) -> None:
        """Fail over from endpoint ``index``: move to the next, drop every channel on it.

        A lone endpoint has nowhere to go: its channels are kept (gRPC reconnects them by
        itself) unless ``fresh``, a failure that a new channel may cure (one reads the TLS
        files again). Closing a channel cancels every call in flight on it: under load one
        timeout failed ~150 other calls, each of which then closed the channel the next
        ones had opened (5000 simulated nodes never finished acquiring)."""
        if len(self.endpoints) == 1 and not fresh:
            return
        if self._current == index:
            self._current = (index + 1) % len(self.endpoints)
        for role, (on, _) in list(self._clients.items()):
            if on == index:
                if role.startswith("watch") and len(self.endpoints) > 1:  # alone, it is an outage
                    self._watch_left[role] = self._endpoint_str(index)
                await self._drop_client(role)

    async def _attempt(self, role: str, op):
        return await op(await self._connect(role))

    async def _call(self, op, role: str = "kv", timeout: float | None = None):
        """Run ``op(client)`` on the current endpoint, failing over to the others."""
        errors, all_tls, reauthenticated = [], True, False
        attempts = len(self.endpoints)
        while attempts > 0:
            index = self._current
            endpoint = self._endpoint_str(index)
            limit = timeout or self.timeout
            if attempts > 1:
                limit = min(limit, FAILOVER_AFTER)
            fresh = False  # whether a new channel may cure the failure (see _leave)
            try:
                result = await asyncio.wait_for(self._attempt(role, op), limit + 1)
                if _really_cancelled():
                    # Python < 3.12: wait_for returns the result and swallows a cancellation that
                    # races it; the loop that called us must still stop (a stop hung on this)
                    raise asyncio.CancelledError
                if errors:  # one line per failover that worked; none while every endpoint fails
                    log.info("etcd: now using %s (%s)", endpoint, _join(errors))
                return result
            except _UNAVAILABLE as exc:
                text, tls = _describe(exc)
                errors.append((endpoint, text))
                all_tls &= tls
                fresh = tls
            except asyncio.CancelledError:
                if _really_cancelled():
                    raise
                errors.append((endpoint, "call cancelled (channel closed)"))
                all_tls = False
            except ConfigError as exc:
                # the TLS files are re-read on every reconnect; the flags were checked at start, so
                # a file missing now is one being rotated: retried, not fatal (found in review)
                errors.append((endpoint, str(exc)))
                fresh = True
            except aex.RevisionCompactedError as exc:  # from watch() at creation
                raise WatchReset(f"watch revision compacted: {_short(exc)}") from None
            except aex.UnauthenticatedError as exc:
                if reauthenticated or "invalid auth token" not in str(exc):
                    raise StoreError(f"etcd refused us at {endpoint}: {plain_words(_short(exc))}") from None
                reauthenticated = True  # the token expired: a new client authenticates again
                await self._drop_client(role)
                continue
            except aex.ClientError as exc:
                raise store_error(exc) from None
            await self._leave(index, fresh)
            attempts -= 1
        what = "etcd TLS handshake failed" if all_tls else "etcd unreachable"
        raise StoreUnavailable(f"{what} at {_join(errors)}")

    async def call(self, op):
        """``await op(client)`` with :meth:`_call`'s failover and error classification, for the
        other keys kept beside the leases (:mod:`overlayd.service.etcd`)."""
        return await self._call(op)

    @property
    def unsettled(self) -> frozenset[int]:
        """The lease IDs of interrupted creates' grants not settled yet (see :meth:`_settle`)."""
        return frozenset(self._unsettled)

    async def probe(self) -> None:
        """One cheap read that fails with :class:`StoreUnavailable` when etcd does not answer.

        Then, if creates were interrupted, their grants are settled (:meth:`_settle`): a daemon
        creates nothing once it holds its lease, and its probe runs every few seconds. That
        may fail: it is tried again at the next probe."""
        await self._call(lambda c: c.get(config_key(self.prefix).encode()),
                         timeout=min(self.timeout, PROBE_TIMEOUT))
        if self._unsettled:
            try:
                await self._call(self._settle)
            except (StoreError, LeaseError) as exc:
                log.debug("settling the grants of interrupted creates: %s", exc)

    async def live_lease_ids(self) -> frozenset[int]:
        """The IDs of every etcd lease alive now (one LeaseLeases call, whatever their number)."""
        async def op(c):
            reply = await _stub_call(c.leasestub.LeaseLeases(rpc.LeaseLeasesRequest(), timeout=c._timeout,
                                                             metadata=c.metadata))
            return frozenset(l.ID for l in reply.leases)
        return await self._call(op)

    async def get_config(self) -> bytes | None:
        res = await self._call(lambda c: c.get(config_key(self.prefix).encode()))
        return None if res is None else res.value

    async def put_config(self, raw: bytes) -> None:
        await self._call(lambda c: c.put(config_key(self.prefix).encode(), raw))

    def _decode(self, key: bytes, value: bytes, lease_id: int, mod_revision: int,
                expiration: float | None = None) -> Lease:
        subnet, subnet6 = parse_lease_key(self.prefix, key)
        return Lease(subnet, LeaseAttrs.decode(value), expiration, lease_id, mod_revision, subnet6)

    async def list_leases(self, with_ttl: bool = False) -> tuple[list[Lease], int]:
        """Every decodable lease and the listing's revision.

        ``with_ttl`` also asks etcd for each lease's remaining TTL (one call
        per lease: for ``overlayctl``, not for the daemon's hot path).
        """
        head = subnets_prefix(self.prefix).encode()
        request = rpc.RangeRequest(key=head, range_end=aetcd.utils.prefix_range_end(head))

        async def op(c):
            # the reply's own key-values: aetcd's get_prefix wraps each in an object of its own
            # (~40% of a listing's CPU at 5000 leases, and every acquisition attempt lists)
            res = await _stub_call(c.kvstub.Range(request, timeout=c._timeout, metadata=c.metadata))
            leases, decoded = [], {}
            for kv in res.kvs:
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
                        lease = dataclasses.replace(lease, expiration=time.time() + info.TTL)
                leases.append(lease)
            self._decoded = decoded
            return leases, res.header.revision
        return await self._call(op)

    async def _settle(self, c, keep: int = 0) -> None:
        """Revoke grants from creates whose outcome we never saw, with any key bound to them,
        but ``keep`` (the grant of a lease being rewritten: the rewrite releases it).

        A key bound to one is a lease this node holds without knowing it: its create was applied
        and its reply lost, and the node went on to lease another subnet. Left alone, it named
        this node for a subnet nothing answers for until its TTL ran out (11 such keys in a
        5000-node run). A node that finds such a key in its next listing takes it over
        (:meth:`update_lease`, with ``keep``): the subnet stays its own, as when the reply is
        not lost. Each grant is taken off the set before the first await: creates sharing the store
        settle concurrently, and two revoking one grant failed the second create with
        "requested lease not found". A grant gone meanwhile is settled. One that etcd does
        not know is looked at again, at doubling intervals (1, 2, 4 ... s after its create
        failed: a dozen lookups), for :data:`SETTLE_WINDOW`: a grant whose call timed out
        under load can be applied long after the lookup (etcd answers it from its lessor,
        ahead of a grant committed and not applied yet). Dropped after 10 s, 0-15 leaked per
        5000-node run; after 60 s, 139 in a run where etcd queued grants for minutes. One
        etcd did not answer about stays."""
        now = self.clock()
        for lease_id, failed_at in list(self._unsettled.items()):
            if lease_id == keep or self._settle_due.get(lease_id, now) > now:
                continue  # etcd did not know it a moment ago: not yet time to look again
            if self._unsettled.pop(lease_id, None) is None:
                continue  # another create settled it meanwhile
            self._settle_due.pop(lease_id, None)
            try:
                info = await c.get_lease_info(lease_id, keys=True)
                if info.TTL > 0:
                    await c.revoke_lease(lease_id)
                    log.info("revoked etcd lease %x left by an interrupted create%s", lease_id,
                             f", and its key {_text_keys(info.keys)}" if info.keys else "")
                elif info.TTL <= 0 and now - failed_at < SETTLE_WINDOW:
                    self._unsettled[lease_id] = failed_at  # not applied yet, maybe
                    self._settle_due[lease_id] = now + max(1.0, now - failed_at)
            except aex.ClientError as exc:
                if classify(*status_of(exc)) is not Verdict.LOST_LEASE:
                    self._unsettled[lease_id] = failed_at
                    raise
            except BaseException:
                self._unsettled[lease_id] = failed_at
                raise

    async def _put_if(self, compare, subnet, attrs: LeaseAttrs,
                      ttl: int | None, old_handle: int = 0, reclaim_invalid: bool = False,
                      subnet6: ipaddress.IPv6Network | None = None,
                      unchanged_since: int | None = None) -> Lease | None:
        """Put the lease if ``compare`` holds (and, with ``unchanged_since``, no lease key was
        written after that revision); None if not. ``ttl`` None: no TTL (a reservation).
        Safe to retry after a lost reply: see the module note."""
        key = subnet_key(self.prefix, subnet, subnet6).encode()
        head = subnets_prefix(self.prefix).encode()
        value = attrs.encode()
        lease_id = _new_lease_id() if ttl is not None else 0

        async def op(c):
            if self._unsettled:
                await self._settle(c, keep=old_handle)
            if lease_id:
                try:
                    await c.lease(ttl, lease_id)
                except aex.DuplicateLeaseError:
                    pass  # granted by an attempt whose reply was lost
            ok, responses = await c.transaction(
                compare=[compare(c, key)] + ([] if unchanged_since is None else [
                    c.transactions.mod(head, aetcd.utils.prefix_range_end(head)) < unchanged_since + 1]),
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
            if old_handle and old_handle != lease_id:  # the key moved to the new grant: release the old one,
                self._unsettled[old_handle] = self.clock()  # now or, if this fails or is cut short, when settled
                try:
                    await c.revoke_lease(old_handle)
                    released = True
                except aex.ClientError as exc:
                    released = classify(*status_of(exc)) is Verdict.LOST_LEASE  # expired already
                    if not released:
                        log.debug("revoking etcd lease %x: %s; settled later", old_handle, _short(exc))
                if released:
                    self._unsettled.pop(old_handle, None)
            expiration = None if ttl is None else time.time() + ttl
            return Lease(subnet, attrs, expiration, lease_id, revision, subnet6)

        try:
            return await self._call(op)
        except (StoreError, LeaseError) as exc:  # unreachable, or an error after the grant: its fate is unknown
            if lease_id:  # granted or not, bound or not: settled once etcd answers again
                self._unsettled[lease_id] = self.clock()
            if isinstance(exc, LeaseError):  # our fresh grant expired under the create: try again
                raise StoreRetryable(f"creating {subnet}: {exc}") from None
            raise

    async def create_lease(self, subnet, attrs, ttl, reclaim_invalid: bool = False, subnet6=None,
                           unchanged_since: int | None = None):
        """Create the lease if the key is free (or, with ``reclaim_invalid``, holds garbage) and,
        with ``unchanged_since``, no lease key was written after that revision: one compare over
        the whole subnets prefix in the same transaction, which is how a dual-stack pair is
        allocated atomically (its IPv6 half is not the key that the first compare guards)."""
        return await self._put_if(lambda c, k: c.transactions.version(k) == 0, subnet, attrs, ttl,
                                  reclaim_invalid=reclaim_invalid, subnet6=subnet6,
                                  unchanged_since=unchanged_since)

    async def update_lease(self, lease, attrs, ttl):
        """Rewrite ``lease`` if unchanged since listed; a reservation stays one (no TTL)."""
        return await self._put_if(lambda c, k: c.transactions.mod(k) == lease.revision,
                                  lease.subnet, attrs, None if lease.handle == 0 else ttl,
                                  old_handle=lease.handle, subnet6=lease.subnet6)

    async def renew_lease(self, lease):
        """Keep the etcd lease alive AND check the key is still bound to it.

        A keepalive alone is not enough: an operator's ``etcdctl del`` (or a
        ``put`` without our lease) leaves the etcd lease alive while the key
        is gone or no longer ours, and the other nodes have dropped us. For a
        reservation (no etcd lease) only the key is checked.
        """
        key = subnet_key(self.prefix, lease.subnet, lease.subnet6).encode()

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
        return dataclasses.replace(lease, expiration=expiration, revision=kv.mod_revision)

    async def delete_lease(self, subnet, revision: int | None = None, subnet6=None):
        """Delete the lease on ``subnet`` (and ``subnet6``: its key names both) (with
        ``revision``: only if its key is unchanged since)."""
        key = subnet_key(self.prefix, subnet, subnet6).encode()
        if revision is None:
            return bool(await self._call(lambda c: c.delete(key)))

        async def op(c):
            ok, _ = await c.transaction(compare=[c.transactions.mod(key) == revision],
                                        success=[c.transactions.delete(key)], failure=[])
            return ok
        return bool(await self._call(op))

    async def revoke_lease(self, lease: Lease) -> bool:
        """Give ``lease`` up: revoke its etcd lease, which deletes the key only while it is still
        bound to it (a subnet another node has taken since is left alone) and frees the grant.
        A reservation (no etcd lease) is the operator's and is kept: False."""
        if not lease.handle:
            return False
        try:
            await self._call(lambda c: c.revoke_lease(lease.handle))
        except LeaseError:
            pass  # expired already: nothing left to give up
        return True

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
        async with contextlib.aclosing(self.watch_range(prefix, aetcd.utils.prefix_range_end(prefix),
                                                        revision)) as events:
            async for ev in events:
                event = self._event(ev)
                if event is not None:
                    yield [event]

    async def watch_range(self, start: bytes, end: bytes, revision: int, role: str = "watch") -> AsyncIterator:
        """aetcd's events on the keys in ``[start, end)`` after ``revision``, one at a time,
        on the channel of ``role`` (a name starting with "watch": one channel per watch, so one
        watch breaking cancels nothing else). Ends as :meth:`watch_leases` does
        (:class:`StoreUnavailable`, :class:`WatchReset`...). Every watch of a store fails over
        with it: a member that hangs is left by all of them when the store's probe fails."""
        watch = await self._call(lambda c: c.watch(start, range_end=end, start_revision=revision + 1),
                                 role=role)
        self._watch_left.pop(role, None)
        try:
            async for ev in watch:
                yield ev
        except aex.RevisionCompactedError as exc:
            raise WatchReset(f"watch revision compacted: {exc}") from None
        except _UNAVAILABLE as exc:
            await self._drop_client(role)
            raise StoreUnavailable(f"etcd watch broke: {_short(exc)}") from None
        except aex.ClientError as exc:
            await self._drop_client(role)
            raise store_error(exc) from None
        except asyncio.CancelledError:
            if _really_cancelled():
                raise
            await self._watch_closed("etcd watch cancelled (channel closed)", role)
        finally:
            try:
                await watch.cancel()
            except Exception:
                log.debug("cancelling the watch failed", exc_info=True)
        # The stream ended without an error (client closed): treat as broken.
        await self._watch_closed("etcd watch ended", role)

    async def _watch_closed(self, what: str, role: str) -> None:
        """The channel of watch ``role`` was closed under it: by a failover (the caller re-lists
        and watches on the live member), else treat it as an outage."""
        left = self._watch_left.pop(role, None)
        await self._drop_client(role)
        if left:
            raise WatchReset(f"{left} does not answer: the watch moves to {self._endpoint_str(self._current)}")
        raise StoreUnavailable(what)

    def _event(self, ev) -> LeaseEvent | None:
        key = ev.kv.key.decode(errors="replace")
        try:
            subnet, subnet6 = parse_lease_key(self.prefix, ev.kv.key)
        except LeaseError as exc:
            log.warning("ignoring watch event on %s: %s", key, exc)
            return None
        if ev.kind == "DELETE":
            return LeaseEvent(subnet, None, ev.kv.mod_revision, subnet6)
        try:
            lease = self._decode(ev.kv.key, ev.kv.value, ev.kv.lease, ev.kv.mod_revision)
        except LeaseError as exc:
            log.warning("%s no longer holds a valid lease (%s): treating it as gone", key, exc)
            return LeaseEvent(subnet, None, ev.kv.mod_revision, subnet6)
        return LeaseEvent(subnet, lease, ev.kv.mod_revision, subnet6)

    async def close(self) -> None:
        for role in list(self._clients):
            await self._drop_client(role)


async def _stub_call(call):
    """The reply of a gRPC stub ``call``, its errors raised as aetcd raises its own calls' (so that
    :func:`store_error` and :func:`classify` read them)."""
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        aex._handle_exception(exc)


def _new_lease_id() -> int:
    """A random positive 63-bit etcd lease ID (etcd rejects 0 and negative IDs)."""
    return secrets.randbits(62) + 1


def _decodes(value: bytes) -> bool:
    try:
        LeaseAttrs.decode(value)
    except LeaseError:
        return False
    return True


def _text_keys(keys) -> str:
    return ", ".join(k.decode(errors="replace") if isinstance(k, bytes) else str(k) for k in keys)


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
