"""The wireguard backend (issue 18): flannel's ``pkg/backend/wireguard``, encrypted and authenticated.

Compatible with flannel's: the same settings (:func:`parse_settings`), the same device names
(``flannel-wg``, ``flannel-wg-v6``), the same lease data (``BackendData`` and ``BackendV6Data``:
``{"PublicKey": base64, "Port": N}``) and the same MTU rule (``Backend.MTU``, else the
underlay's, minus :data:`OVERHEAD`), so an overlayd node and a flannel node peer with each other.

The device is the kernel's WireGuard where the module exists and Debian's ``wireguard-go``
where it does not; both are configured through the ``wg`` tool only
(:mod:`overlayd.plumbing.wg`). A wireguard-go that dies makes :meth:`WireguardBackend.run`
raise at once (the daemon's supervision rule then applies). The node's address on a device
is its subnet's network address (/32, /128) and the single route to each Network goes through
the device carrying that family; each peer node is one WireGuard peer per device, whose
AllowedIPs are its subnet(s) and whose Endpoint comes from its lease. A peer is known by its
key: a lease whose key changed replaces the old peer in the same ``wg set`` (never two peers
for one subnet), and two subnets leased under one key are one peer with both subnets (a node
moving to a new lease).

Dual stack is flannel's ``Mode`` (:func:`tunnels`, :func:`lease_peers`): ``separate`` (the
default) has ``flannel-wg`` for IPv4 on ListenPort and ``flannel-wg-v6`` for IPv6 on
ListenPortV6 between the nodes' IPv6 addresses (as for VXLAN, only on a node with an IPv6
underlay address); ``ipv4``, ``ipv6`` and ``auto`` have the one device ``flannel-wg`` on
ListenPort carry both families to each peer over its IPv4, its IPv6 or (auto) flannel's choice
(:func:`select_version`). Two deliberate differences, for a single device: we publish in
``BackendV6Data`` the port our device listens on (flannel publishes ListenPortV6, where its
single device does not listen), and we send to the port of a peer's ``BackendData`` (where a
flannel node's single device listens) when it has one; a flannel node that sends to its
published ListenPortV6 is still answered, since WireGuard replies to where a peer's
authenticated packets come from.

Sessions start at join. Two nodes whose pods send first packets to each other at the same
instant start crossing handshakes, and WireGuard (kernel and wireguard-go) drops both: each
side's initiation overwrites its own pending one, and neither retries for 5 s (REKEY_TIMEOUT),
again and again under load. So the node that joins starts every session itself, before any pod
sends: the peers its first listing brings (the nodes that were there before it) are greeted
(:func:`~overlayd.plumbing.wg.greet`), best effort; a node that joins later greets us from its
own first listing (not from a re-listing after an etcd outage: all nodes re-list together, and
greeting from both sides would cross). With ``PersistentKeepaliveInterval`` set, both sides
send a keepalive at once anyway. Limits: a session idle for 180 s (REJECT_AFTER_TIME) is gone,
and two pods sending first packets to each other at the same moment after that cross again and
wait 5 s, as with any WireGuard: a ``PersistentKeepaliveInterval`` keeps sessions up. A joiner
greets every peer at once: with hundreds of peers, wireguard-go's handshake queue passes its
"under load" mark (128) and defers some sessions to its 5 s retry (not measured here).

The private key lives in a file of mode 0600 in the daemon's state directory
(``--state-dir``, :func:`key_file`: ``/var/lib/overlayd/wireguard/private.key``) and is kept
across restarts and reboots (flannel keeps it under /run: k3s-io/k3s#5216); both devices
use it, as flannel's do. A kernel device stays when the daemon stops, as the other kernel
backends' devices do (flannel deletes its devices at exit), so pods keep talking across a
restart; wireguard-go's device goes with its process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import os
import re
import time

from ..errors import ConfigError, PlumbingError
from ..lease.model import Lease
from ..lease.watcher import Batch
from ..netconf import BackendConfig, _canonical, _clip, _int_field, _mtu_field, _show
from ..plumbing import sysctl, wg
from ..plumbing.netlink import Netlink
from .base import Backend
from .hostgw import node_versions
from .registry import BackendSpec
from .vxlan import read_device_statistics

log = logging.getLogger(__name__)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

TYPE = "wireguard"
#: flannel's overhead rule (``wireguard_network.go``): outer IPv6 (40) + UDP (8) + WireGuard (32)
OVERHEAD = 80
DEVICE = "flannel-wg"
V6_SUFFIX = "-v6"  # flannel-wg-v6
MODES = ("separate", "auto", "ipv4", "ipv6")
KEYS = frozenset({"Type", "ListenPort", "ListenPortV6", "MTU", "PSK", "PersistentKeepaliveInterval", "Mode"})
STATS_INTERVAL = 5.0  # seconds between reads of the devices' per-peer counters
IPV6_MIN_MTU = 1280
SESSION_LIFE = 180.0  # seconds: WireGuard's REJECT_AFTER_TIME; a session in use handshakes every 120 s
STALL_GRACE = 15.0  # seconds of sending without a session (handshakes are retried every 5 s) before a warning


@dataclasses.dataclass(frozen=True)
class WireguardSettings:
    """The wireguard backend's settings (flannel's names and defaults)."""

    listen_port: int = 51820
    listen_port_v6: int = 51821
    mtu: int | None = None  # of the encrypted packets; None: the underlay's
    psk: str | None = dataclasses.field(default=None, repr=False)  # base64; a secret: kept out of repr
    keepalive: int = 0  # seconds; 0: off
    mode: str = "separate"

    def to_json(self) -> dict:
        """The settings as flannel's ``Backend`` JSON, defaults written out (the PSK as given)."""
        out = {"Type": TYPE, "ListenPort": self.listen_port, "ListenPortV6": self.listen_port_v6,
               "PersistentKeepaliveInterval": self.keepalive, "Mode": self.mode}
        if self.mtu is not None:
            out["MTU"] = self.mtu
        if self.psk is not None:
            out["PSK"] = self.psk
        return out


def parse_settings(raw: dict, notes: list[str]) -> WireguardSettings:
    """Validate the ``Backend`` object ``raw`` of a wireguard config (its ``Type`` already
    checked by the caller); one-line ConfigError naming ``Backend.<field>``. As Go's
    ``encoding/json`` reads flannel's config: field names ignore case, and a zero value
    (``0``, ``""``) means the default. ``PersistentKeepaliveInterval`` is a JSON integer of
    seconds (flannel multiplies it by a second; Go refuses "25s" and 2.5). Fields without
    effect here are added to ``notes``. Pure."""
    raw = _canonical(raw, set(KEYS), "Backend.")
    unknown = sorted(set(raw) - KEYS, key=str)
    if unknown:
        raise ConfigError(f"Backend.{_clip(str(unknown[0]))}: not a setting of the {TYPE} backend")
    port = _int_field(raw, "ListenPort", "Backend.", 1, 65535, 51820)
    port6 = _int_field(raw, "ListenPortV6", "Backend.", 1, 65535, 51821)
    mtu = _mtu_field(raw, OVERHEAD)
    keepalive = _int_field(raw, "PersistentKeepaliveInterval", "Backend.", 0, 65535, 0)
    psk = raw.get("PSK")
    if psk is not None and not isinstance(psk, str):
        raise ConfigError(f"Backend.PSK: must be a string, got {type(psk).__name__}")
    if psk == "":
        psk = None
    if psk is not None and wg.decode_key(psk) is None:  # the value is a secret: never echoed
        raise ConfigError("Backend.PSK: not a WireGuard key (44 base64 characters, as 'wg genpsk' prints)")
    mode = raw.get("Mode", "")
    if not isinstance(mode, str):
        raise ConfigError(f"Backend.Mode: must be a string, got {_show(mode)}")
    mode = mode or "separate"
    if mode not in MODES:
        raise ConfigError(f"Backend.Mode: unknown mode {_show(mode)} (expected one of: {', '.join(MODES)})")
    if "ListenPortV6" in raw and mode != "separate":
        notes.append(f"Backend.ListenPortV6: no effect with Mode {mode} (one device, on ListenPort)")
    return WireguardSettings(listen_port=port, listen_port_v6=port6, mtu=mtu, psk=psk,
                             keepalive=keepalive, mode=mode)


def key_file(state_dir: str) -> str:
    """Where the node's private key is kept: ``<state_dir>/wireguard/private.key``."""
    return os.path.join(state_dir, "wireguard", "private.key")


class HandshakeWatch:
    """Peers we send to without a session: their tx bytes grow while their last handshake is
    older than :data:`SESSION_LIFE` (or never was), for :data:`STALL_GRACE` seconds in a row.
    WireGuard counts no failed handshake, so this is what says a peer is unreachable or holds
    another key or PSK; an idle peer (no bytes sent) is not stalled. Pure: time is passed in."""

    def __init__(self):
        self._tx: dict[tuple[str, str], int] = {}  # (device, public key) -> tx bytes at the last update
        self._since: dict[tuple[str, str], float] = {}  # -> when sending without a session began
        self.stalled: set[tuple[str, str]] = set()

    def update(self, device: str, peers: dict[str, wg.PeerState], now: float) -> tuple[list[str], list[str]]:
        """Take ``device``'s dump (public key -> state) read at ``now``: the keys that have just
        stalled and those that just recovered (a session again, or gone from the device)."""
        stalled, recovered = [], []
        for key, state in peers.items():
            k = (device, key)
            sending = state.tx_bytes > self._tx.get(k, state.tx_bytes)
            self._tx[k] = state.tx_bytes
            if state.latest_handshake and now - state.latest_handshake < SESSION_LIFE:
                self._since.pop(k, None)
                if k in self.stalled:
                    self.stalled.discard(k)
                    recovered.append(key)
            elif sending:  # (a read without growth keeps the start: retries come every 5 s, with jitter)
                since = self._since.setdefault(k, now)
                if now - since >= STALL_GRACE and k not in self.stalled:
                    self.stalled.add(k)
                    stalled.append(key)
        for k in [k for k in self._tx if k[0] == device and k[1] not in peers]:
            self._tx.pop(k)
            self._since.pop(k, None)
            if k in self.stalled:
                self.stalled.discard(k)
                recovered.append(k[1])
        return stalled, recovered


@dataclasses.dataclass(frozen=True)
class Tunnel:
    """One WireGuard device of this node: its name, its listen port and the IP versions it carries."""

    name: str
    port: int
    versions: frozenset[int]


def tunnels(settings: WireguardSettings, versions: frozenset[int], versions_separate: frozenset[int],
            device: str = DEVICE) -> list[Tunnel]:
    """The node's devices for ``settings.mode`` (flannel's): separate, one per version in
    ``versions_separate`` (the families with a pool and an underlay address): ``device`` for IPv4
    on ListenPort, ``device-v6`` for IPv6 on ListenPortV6; the other modes, ``device`` alone on
    ListenPort for every version in ``versions`` (the families with a pool). Pure."""
    if settings.mode == "separate":
        return [Tunnel(device if version == 4 else device + V6_SUFFIX,
                       settings.listen_port if version == 4 else settings.listen_port_v6, frozenset({version}))
                for version in sorted(versions_separate)]
    return [Tunnel(device, settings.listen_port, versions)] if versions else []


def wg_data(data) -> tuple[str, int] | None:
    """(public key, port) from a lease's ``BackendData``/``BackendV6Data``, or None when it is not a
    wireguard one. Leases can be written by hand: anything malformed is None, never a crash. A port of
    0 (flannel's zero value) or none is returned as 0: the caller takes its own device's. Pure."""
    if not isinstance(data, dict):
        return None
    key, port = data.get("PublicKey"), data.get("Port", 0)
    if not isinstance(key, str) or wg.decode_key(key) is None:
        return None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        return None
    return key, port


def _private4(ip: ipaddress.IPv4Address) -> bool:
    """flannel's ``IP4.IsPrivate``: RFC 1918 only (Python's ``is_private`` also has 198.18/15 and more)."""
    return any(ip in net for net in _RFC1918)


_RFC1918 = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_ULA = ipaddress.IPv6Network("fc00::/7")


def select_version(peer4: ipaddress.IPv4Address | None, peer6: ipaddress.IPv6Address | None,
                   own4: ipaddress.IPv4Address | None, own6: ipaddress.IPv6Address | None) -> int:
    """Mode auto's choice of a peer's address family (flannel's ``selectMode``): IPv4 when the peer
    has no IPv6, or a non-RFC 1918 IPv4 and we have IPv4; IPv6 when both ends' IPv6 addresses are
    global (not ULA); else IPv4. A peer without IPv4 (an IPv6-only node) gets IPv6. Pure."""
    if peer6 is None:
        return 4
    if peer4 is None:
        return 6
    if not _private4(peer4) and own4 is not None:
        return 4
    if peer6 not in _ULA and own6 is not None and own6 not in _ULA:
        return 6
    return 4


def endpoint(ip: Address, port: int) -> str:
    """``ip:port``, ``[ip6]:port`` (as ``wg`` takes and shows them). Pure."""
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


@dataclasses.dataclass(frozen=True)
class _Peer:
    """A peer node on one device: its key, its subnets there and where to send."""

    key: str
    subnets: tuple[Network, ...]
    endpoint: str


def lease_peers(lease: Lease, tunnels_: list[Tunnel], mode: str,
                own4: ipaddress.IPv4Address | None = None, own6: ipaddress.IPv6Address | None = None
                ) -> dict[str, _Peer] | None:
    """Device name -> the peer ``lease`` makes there, or None when it is not a usable wireguard
    peer for this node (another backend, malformed data, or no family in common). A family of
    the lease counts with its subnet and its wireguard data (one given but malformed makes the
    whole lease unusable); its address is needed where it is the endpoint: always in Mode
    separate, and for at least one family with a single device (a node's IPv6 pods can cross
    over its IPv4, as flannel's do). Pure."""
    attrs = lease.attrs
    if attrs.backend_type != TYPE:
        return None
    subnet4 = lease.subnet if lease.subnet.version == 4 else None
    ends: dict[int, tuple[Network, Address | None, tuple[str, int]]] = {}
    for version, subnet, ip, raw in ((4, subnet4, attrs.public_ip, attrs.backend_data),
                                     (6, lease.subnet6, attrs.public_ip6, attrs.backend_v6_data)):
        if subnet is None or raw is None:
            continue
        data = wg_data(raw)
        if data is None:
            return None
        ends[version] = (subnet, ip, data)
    addressed = [version for version in sorted(ends) if ends[version][1] is not None]
    peers: dict[str, _Peer] = {}
    for tunnel in tunnels_:
        if mode == "separate":
            version = next(iter(tunnel.versions))
            if version in addressed:
                subnet, ip, (key, port) = ends[version]
                peers[tunnel.name] = _Peer(key, (subnet,), endpoint(ip, port or tunnel.port))
            continue
        subnets = tuple(ends[v][0] for v in sorted(tunnel.versions) if v in ends)
        if not subnets or not addressed:
            continue
        if mode == "auto":
            via = select_version(ends[4][1] if 4 in addressed else None, ends[6][1] if 6 in addressed else None,
                                 own4, own6)
        else:
            via = 4 if mode == "ipv4" else 6
        via = via if via in addressed else addressed[0]  # an address of the other family only
        key = ends[6][2][0] if 6 in ends else ends[4][2][0]  # flannel's: one key for both
        port = (ends[4] if 4 in ends else ends[6])[2][1]  # where a single device listens (module note)
        peers[tunnel.name] = _Peer(key, subnets, endpoint(ends[via][1], port or tunnel.port))
    return peers or None


class WireguardBackend(Backend):
    """The overlay through WireGuard devices (kernel or wireguard-go), one peer per node and device."""

    type_name = TYPE

    def __init__(self, *args, settings: WireguardSettings | None = None, key_path: str | None = None,
                 device: str = DEVICE, prefer: str = "auto", **kwargs):
        """``settings`` from :func:`parse_settings` (default: the config's); ``key_path`` the private
        key's file (default: :func:`key_file` of the node's state directory); ``device`` the IPv4
        device's name (the IPv6 one adds ``-v6``); ``prefer`` "userspace" forces wireguard-go."""
        super().__init__(*args, **kwargs)
        configured = self.config.backend.settings
        self.settings = settings or (configured if isinstance(configured, WireguardSettings) else WireguardSettings())
        self.key_path = key_path or key_file(self.options.state_dir)
        self.prefer = prefer
        pools = frozenset(v for v, pool in ((4, self.config.ipv4), (6, self.config.ipv6)) if pool is not None)
        self.tunnels = tunnels(self.settings, pools, node_versions(self), device)
        self.device = self.tunnels[0].name if self.tunnels else device
        self.key: wg.KeyPair | None = None
        self.devs: dict[str, wg.Device] = {}  # device name -> the device we made
        self.peers: dict[Network, dict[str, _Peer]] = {}  # peer (lease.subnet) -> device name -> its peer there
        self.skipped: set[Network] = set()
        self.peer_counters: dict[str, dict[str, wg.PeerState]] = {}  # device -> public key -> the last dump's line
        self.handshakes = HandshakeWatch()
        self.joined = False  # the first listing was applied (and its peers greeted)
        self._lock = asyncio.Lock()  # apply, reconcile and the devices' (re)creation

    @property
    def mtu(self) -> int:
        """flannel's rule: ``Backend.MTU`` (else the underlay's) minus :data:`OVERHEAD`, on every device."""
        return (self.settings.mtu or self.underlay.mtu) - OVERHEAD

    def _carrier(self, version: int) -> Tunnel | None:
        return next((t for t in self.tunnels if version in t.versions), None)

    def _data(self, version: int) -> dict | None:
        if self.key is None:
            raise PlumbingError("wireguard: the key is read in preflight, before the lease")
        tunnel = self._carrier(version)
        return None if tunnel is None else {"PublicKey": self.key.public, "Port": tunnel.port}

    def backend_data(self) -> dict | None:
        """``BackendData``: our public key and the port of the device carrying IPv4 (None without one)."""
        return self._data(4)

    def backend_v6_data(self) -> dict | None:
        """``BackendV6Data``: our public key and the port of the device carrying IPv6 (None without one)."""
        return self._data(6)

    async def preflight(self) -> None:
        """Refuse what cannot work (Mode ipv6 without our IPv6 address, IPv6 pods under 1280 bytes),
        then read (or make) the private key."""
        if self.settings.mode == "ipv6" and self.underlay.public_ip6 is None:
            raise ConfigError("Backend.Mode: \"ipv6\" sends to the nodes' IPv6 addresses, and this node has none")
        if self._carrier(6) is not None and self.mtu < IPV6_MIN_MTU:
            raise ConfigError(f"Backend.MTU: IPv6 pods need {IPV6_MIN_MTU + OVERHEAD} or more "
                              f"(the device gets {self.mtu})")
        if self.config.ipv6 is not None and self._carrier(6) is None:
            log.warning("EnableIPv6 with Mode separate and no IPv6 underlay address: IPv6 pods get no tunnel")
        self.key = await wg.load_or_create_key(self.key_path)

    async def setup(self, lease: Lease) -> None:
        self.lease = lease
        if self.key is None:
            await self.preflight()
        async with self._lock, Netlink() as nl:
            for tunnel in self.tunnels:
                await self._ensure_device(nl, tunnel)
                dump = await wg.show(tunnel.name)  # peers kept from before a restart: the first listing re-adds
                stale = [key for key in dump.peers if key not in self._wanted(tunnel.name)]
                await wg.set_peers(tunnel.name, remove=stale)
                if stale:
                    log.info("%s: removed %d peers left from before", tunnel.name, len(stale))

    async def _ensure_device(self, nl: Netlink, tunnel: Tunnel) -> None:
        """The device (made if missing, with key, port and peers), its addresses, up, and the Network routes."""
        dev = self.devs.get(tunnel.name)
        if dev is None or not await nl.exists(tunnel.name):
            if dev is not None:
                await dev.stop()
                nl.changes.append(f"WireGuard device {tunnel.name} was missing")
            self.devs[tunnel.name] = await wg.create_device(tunnel.name, self.mtu, self.prefer)
            await wg.configure(tunnel.name, self.key, tunnel.port)
            await self._set(tunnel.name, list(self._wanted(tunnel.name).values()), [])
        await nl.ensure_mtu(tunnel.name, self.mtu)
        own = {subnet.version: subnet for subnet in (self.lease.subnet, self.lease.subnet6) if subnet is not None}
        for version in sorted(tunnel.versions):
            address = own[version].network_address
            await nl.ensure_address(tunnel.name, ipaddress.ip_interface(f"{address}/{address.max_prefixlen}"))
        await nl.ensure_link_up(tunnel.name)
        if 6 not in tunnel.versions:
            sysctl.disable_ipv6(tunnel.name)
        for version in sorted(tunnel.versions):
            await nl.ensure_route((self.config.ipv4 if version == 4 else self.config.ipv6).network, tunnel.name)

    def _wanted(self, device: str) -> dict[str, wg.PeerConfig]:
        """Public key -> the peer we want on ``device``: all subnets leased under that key, the endpoint
        of the last of them."""
        wanted: dict[str, wg.PeerConfig] = {}
        for subnet in sorted(self.peers, key=lambda s: (s.version, s)):
            peer = self.peers[subnet].get(device)
            if peer is None:
                continue
            have = wanted.get(peer.key)
            ips = (*have.allowed_ips, *map(str, peer.subnets)) if have else tuple(map(str, peer.subnets))
            wanted[peer.key] = wg.PeerConfig(peer.key, ips, peer.endpoint, self.settings.keepalive)
        return wanted

    async def _set(self, device: str, add: list[wg.PeerConfig], remove: list[str]) -> None:
        await wg.set_peers(device, add, remove, self.settings.psk)

    async def apply(self, batch: Batch) -> None:
        async with self._lock:
            before = {t.name: self._wanted(t.name) for t in self.tunnels}
            for lease in batch.removed:
                self.peers.pop(lease.subnet, None)
                self.skipped.discard(lease.subnet)
            for lease in batch.added:
                peers = lease_peers(lease, self.tunnels, self.settings.mode, self.underlay.public_ip,
                                    self.underlay.public_ip6)
                if peers is None:
                    log.warning("peer %s is not a usable wireguard peer (backend %s, BackendData %s, "
                                "BackendV6Data %s): skipped", lease.subnet, lease.attrs.backend_type,
                                _show(lease.attrs.backend_data), _show(lease.attrs.backend_v6_data))
                    self.peers.pop(lease.subnet, None)  # it may have been one before
                    self.skipped.add(lease.subnet)
                    continue
                self.peers[lease.subnet] = peers
                self.skipped.discard(lease.subnet)
            for tunnel in self.tunnels:  # one wg set per device and batch
                after = self._wanted(tunnel.name)
                was = before[tunnel.name]
                await self._set(tunnel.name, [peer for key, peer in after.items() if was.get(key) != peer],
                                [key for key in was if key not in after])
                if batch.listed and not self.joined and not self.settings.keepalive:  # (module note)
                    listed = {peers[tunnel.name].key for lease in batch.added
                              if (peers := self.peers.get(lease.subnet)) and tunnel.name in peers}
                    try:
                        await wg.greet(tunnel.name, sorted(listed))
                    except PlumbingError as exc:  # best effort: the first packets start sessions anyway
                        log.warning("%s: cannot start sessions with the peers at join: %s", tunnel.name, exc)
            self.joined = self.joined or batch.listed

    async def reconcile(self, nl: Netlink) -> None:
        async with self._lock:
            for tunnel in self.tunnels:
                await self._ensure_device(nl, tunnel)
                dump = await wg.show(tunnel.name)
                if dump.public_key != self.key.public or dump.listen_port != tunnel.port:
                    await wg.configure(tunnel.name, self.key, tunnel.port)
                    nl.changes.append(f"key or listen port of {tunnel.name} was different")
                wanted = self._wanted(tunnel.name)
                remove = [key for key in dump.peers if key not in wanted]
                add = [peer for key, peer in wanted.items()
                       if not _same(dump.peers.get(key), peer, self.settings.psk is not None)]
                await self._set(tunnel.name, add, remove)
                nl.changes += [f"WireGuard peer {key} on {tunnel.name} was extra (removed)" for key in remove]
                nl.changes += [f"WireGuard peer {peer.public_key} ({', '.join(peer.allowed_ips)}) on {tunnel.name} "
                               f"was {'different' if peer.public_key in dump.peers else 'missing'}" for peer in add]
                self._counted(tunnel.name, dump.peers)

    async def run(self) -> None:
        """Until cancelled: read the per-peer counters every :data:`STATS_INTERVAL`, and raise
        PlumbingError the moment a wireguard-go exits (a kernel device has no process)."""
        while True:
            died = [asyncio.ensure_future(dev.died()) for dev in self.devs.values()]
            try:
                done, _ = await asyncio.wait(died or [asyncio.ensure_future(asyncio.sleep(STATS_INTERVAL))],
                                             timeout=STATS_INTERVAL, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for future in died:
                    future.cancel()
            for future in done:
                future.result()  # raises: a wireguard-go died
            for name in list(self.devs):
                try:
                    self._counted(name, (await wg.show(name)).peers)
                except PlumbingError as exc:  # the device's absence is reconcile's to repair
                    log.debug("%s: cannot read peer counters: %s", name, exc)

    def _counted(self, device: str, peers: dict[str, wg.PeerState]) -> None:
        """Keep ``device``'s counters just read, and say which peers stalled or recovered."""
        self.peer_counters[device] = dict(peers)
        stalled, recovered = self.handshakes.update(device, peers, time.time())
        for key in stalled:
            log.warning("%s: no WireGuard session with peer %s (%s) for %.0f s while sending to it: it is "
                        "unreachable, or its key or Backend.PSK differs from ours", device, key,
                        peers[key].endpoint or "no endpoint", STALL_GRACE)
        for key in recovered:
            log.info("%s: peer %s: a session again, or removed", device, key)

    async def close(self) -> None:
        """Stop wireguard-go (its devices go with it); a kernel device stays (see the module's note)."""
        for dev in self.devs.values():
            await dev.stop()

    async def teardown(self, nl: Netlink) -> None:
        """``--cleanup-on-exit``: stop wireguard-go and delete every device (a kernel one too)."""
        await self.close()
        for tunnel in self.tunnels:
            await nl.delete_link(tunnel.name)

    def peer_subnets(self) -> list[str]:
        return sorted(str(s) for lease in list(self.peers.values()) for peer in lease.values() for s in peer.subnets)

    def stats(self) -> dict:
        return {"peers": len(self.peers), "skipped_peers": len(self.skipped)}

    def peer_stats(self, now: float | None = None) -> list[dict]:
        """One row per peer node and device (see :meth:`Backend.peer_stats`): the peer's lease subnet,
        the device, its public key, endpoint, subnets there, its last handshake (epoch seconds, 0: never)
        and seconds since (None: never), whether it is stalled (:class:`HandshakeWatch`) and bytes
        received and sent, from the device's counters as last read (by :meth:`run` or :meth:`reconcile`)."""
        now = time.time() if now is None else now
        out = []
        # dict.copy() runs no Python code, list(items()) may (a collection): the control loop changes peers
        for subnet, peers in sorted(self.peers.copy().items(), key=lambda item: (item[0].version, item[0])):
            for device, peer in sorted(peers.items()):
                state = self.peer_counters.get(device, {}).get(peer.key)
                seen = state.latest_handshake if state else 0
                out.append({"subnet": str(subnet), "device": device, "public_key": peer.key,
                            "endpoint": peer.endpoint, "subnets": [str(s) for s in peer.subnets],
                            "latest_handshake": seen, "handshake_age": max(0.0, now - seen) if seen else None,
                            "stalled": (device, peer.key) in self.handshakes.stalled,
                            "rx_bytes": state.rx_bytes if state else 0, "tx_bytes": state.tx_bytes if state else 0})
        return out

    def device_statistics(self) -> dict[str, int] | None:
        """The kernel's counters of :attr:`device` (the first device: flannel-wg-v6's traffic is in
        :meth:`peer_stats`, per peer), as the health server labels them with that one name."""
        return read_device_statistics(self.device)


def _same(have: wg.PeerState | None, want: wg.PeerConfig, psk: bool) -> bool:
    """True when the device's peer ``have`` is ``want``: allowed IPs, keepalive, a PSK or none. Not the
    endpoint: WireGuard moves it to where the peer's authenticated packets come from (NAT roaming)."""
    return (have is not None and sorted(have.allowed_ips) == sorted(want.allowed_ips)
            and have.keepalive == want.keepalive and have.has_psk == psk)


def parse(raw: dict, notes: list[str]) -> BackendConfig:
    """The network config's ``Backend`` for this backend: :func:`parse_settings`, kept as the
    config's :attr:`~overlayd.netconf.BackendConfig.settings`."""
    settings = parse_settings(raw, notes)
    return BackendConfig(type=TYPE, mtu=settings.mtu, settings=settings)


SPEC = BackendSpec(TYPE, KEYS, OVERHEAD, parse, lambda options: WireguardBackend,
                   devices=re.escape(DEVICE) + f"({re.escape(V6_SUFFIX)})?")  # the kernel's; wireguard-go's go with it
