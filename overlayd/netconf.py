"""The cluster network config: flannel's JSON, parsed and validated.

Stored in etcd at ``<prefix>/config``, for example kube-flannel's own::

    {"Network": "10.244.0.0/16", "EnableNFTables": false,
     "Backend": {"Type": "vxlan"}}

Every field of flannel's config (Documentation/configuration.md and
backends.md, ``pkg/subnet/config.go``) is known here. The ones overlayd
implements behave as in flannel; the others are accepted when they ask for
nothing overlayd lacks and refused with one line naming the field when they
do (see :data:`UNSUPPORTED`, :data:`FLANNEL_ONLY_BACKENDS`):

* ``EnableIPv4`` true (the default) is accepted; false (IPv6 only) is refused.
* ``EnableIPv6`` true is refused (overlayd carries IPv4 only); without it the
  ``IPv6*`` fields are ignored, as flannel ignores them.
* ``EnableNFTables`` is accepted either way: overlayd always uses nftables.
* vxlan's ``GBP`` and ``Learning`` are accepted when false and refused when
  true; ``DirectRouting`` works as in flannel (both VXLAN implementations);
  ``MacPrefix`` and ``Name`` are Windows-only in flannel and ignored. Fields accepted without effect are listed in
  :attr:`NetworkConfig.notes` so tools can say so.
* As Go's ``encoding/json``, which flannel reads the config with, field names
  match case-insensitively (``"network"``, ``"vni"``); a field given twice in
  different cases is refused. As with Go's zero values, ``SubnetLen: 0``,
  ``"SubnetMin": "0.0.0.0"``, ``Port: 0`` and ``MTU: 0`` mean the default.
* ``Backend.MTU`` is, as in flannel, the MTU of the encapsulated packets (the
  underlay's MTU when absent); the overlay gets it minus the encapsulation
  overhead.

Defaults follow flannel's ``pkg/subnet/config.go``: no ``Backend`` means udp
(but a ``Backend`` without a ``Type``, ``{}`` or ``null``, is an error there and
here; ``Type`` ignores case, as flannel lowercases it: ``"VXLAN"`` is vxlan);
SubnetLen is 24 when the Network is a /22 or shorter, otherwise Network
prefix + 2 (so that at least four subnets fit); SubnetMin is the network plus
one subnet (the first subnet is never handed out); SubnetMax is the last
subnet. One deliberate difference: the udp backend's default port is 8472
(flannel's is 8285, see the README). Unlike flannel we reject unknown keys and
host bits in ``Network`` instead of silently ignoring them, and every error is
one line naming the field it is about (also for JSON nested too deeply to
parse).

Stricter than flannel, because these configs are accepted by flannel and then
fail in the data plane or the allocator:

* addresses must be strings in dotted form, networks in CIDR form
  (``ipaddress`` alone reads ``"Network": 123`` as ``0.0.0.123/32`` and
  ``"SubnetMin": 5`` as ``0.0.0.5``);
* a Network overlapping a special-purpose range (see :data:`SPECIAL_RANGES`)
  cannot carry pod traffic and is refused;
* at most :data:`MAX_SUBNETS` subnets between SubnetMin and SubnetMax.

The config never enumerates its subnets: :attr:`NetworkConfig.subnet_count`
is arithmetic and the allocator works on intervals, so the cost of a config
does not grow with the number of subnets it describes.

Pure code: no I/O.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from typing import Any

from .errors import ConfigError

BACKEND_TYPES = ("udp", "vxlan", "host-gw")
# Backends flannel has (or had) and overlayd does not: refused by name.
FLANNEL_ONLY_BACKENDS = ("wireguard", "ipip", "ipsec", "alloc", "extension", "tencent-vpc",
                         "ali-vpc", "aws-vpc", "gce")
DEFAULT_PORT = 8472
DEFAULT_VNI = 1
MAX_VNI = (1 << 24) - 1
ZERO = ipaddress.IPv4Address(0)

# Encapsulation overhead per backend, subtracted from the underlay MTU (or Backend.MTU):
# udp = outer IPv4 (20) + UDP (8); vxlan = 20 + 8 + VXLAN (8) + inner Ethernet (14).
OVERHEAD = {"udp": 28, "vxlan": 50, "host-gw": 0}

# Ranges a pod network cannot use (RFC 6890): a Network overlapping any of
# them is refused. 0.0.0.0/8 also catches 0.0.0.0/0, the classic typo.
SPECIAL_RANGES = tuple((ipaddress.IPv4Network(net), what) for net, what in (
    ("0.0.0.0/8", "'this network' (0.0.0.0/8)"),
    ("127.0.0.0/8", "loopback (127.0.0.0/8)"),
    ("169.254.0.0/16", "link-local (169.254.0.0/16)"),
    ("224.0.0.0/4", "multicast (224.0.0.0/4)"),
    ("240.0.0.0/4", "reserved (240.0.0.0/4, with the broadcast address)"),
))

# The most subnets (nodes) a config may offer between SubnetMin and SubnetMax.
# Every node holds every other node's lease (one route or FDB entry each) and
# every re-list reads them all, so the useful count is bounded by cluster
# size: Kubernetes supports 5,000 nodes. 2**16 is 13 times that and exactly
# what the widest common layout gives (10.0.0.0/8 cut into /24s: 65,535), so
# no real cluster is refused, while a typo such as SubnetLen 30 on a /8
# (4,194,303 subnets) is. Flannel sets no limit.
MAX_SUBNETS = 1 << 16

_IPV6_KEYS = ("IPv6Network", "IPv6SubnetLen", "IPv6SubnetMin", "IPv6SubnetMax")
_TOP_KEYS = {"Network", "SubnetLen", "SubnetMin", "SubnetMax", "Backend",
             "EnableIPv4", "EnableIPv6", "EnableNFTables", *_IPV6_KEYS}
_BACKEND_KEYS = {
    "udp": {"Type", "Port", "MTU"},
    "vxlan": {"Type", "Port", "VNI", "MTU", "GBP", "Learning", "DirectRouting", "MacPrefix", "Name"},
    "host-gw": {"Type"},
}
_ALL_BACKEND_KEYS = set().union(*_BACKEND_KEYS.values())

# flannel's switches overlayd does not implement: (where, field) -> the value that asks
# for nothing (accepted), and why the other value is refused.
UNSUPPORTED = {
    ("", "EnableIPv4"): (True, "it carries IPv4 only, so an IPv6-only network cannot work"),
    ("", "EnableIPv6"): (False, "it carries IPv4 only (remove the field or set it false)"),
    ("Backend.", "GBP"): (False, "no VXLAN Group Based Policy (set it false)"),
    ("Backend.", "Learning"): (False, "peers' FDB entries come from their leases, "
                                      "not from MAC learning (set it false)"),
}


@dataclasses.dataclass(frozen=True)
class BackendConfig:
    """The ``Backend`` object: which encapsulation and its parameters."""

    type: str = "udp"
    port: int = DEFAULT_PORT
    vni: int = DEFAULT_VNI
    mtu: int | None = None  # MTU of the encapsulated packets (flannel's); None: the underlay's
    direct_routing: bool = False  # vxlan: host-gw routes to peers on our segment, the others encapsulated

    def overlay_mtu(self, underlay_mtu: int) -> int:
        """The MTU pods and the overlay device get, per flannel's rules: the outgoing MTU
        (``Backend.MTU``, else the underlay's) minus the encapsulation overhead."""
        return (self.mtu or underlay_mtu) - OVERHEAD[self.type]

    def to_json(self) -> dict[str, Any]:
        """The ``Backend`` object as flannel's JSON, defaults written out."""
        out: dict[str, Any] = {"Type": self.type}
        if self.type in ("udp", "vxlan"):
            out["Port"] = self.port
        if self.type == "vxlan":
            out["VNI"] = self.vni
        if self.mtu is not None:
            out["MTU"] = self.mtu
        if self.direct_routing:
            out["DirectRouting"] = True
        return out


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """A validated cluster network config, with flannel's defaults filled in."""

    network: ipaddress.IPv4Network
    subnet_len: int
    subnet_min: ipaddress.IPv4Address
    subnet_max: ipaddress.IPv4Address
    backend: BackendConfig
    # fields accepted without effect, one line each (e.g. for 'overlayctl config set' to show)
    notes: tuple[str, ...] = dataclasses.field(default=(), compare=False)

    @property
    def subnet_size(self) -> int:
        """Addresses in one subnet (``2 ** (32 - SubnetLen)``)."""
        return 1 << (32 - self.subnet_len)

    @property
    def subnet_count(self) -> int:
        """How many subnets may be leased, from SubnetMin to SubnetMax."""
        return (int(self.subnet_max) - int(self.subnet_min)) // self.subnet_size + 1

    def contains_subnet(self, subnet: ipaddress.IPv4Network) -> bool:
        """True when ``subnet`` is one this config could hand out."""
        return (
            subnet.prefixlen == self.subnet_len
            and self.subnet_min <= subnet.network_address <= self.subnet_max
        )

    def to_json(self) -> dict[str, Any]:
        """The config as flannel's JSON, defaults written out."""
        return {
            "Network": str(self.network),
            "SubnetLen": self.subnet_len,
            "SubnetMin": str(self.subnet_min),
            "SubnetMax": str(self.subnet_max),
            "Backend": self.backend.to_json(),
        }


def _clip(text: str, limit: int = 40) -> str:
    """``text`` cut to ``limit`` characters for a one-line error message."""
    return text if len(text) <= limit else text[:limit] + "..."


def _show(value: Any) -> str:
    """``value`` as (clipped) JSON for an error message."""
    try:
        return _clip(json.dumps(value))
    except (TypeError, ValueError, RecursionError):
        return type(value).__name__


def _canonical(obj: dict, known: set[str], where: str) -> dict:
    """``obj`` with its keys spelled as in ``known`` when they match ignoring case (as Go's
    ``encoding/json`` matches them); unknown keys are kept as they are, for the caller."""
    spelled = {k.lower(): k for k in known}
    out: dict = {}
    for key, value in obj.items():
        name = spelled.get(key.lower(), key) if isinstance(key, str) else key
        if name in out:
            raise ConfigError(f"{where}{name}: given twice (the names of fields ignore case)")
        out[name] = value
    return out


def _int_field(obj: dict, key: str, where: str, lo: int, hi: int, default: int | None):
    """``obj[key]``, an integer in ``lo..hi``; ``default`` when absent or 0 (Go's zero value)
    and 0 is outside ``lo..hi``."""
    if key not in obj:
        return default
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}{key}: must be an integer, got {_show(value)}")
    if value == 0 and lo > 0:
        return default
    if not lo <= value <= hi:
        raise ConfigError(f"{where}{key}: must be between {lo} and {hi}, got {value}")
    return value


def _bool_field(obj: dict, key: str, where: str) -> bool | None:
    """``obj[key]``, a JSON boolean, or None when absent."""
    value = obj.get(key)
    if value is not None and not isinstance(value, bool):
        raise ConfigError(f"{where}{key}: must be true or false, got {_show(value)}")
    return value


def _check_switches(obj: dict, where: str) -> None:
    """Refuse the :data:`UNSUPPORTED` switches in ``obj`` whose value asks for a feature
    overlayd lacks (the harmless value is accepted and has no effect)."""
    for (place, key), (harmless, why) in UNSUPPORTED.items():
        value = _bool_field(obj, key, where) if place == where else None
        if value is not None and value != harmless:
            raise ConfigError(f"{where}{key}: {json.dumps(value)} is not supported by overlayd: {why}")


def _addr_field(obj: dict, key: str) -> ipaddress.IPv4Address | None:
    if key not in obj:
        return None
    value = obj[key]
    if isinstance(value, str):  # ipaddress would also take an int or 4 bytes
        try:
            return ipaddress.IPv4Address(value)
        except ValueError:
            pass
    raise ConfigError(f"{key}: not an IPv4 address string such as \"10.244.1.0\": {_show(value)}")


def _network_field(value: Any) -> ipaddress.IPv4Network:
    """``Network``: a CIDR string that leaves room for subnets and can carry pod traffic."""
    if not isinstance(value, str) or not value.partition("/")[2].isdecimal():
        raise ConfigError(
            f"Network: not an IPv4 network string such as \"10.244.0.0/16\": {_show(value)}")
    try:
        network = ipaddress.IPv4Network(value)
    except ValueError as exc:
        raise ConfigError(f"Network: {exc}") from None
    if network.prefixlen > 28:
        raise ConfigError(f"Network: /{network.prefixlen} is too small; the minimum useful prefix is /28")
    for special, what in SPECIAL_RANGES:
        if network.overlaps(special):
            raise ConfigError(f"Network: {network} overlaps {what}, which cannot carry pod traffic")
    return network


def _parse_backend(top: dict, notes: list[str]) -> BackendConfig:
    """Validate the ``Backend`` object of the config ``top``; fields accepted without effect
    are added to ``notes``. As in flannel, no ``Backend`` at all means UDP on the default
    port, while a ``Backend`` given without a ``Type`` (``{}``, ``null``) is refused, and
    the type ignores case (``"VXLAN"`` is vxlan)."""
    if "Backend" not in top:
        return BackendConfig()
    raw = top["Backend"]
    if not isinstance(raw, dict):
        raise ConfigError("Backend: must be a JSON object")
    raw = _canonical(raw, _ALL_BACKEND_KEYS, "Backend.")
    given = raw.get("Type")
    if given is None or given == "":
        raise ConfigError(f"Backend.Type: missing (one of: {', '.join(BACKEND_TYPES)}; "
                          "without a Backend object the backend is udp)")
    if not isinstance(given, str):
        raise ConfigError(f"Backend.Type: must be a string, got {_show(given)}")
    btype = given.lower()
    if btype in FLANNEL_ONLY_BACKENDS:
        raise ConfigError(f"Backend.Type: {btype} is a flannel backend not supported by overlayd "
                          f"(use one of: {', '.join(BACKEND_TYPES)})")
    if btype not in BACKEND_TYPES:
        raise ConfigError(
            f"Backend.Type: unknown backend {_show(given)} "
            f"(expected one of: {', '.join(BACKEND_TYPES)})"
        )
    unknown = sorted(set(raw) - _BACKEND_KEYS[btype], key=str)
    if unknown:
        raise ConfigError(f"Backend.{_clip(str(unknown[0]))}: not a setting of the {btype} backend")
    _check_switches(raw, "Backend.")
    for key in ("MacPrefix", "Name"):
        if key in raw:
            if not isinstance(raw[key], str):
                raise ConfigError(f"Backend.{key}: must be a string, got {_show(raw[key])}")
            notes.append(f"Backend.{key}: ignored (Windows only in flannel)")
    port = _int_field(raw, "Port", "Backend.", 1, 65535, DEFAULT_PORT)
    vni = _int_field(raw, "VNI", "Backend.", 0, MAX_VNI, DEFAULT_VNI)
    mtu = _int_field(raw, "MTU", "Backend.", 576, 65535, None)
    return BackendConfig(type=btype, port=port, vni=vni, mtu=mtu,
                         direct_routing=bool(_bool_field(raw, "DirectRouting", "Backend.")))


def parse_config(data: str | bytes | dict) -> NetworkConfig:
    """Parse and validate flannel's network config JSON.

    Raises :class:`ConfigError` with one line naming the offending field.
    """
    if isinstance(data, (str, bytes)):
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config is not valid JSON: {exc}") from None
        except RecursionError:
            raise ConfigError("config is not valid JSON: nested too deeply") from None
    else:
        raw = data
    if not isinstance(raw, dict):
        raise ConfigError("config must be a JSON object")
    raw = _canonical(raw, _TOP_KEYS, "")
    unknown = sorted(set(raw) - _TOP_KEYS, key=str)
    if unknown:
        raise ConfigError(f"{_clip(str(unknown[0]))}: unknown field")
    _check_switches(raw, "")
    notes: list[str] = []
    ipv6 = [key for key in _IPV6_KEYS if key in raw]
    if ipv6:
        notes.append(f"{', '.join(ipv6)}: ignored without EnableIPv6 (as flannel does)")
    if _bool_field(raw, "EnableNFTables", "") is False:
        notes.append("EnableNFTables: false: overlayd always uses nftables, never iptables")

    if "Network" not in raw:
        raise ConfigError("Network: missing (e.g. \"10.244.0.0/16\")")
    network = _network_field(raw["Network"])

    subnet_len = _int_field(raw, "SubnetLen", "", 1, 32, None)
    if subnet_len is None:
        subnet_len = 24 if network.prefixlen <= 22 else network.prefixlen + 2
    elif subnet_len > 30:
        raise ConfigError("SubnetLen: must be 30 or less (room for a gateway and a pod)")
    elif subnet_len < network.prefixlen + 2:
        raise ConfigError(
            f"SubnetLen: /{subnet_len} leaves fewer than four subnets in {network}"
        )

    size = 1 << (32 - subnet_len)
    net_first = int(network.network_address)
    net_last_subnet = int(network.broadcast_address) + 1 - size
    mask = (0xFFFFFFFF << (32 - subnet_len)) & 0xFFFFFFFF

    bounds = {}
    for key, default in (("SubnetMin", net_first + size), ("SubnetMax", net_last_subnet)):
        addr = _addr_field(raw, key)
        if addr is None or addr == ZERO:  # 0.0.0.0: Go's zero value, the default for flannel
            bounds[key] = ipaddress.IPv4Address(default)
            continue
        if addr not in network:
            raise ConfigError(f"{key}: {addr} is not inside Network {network}")
        if int(addr) & mask != int(addr):
            raise ConfigError(f"{key}: {addr} is not on a /{subnet_len} boundary")
        bounds[key] = addr
    if bounds["SubnetMin"] > bounds["SubnetMax"]:
        raise ConfigError(
            f"SubnetMin: {bounds['SubnetMin']} is above SubnetMax {bounds['SubnetMax']}"
        )

    config = NetworkConfig(
        network=network,
        subnet_len=subnet_len,
        subnet_min=bounds["SubnetMin"],
        subnet_max=bounds["SubnetMax"],
        backend=_parse_backend(raw, notes),
        notes=tuple(notes),
    )
    if config.subnet_count > MAX_SUBNETS:
        raise ConfigError(
            f"SubnetLen: /{subnet_len} gives {config.subnet_count} subnets between SubnetMin "
            f"and SubnetMax, more than the {MAX_SUBNETS} supported (use a shorter SubnetLen "
            "or narrow SubnetMin/SubnetMax)"
        )
    return config
