"""The cluster network config: flannel's JSON, parsed and validated.

Stored in etcd at ``<prefix>/config``, for example kube-flannel's own::

    {"Network": "10.244.0.0/16", "EnableNFTables": false,
     "Backend": {"Type": "vxlan"}}

Every field of flannel's config (Documentation/configuration.md and
backends.md, ``pkg/subnet/config.go``) is known here. The ones overlayd
implements behave as in flannel; the others are accepted when they ask for
nothing overlayd lacks and refused with one line naming the field when they
do. The backends are not named here: each is a module that declares its
type name, settings, their validation and its overhead, listed in
:mod:`overlayd.backend.registry`, which this module consults:

* ``EnableIPv6`` with ``IPv6Network``, ``IPv6SubnetLen``, ``IPv6SubnetMin`` and
  ``IPv6SubnetMax`` is parsed and validated with flannel's rules (the IPv6
  pool is a :class:`SubnetRange` like the IPv4 one): a dual-stack network;
  without ``EnableIPv6`` the ``IPv6*`` fields are ignored, as flannel ignores
  them. ``EnableIPv4: false`` with ``EnableIPv6`` is an IPv6-only network
  (:attr:`NetworkConfig.ipv4` None).
* ``EnableNFTables`` is accepted either way: overlayd always uses nftables.
* A backend's settings are its module's to validate (vxlan's ``GBP`` and
  ``Learning`` are accepted when false and refused when true, for example);
  a flannel backend that no module implements is refused by name. Fields
  accepted without effect are listed in :attr:`NetworkConfig.notes` so tools can say so.
* As Go's ``encoding/json``, which flannel reads the config with, field names
  match case-insensitively (``"network"``, ``"vni"``); a field given twice in
  different cases is refused. As with Go's zero values, ``SubnetLen: 0``,
  ``"SubnetMin": "0.0.0.0"``, ``Port: 0`` and ``MTU: 0`` mean the default.
* ``Backend.MTU`` is, as in flannel, the MTU of the encapsulated packets (the
  underlay's MTU when absent); the overlay gets it minus the encapsulation
  overhead.
* ``ServiceNetwork`` and ``NodePortRange`` are overlayd's own (issue 22, not
  flannel's): where services get their ClusterIPs and NodePorts
  (:class:`ServiceRange`). Without a ServiceNetwork there are no services.

Defaults follow flannel's ``pkg/subnet/config.go``: no ``Backend`` means udp
(but a ``Backend`` without a ``Type``, ``{}`` or ``null``, is an error there and
here; ``Type`` ignores case, as flannel lowercases it: ``"VXLAN"`` is vxlan);
SubnetLen is 24 when the Network is a /22 or shorter, otherwise Network
prefix + 2 (so that at least four subnets fit); SubnetMin is the network plus
one subnet (the first subnet is never handed out); SubnetMax is the last
subnet. IPv6 follows the same rules with 64 for a /62 or shorter, /124 as the
smallest IPv6Network and /126 as the longest IPv6SubnetLen. One deliberate difference: the udp backend's default port is 8472
(flannel's is 8285, see docs/design.md, "Choices"). Unlike flannel we reject unknown keys and
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
* at most :data:`MAX_SUBNETS` subnets between SubnetMin and SubnetMax (IPv4
  only: the cap catches a SubnetLen typo, while an IPv6 pool is vast by
  design, ``fd00::/48`` cut into /64s already gives 65,535, and the
  allocator's cost does not depend on the pool's size).

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

# flannel's defaults of the Backend fields overlayd's own backends share (Port, VNI)
DEFAULT_PORT = 8472
DEFAULT_VNI = 1
MIN_MTU = 576  # the least Backend.MTU (of the encapsulated packets) a backend accepts

# Ranges a pod network cannot use (RFC 6890): a Network overlapping any of
# them is refused. 0.0.0.0/8 also catches 0.0.0.0/0, the classic typo.
SPECIAL_RANGES = tuple((ipaddress.IPv4Network(net), what) for net, what in (
    ("0.0.0.0/8", "'this network' (0.0.0.0/8)"),
    ("127.0.0.0/8", "loopback (127.0.0.0/8)"),
    ("169.254.0.0/16", "link-local (169.254.0.0/16)"),
    ("224.0.0.0/4", "multicast (224.0.0.0/4)"),
    ("240.0.0.0/4", "reserved (240.0.0.0/4, with the broadcast address)"),
))

# The same for an IPv6Network (RFC 6890, RFC 4291). ::/8 holds the unspecified, loopback
# and IPv4-mapped addresses; ::/0, the classic typo, overlaps it.
SPECIAL_RANGES_V6 = tuple((ipaddress.IPv6Network(net), what) for net, what in (
    ("::/8", "the reserved ::/8 (unspecified, loopback, IPv4-mapped)"),
    ("fe80::/10", "link-local (fe80::/10)"),
    ("ff00::/8", "multicast (ff00::/8)"),
))

# The most subnets (nodes) a config may offer between SubnetMin and SubnetMax.
# Every node holds every other node's lease (one route or FDB entry each) and
# every re-list reads them all, so the useful count is bounded by cluster
# size: Kubernetes supports 5,000 nodes. 2**16 is 13 times that and exactly
# what the widest common layout gives (10.0.0.0/8 cut into /24s: 65,535), so
# no real cluster is refused, while a typo such as SubnetLen 30 on a /8
# (4,194,303 subnets) is. Flannel sets no limit.
MAX_SUBNETS = 1 << 16

@dataclasses.dataclass(frozen=True)
class _Family:
    """How one address family's pool is spelled and bounded in the config (flannel's rules)."""

    label: str  # "IPv4" / "IPv6", for messages
    key: str  # the prefix of its field names: "" (Network, SubnetLen...) or "IPv6"
    network_type: type
    address_type: type
    max_network_prefix: int  # a longer Network has no room for four subnets of four addresses
    max_subnet_len: int  # a subnet must hold a gateway and a pod
    default_subnet_len: int  # for a Network of default_subnet_len - 2 or shorter
    special: tuple
    example_network: str
    example_address: str
    bits: int


IPV4 = _Family("IPv4", "", ipaddress.IPv4Network, ipaddress.IPv4Address, 28, 30, 24,
               SPECIAL_RANGES, "10.244.0.0/16", "10.244.1.0", 32)
IPV6 = _Family("IPv6", "IPv6", ipaddress.IPv6Network, ipaddress.IPv6Address, 124, 126, 64,
               SPECIAL_RANGES_V6, "fd00:10:244::/56", "fd00:10:244:1::", 128)

_IPV6_KEYS = ("IPv6Network", "IPv6SubnetLen", "IPv6SubnetMin", "IPv6SubnetMax")
_SERVICE_KEYS = ("ServiceNetwork", "NodePortRange")
_TOP_KEYS = {"Network", "SubnetLen", "SubnetMin", "SubnetMax", "Backend",
             "EnableIPv4", "EnableIPv6", "EnableNFTables", *_IPV6_KEYS, *_SERVICE_KEYS}


@dataclasses.dataclass(frozen=True)
class BackendConfig:
    """The ``Backend`` object: which backend and its parameters, as its module's ``parse``
    (:class:`overlayd.backend.registry.BackendSpec`) validated them. The defaults are flannel's
    config without a ``Backend`` object: udp on the default port."""

    type: str = "udp"
    port: int = DEFAULT_PORT  # udp, vxlan
    vni: int = DEFAULT_VNI  # vxlan
    mtu: int | None = None  # MTU of the encapsulated packets (flannel's); None: the underlay's
    direct_routing: bool = False  # vxlan: host-gw routes to peers on our segment, the others encapsulated
    # a backend's own settings (wireguard's), with a to_json() giving them as its Backend fields
    settings: Any = None

    @property
    def spec(self):
        """The :class:`overlayd.backend.registry.BackendSpec` of :attr:`type`."""
        from .backend import registry  # lazily: the backend modules import this one

        return registry.spec(self.type)

    def overlay_mtu(self, underlay_mtu: int) -> int:
        """The MTU pods and the overlay device get, per flannel's rules: the outgoing MTU
        (``Backend.MTU``, else the underlay's) minus the backend's encapsulation overhead."""
        return (self.mtu or underlay_mtu) - self.spec.overhead

    def to_json(self) -> dict[str, Any]:
        """The ``Backend`` object as flannel's JSON, defaults written out."""
        keys = self.spec.keys
        out: dict[str, Any] = {"Type": self.type}
        if "Port" in keys:
            out["Port"] = self.port
        if "VNI" in keys:
            out["VNI"] = self.vni
        if self.mtu is not None:
            out["MTU"] = self.mtu
        if self.direct_routing:
            out["DirectRouting"] = True
        if self.settings is not None:
            out.update(self.settings.to_json())
        return out


@dataclasses.dataclass(frozen=True)
class SubnetRange:
    """One address family's pool: the Network cut into /SubnetLen subnets, of which those
    from SubnetMin to SubnetMax may be leased. The same shape for IPv4 and IPv6."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    subnet_len: int
    subnet_min: ipaddress.IPv4Address | ipaddress.IPv6Address
    subnet_max: ipaddress.IPv4Address | ipaddress.IPv6Address

    @property
    def subnet_size(self) -> int:
        """Addresses in one subnet (``2 ** (bits - SubnetLen)``)."""
        return 1 << (self.network.max_prefixlen - self.subnet_len)

    @property
    def subnet_count(self) -> int:
        """How many subnets may be leased, from SubnetMin to SubnetMax."""
        return (int(self.subnet_max) - int(self.subnet_min)) // self.subnet_size + 1

    def contains_subnet(self, subnet: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
        """True when ``subnet`` is one this pool could hand out."""
        return (
            subnet.version == self.network.version
            and subnet.prefixlen == self.subnet_len
            and self.subnet_min <= subnet.network_address <= self.subnet_max
        )


DEFAULT_NODE_PORTS = (30000, 32767)  # Kubernetes' default --service-node-port-range
# ServiceNetwork sizes: Kubernetes refuses a service range wider than /12; a /29 leaves 6 ClusterIPs
SERVICE_PREFIX_MIN, SERVICE_PREFIX_MAX = 12, 29


@dataclasses.dataclass(frozen=True)
class ServiceRange:
    """Where services get their addresses (issue 22): ClusterIPs from ``network`` (its
    network and broadcast addresses excepted), NodePorts from ``node_port_min`` to
    ``node_port_max``."""

    network: ipaddress.IPv4Network
    node_port_min: int = DEFAULT_NODE_PORTS[0]
    node_port_max: int = DEFAULT_NODE_PORTS[1]

    first_ip = property(lambda self: self.network.network_address + 1, doc="The lowest ClusterIP.")
    last_ip = property(lambda self: self.network.broadcast_address - 1, doc="The highest ClusterIP.")

    def to_json(self) -> dict[str, Any]:
        """``ServiceNetwork`` and ``NodePortRange`` as in the config."""
        return {"ServiceNetwork": str(self.network),
                "NodePortRange": f"{self.node_port_min}-{self.node_port_max}"}


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """A validated cluster network config, with flannel's defaults filled in.

    ``ipv4`` is the IPv4 pool (the attributes ``network``, ``subnet_len``... are its
    fields, for the code that knows one family); ``ipv6`` the IPv6 pool with EnableIPv6.
    """

    ipv4: SubnetRange | None  # None: IPv6 only (EnableIPv4 false)
    backend: BackendConfig
    ipv6: SubnetRange | None = None
    services: ServiceRange | None = None  # None: no ServiceNetwork, no services
    # fields accepted without effect, one line each (e.g. for 'overlayctl config set' to show)
    notes: tuple[str, ...] = dataclasses.field(default=(), compare=False)

    network = property(lambda self: self.ipv4.network, doc="The IPv4 Network.")
    subnet_len = property(lambda self: self.ipv4.subnet_len, doc="The IPv4 SubnetLen.")
    subnet_min = property(lambda self: self.ipv4.subnet_min, doc="The IPv4 SubnetMin.")
    subnet_max = property(lambda self: self.ipv4.subnet_max, doc="The IPv4 SubnetMax.")
    subnet_size = property(lambda self: self.ipv4.subnet_size, doc="Addresses in one IPv4 subnet.")
    subnet_count = property(lambda self: self.ipv4.subnet_count, doc="IPv4 subnets that may be leased.")

    def contains_subnet(self, subnet: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
        """True when ``subnet`` is one this config could hand out (either family)."""
        pool = self.ipv6 if subnet.version == 6 else self.ipv4
        return pool is not None and pool.contains_subnet(subnet)

    def to_json(self) -> dict[str, Any]:
        """The config as flannel's JSON, defaults written out."""
        out: dict[str, Any] = {
            "Network": str(self.network),
            "SubnetLen": self.subnet_len,
            "SubnetMin": str(self.subnet_min),
            "SubnetMax": str(self.subnet_max),
        }
        if self.ipv6 is not None:
            out.update({"EnableIPv6": True, "IPv6Network": str(self.ipv6.network),
                        "IPv6SubnetLen": self.ipv6.subnet_len,
                        "IPv6SubnetMin": str(self.ipv6.subnet_min),
                        "IPv6SubnetMax": str(self.ipv6.subnet_max)})
        out["Backend"] = self.backend.to_json()
        if self.services is not None:
            out.update(self.services.to_json())
        return out


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


def _check_switches(obj: dict, where: str, unsupported: dict[str, tuple[bool, str]]) -> None:
    """Refuse the switches in ``obj`` whose value asks for a feature overlayd lacks: ``unsupported``
    maps a field to the value that asks for nothing (accepted, without effect) and why the other
    value is refused."""
    for key, (harmless, why) in unsupported.items():
        value = _bool_field(obj, key, where)
        if value is not None and value != harmless:
            raise ConfigError(f"{where}{key}: {json.dumps(value)} is not supported by overlayd: {why}")


def _port_field(raw: dict) -> int:
    """``Backend.Port``: 1-65535, :data:`DEFAULT_PORT` when absent or 0."""
    return _int_field(raw, "Port", "Backend.", 1, 65535, DEFAULT_PORT)


def _mtu_field(raw: dict, overhead: int = 0) -> int | None:
    """``Backend.MTU``: at least :data:`MIN_MTU` plus the backend's ``overhead``; None when absent or 0."""
    return _int_field(raw, "MTU", "Backend.", MIN_MTU + overhead, 65535, None)


def _other_family(key: str, value: str, family: _Family, parse) -> None:
    """Raise the one-line error for ``value`` that ``parse`` reads as the other family."""
    try:
        version = parse(value).version
    except ValueError:
        return
    raise ConfigError(f"{key}: {value} is IPv{version}, not {family.label}")


def _addr_field(obj: dict, key: str, family: _Family = IPV4):
    """``obj[key]``, an address of ``family`` given as a string, or None when absent."""
    if key not in obj:
        return None
    value = obj[key]
    if isinstance(value, str):  # ipaddress would also take an int or 4 bytes
        try:
            return family.address_type(value)
        except ValueError:
            _other_family(key, value, family, ipaddress.ip_address)
    raise ConfigError(f"{key}: not an {family.label} address string such as "
                      f"\"{family.example_address}\": {_show(value)}")


def _network_field(value: Any, family: _Family = IPV4):
    """``Network`` (or ``IPv6Network``): a CIDR string of ``family`` that leaves room for
    subnets and can carry pod traffic."""
    key = f"{family.key}Network"
    if not isinstance(value, str) or not value.partition("/")[2].isdecimal():
        raise ConfigError(f"{key}: not an {family.label} network string such as "
                          f"\"{family.example_network}\": {_show(value)}")
    try:
        network = family.network_type(value)
    except ValueError as exc:
        _other_family(key, value, family, ipaddress.ip_network)
        raise ConfigError(f"{key}: {exc}") from None
    if network.prefixlen > family.max_network_prefix:
        raise ConfigError(f"{key}: /{network.prefixlen} is too small; the minimum useful prefix "
                          f"is /{family.max_network_prefix}")
    for special, what in family.special:
        if network.overlaps(special):
            raise ConfigError(f"{key}: {network} overlaps {what}, which cannot carry pod traffic")
    return network


def _parse_range(raw: dict, family: _Family) -> SubnetRange:
    """The pool of ``family`` from the config ``raw``, with flannel's defaults and checks
    (``pkg/subnet/config.go`` CheckNetworkConfig), one line naming the field on error."""
    k = family.key
    if f"{k}Network" not in raw:
        raise ConfigError(f"{k}Network: missing (e.g. \"{family.example_network}\")")
    network = _network_field(raw[f"{k}Network"], family)

    bits = family.bits
    subnet_len = _int_field(raw, f"{k}SubnetLen", "", 1, bits, None)
    if subnet_len is None:
        default = family.default_subnet_len
        subnet_len = default if network.prefixlen <= default - 2 else network.prefixlen + 2
    elif subnet_len > family.max_subnet_len:
        raise ConfigError(f"{k}SubnetLen: must be {family.max_subnet_len} or less "
                          "(room for a gateway and a pod)")
    elif subnet_len < network.prefixlen + 2:
        raise ConfigError(f"{k}SubnetLen: /{subnet_len} leaves fewer than four subnets in {network}")

    size = 1 << (bits - subnet_len)
    first = int(network.network_address) + size
    last = int(network.broadcast_address) + 1 - size
    mask = ((1 << bits) - 1) ^ (size - 1)
    bounds = {}
    for name, default in (("SubnetMin", first), ("SubnetMax", last)):
        key = f"{k}{name}"
        addr = _addr_field(raw, key, family)
        if addr is None or int(addr) == 0:  # 0.0.0.0 or ::, Go's zero value: the default
            bounds[name] = family.address_type(default)
            continue
        if addr not in network:
            raise ConfigError(f"{key}: {addr} is not inside {k}Network {network}")
        if int(addr) & mask != int(addr):
            raise ConfigError(f"{key}: {addr} is not on a /{subnet_len} boundary")
        bounds[name] = addr
    if bounds["SubnetMin"] > bounds["SubnetMax"]:
        raise ConfigError(f"{k}SubnetMin: {bounds['SubnetMin']} is above {k}SubnetMax "
                          f"{bounds['SubnetMax']}")
    return SubnetRange(network, subnet_len, bounds["SubnetMin"], bounds["SubnetMax"])


def _parse_backend(top: dict, notes: list[str]) -> BackendConfig:
    """Validate the ``Backend`` object of the config ``top``; fields accepted without effect
    are added to ``notes``. As in flannel, no ``Backend`` at all means UDP on the default
    port, while a ``Backend`` given without a ``Type`` (``{}``, ``null``) is refused, and
    the type ignores case (``"VXLAN"`` is vxlan)."""
    from .backend import registry  # lazily: the backend modules import this one

    if "Backend" not in top:
        return BackendConfig()
    raw = top["Backend"]
    if not isinstance(raw, dict):
        raise ConfigError("Backend: must be a JSON object")
    raw = _canonical(raw, registry.all_keys(), "Backend.")
    given = raw.get("Type")
    types = ", ".join(registry.names())
    if given is None or given == "":
        raise ConfigError(f"Backend.Type: missing (one of: {types}; without a Backend object the backend is "
                          f"{BackendConfig.type})")
    if not isinstance(given, str):
        raise ConfigError(f"Backend.Type: must be a string, got {_show(given)}")
    btype = given.lower()
    spec = registry.spec(btype)
    if spec is None and btype in registry.flannel_only():
        raise ConfigError(f"Backend.Type: {btype} is a flannel backend not supported by overlayd "
                          f"(use one of: {types})")
    if spec is None:
        raise ConfigError(f"Backend.Type: unknown backend {_show(given)} (expected one of: {types})")
    unknown = sorted(set(raw) - spec.keys, key=str)
    if unknown:
        raise ConfigError(f"Backend.{_clip(str(unknown[0]))}: not a setting of the {btype} backend")
    return spec.parse({**raw, "Type": btype}, notes)


def _parse_services(raw: dict, ipv4: SubnetRange | None, backend: BackendConfig) -> ServiceRange | None:
    """``ServiceNetwork`` and ``NodePortRange`` (None without a ServiceNetwork): an IPv4
    range apart from the Network, NodePorts that leave the backend's port alone."""
    if "ServiceNetwork" not in raw:
        if "NodePortRange" in raw:
            raise ConfigError("NodePortRange: given without a ServiceNetwork (add one, e.g. \"10.96.0.0/16\")")
        return None
    value = raw["ServiceNetwork"]
    if not isinstance(value, str) or not value.partition("/")[2].isdecimal():
        raise ConfigError(f"ServiceNetwork: not an IPv4 network string such as \"10.96.0.0/16\": {_show(value)}")
    try:
        network = ipaddress.IPv4Network(value)
    except ValueError as exc:
        _other_family("ServiceNetwork", value, IPV4, ipaddress.ip_network)
        raise ConfigError(f"ServiceNetwork: {exc}") from None
    if network.prefixlen < SERVICE_PREFIX_MIN:
        raise ConfigError(f"ServiceNetwork: /{network.prefixlen} is too large (at most "
                          f"/{SERVICE_PREFIX_MIN}, as Kubernetes)")
    if network.prefixlen > SERVICE_PREFIX_MAX:
        raise ConfigError(f"ServiceNetwork: /{network.prefixlen} is too small (at least /{SERVICE_PREFIX_MAX})")
    for special, what in SPECIAL_RANGES:
        if network.overlaps(special):
            raise ConfigError(f"ServiceNetwork: {network} overlaps {what}")
    if ipv4 is not None and network.overlaps(ipv4.network):
        raise ConfigError(f"ServiceNetwork: {network} overlaps Network {ipv4.network} (services need "
                          "addresses no pod has)")
    spec = raw.get("NodePortRange", "-".join(map(str, DEFAULT_NODE_PORTS)))
    lo, dash, hi = spec.partition("-") if isinstance(spec, str) else ("", "", "")
    if not (dash and lo.isdecimal() and hi.isdecimal()):
        raise ConfigError(f"NodePortRange: not a range such as \"30000-32767\": {_show(spec)}")
    lo, hi = int(lo), int(hi)
    if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
        raise ConfigError(f"NodePortRange: ports are 1-65535, got {spec}")
    if lo > hi:
        raise ConfigError(f"NodePortRange: {lo} is above {hi}")
    if backend.type in ("udp", "vxlan") and lo <= backend.port <= hi:
        raise ConfigError(f"NodePortRange: {lo}-{hi} holds Backend.Port {backend.port} (a NodePort "
                          "there would take the overlay's own traffic)")
    return ServiceRange(network, lo, hi)


def parse_config(data: str | bytes | dict) -> NetworkConfig:
    """Parse and validate flannel's network config JSON (``ipv4`` None for an IPv6-only network).

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
    notes: list[str] = []
    enable_ipv4 = _bool_field(raw, "EnableIPv4", "") is not False
    enable_ipv6 = _bool_field(raw, "EnableIPv6", "") is True
    if not enable_ipv4 and not enable_ipv6:
        raise ConfigError("EnableIPv4: false leaves no address family (set EnableIPv6 true "
                          "for an IPv6-only network)")
    ipv4 = None
    if enable_ipv4:
        ipv4 = _parse_range(raw, IPV4)
        if ipv4.subnet_count > MAX_SUBNETS:
            raise ConfigError(
                f"SubnetLen: /{ipv4.subnet_len} gives {ipv4.subnet_count} subnets between "
                f"SubnetMin and SubnetMax, more than the {MAX_SUBNETS} supported (use a "
                "shorter SubnetLen or narrow SubnetMin/SubnetMax)"
            )
    else:
        ignored = [key for key in ("Network", "SubnetLen", "SubnetMin", "SubnetMax") if key in raw]
        if ignored:
            notes.append(f"{', '.join(ignored)}: ignored with EnableIPv4 false (as flannel does)")
    ipv6 = _parse_range(raw, IPV6) if enable_ipv6 else None
    ignored = [key for key in _IPV6_KEYS if key in raw]
    if ignored and not enable_ipv6:
        notes.append(f"{', '.join(ignored)}: ignored without EnableIPv6 (as flannel does)")
    if _bool_field(raw, "EnableNFTables", "") is False:
        notes.append("EnableNFTables: false: overlayd always uses nftables, never iptables")
    backend = _parse_backend(raw, notes)
    services = _parse_services(raw, ipv4, backend)
    return NetworkConfig(ipv4=ipv4, backend=backend, ipv6=ipv6, services=services, notes=tuple(notes))
