"""The cluster network config: flannel's JSON, parsed and validated.

Stored in etcd at ``<prefix>/config``, for example::

    {"Network": "10.244.0.0/16", "SubnetLen": 24,
     "Backend": {"Type": "udp", "Port": 8472}}

Defaults follow flannel's ``pkg/subnet/config.go``: SubnetLen is 24 when the
Network is a /22 or shorter, otherwise Network prefix + 2 (so that at least
four subnets fit); SubnetMin is the network plus one subnet (the first subnet
is never handed out); SubnetMax is the last subnet. Unlike flannel we reject
unknown keys and host bits in ``Network`` instead of silently ignoring them,
and every error names the field it is about.

Pure code: no I/O.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from typing import Any

from .errors import ConfigError

BACKEND_TYPES = ("udp", "vxlan", "host-gw")
DEFAULT_PORT = 8472
DEFAULT_VNI = 1
MAX_VNI = (1 << 24) - 1

# Encapsulation overhead per backend, subtracted from the underlay MTU:
# udp = outer IPv4 (20) + UDP (8); vxlan = 20 + 8 + VXLAN (8) + inner Ethernet (14).
OVERHEAD = {"udp": 28, "vxlan": 50, "host-gw": 0}

_TOP_KEYS = {"Network", "SubnetLen", "SubnetMin", "SubnetMax", "Backend"}
_BACKEND_KEYS = {
    "udp": {"Type", "Port", "MTU"},
    "vxlan": {"Type", "Port", "VNI", "MTU"},
    "host-gw": {"Type"},
}


@dataclasses.dataclass(frozen=True)
class BackendConfig:
    """The ``Backend`` object: which encapsulation and its parameters."""

    type: str = "udp"
    port: int = DEFAULT_PORT
    vni: int = DEFAULT_VNI
    mtu: int | None = None  # overlay MTU override; None: underlay MTU - overhead

    def overlay_mtu(self, underlay_mtu: int) -> int:
        """The MTU pods and the overlay device get, per flannel's rules."""
        if self.mtu is not None:
            return self.mtu
        return underlay_mtu - OVERHEAD[self.type]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Type": self.type}
        if self.type in ("udp", "vxlan"):
            out["Port"] = self.port
        if self.type == "vxlan":
            out["VNI"] = self.vni
        if self.mtu is not None:
            out["MTU"] = self.mtu
        return out


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """A validated cluster network config, with flannel's defaults filled in."""

    network: ipaddress.IPv4Network
    subnet_len: int
    subnet_min: ipaddress.IPv4Address
    subnet_max: ipaddress.IPv4Address
    backend: BackendConfig

    def subnets(self) -> list[ipaddress.IPv4Network]:
        """Every subnet that may be leased, from SubnetMin to SubnetMax."""
        size = 1 << (32 - self.subnet_len)
        first, last = int(self.subnet_min), int(self.subnet_max)
        return [
            ipaddress.IPv4Network((addr, self.subnet_len))
            for addr in range(first, last + 1, size)
        ]

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


def _int_field(obj: dict, key: str, where: str, lo: int, hi: int, default: int | None):
    if key not in obj:
        return default
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}{key}: must be an integer, got {json.dumps(value)}")
    if not lo <= value <= hi:
        raise ConfigError(f"{where}{key}: must be between {lo} and {hi}, got {value}")
    return value


def _addr_field(obj: dict, key: str) -> ipaddress.IPv4Address | None:
    if key not in obj:
        return None
    value = obj[key]
    try:
        return ipaddress.IPv4Address(value)
    except (ValueError, TypeError):
        raise ConfigError(f"{key}: not an IPv4 address: {json.dumps(value)}") from None


def parse_backend(raw: Any) -> BackendConfig:
    """Validate the ``Backend`` object (absent means UDP on the default port)."""
    if raw is None:
        return BackendConfig()
    if not isinstance(raw, dict):
        raise ConfigError("Backend: must be a JSON object")
    btype = raw.get("Type", "udp")
    if btype not in BACKEND_TYPES:
        raise ConfigError(
            f"Backend.Type: unknown backend {json.dumps(btype)} "
            f"(expected one of: {', '.join(BACKEND_TYPES)})"
        )
    unknown = sorted(set(raw) - _BACKEND_KEYS[btype])
    if unknown:
        raise ConfigError(f"Backend.{unknown[0]}: not a setting of the {btype} backend")
    port = _int_field(raw, "Port", "Backend.", 1, 65535, DEFAULT_PORT)
    vni = _int_field(raw, "VNI", "Backend.", 0, MAX_VNI, DEFAULT_VNI)
    mtu = _int_field(raw, "MTU", "Backend.", 576, 65535, None)
    return BackendConfig(type=btype, port=port, vni=vni, mtu=mtu)


def parse_config(data: str | bytes | dict) -> NetworkConfig:
    """Parse and validate flannel's network config JSON.

    Raises :class:`ConfigError` with one line naming the offending field.
    """
    if isinstance(data, (str, bytes)):
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config is not valid JSON: {exc}") from None
    else:
        raw = data
    if not isinstance(raw, dict):
        raise ConfigError("config must be a JSON object")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown field")

    if "Network" not in raw:
        raise ConfigError("Network: missing (e.g. \"10.244.0.0/16\")")
    try:
        network = ipaddress.IPv4Network(raw["Network"])
    except ValueError as exc:
        raise ConfigError(f"Network: {exc}") from None
    except TypeError:
        raise ConfigError(f"Network: not an IPv4 network: {json.dumps(raw['Network'])}") from None
    if network.prefixlen > 28:
        raise ConfigError(f"Network: /{network.prefixlen} is too small; the minimum useful prefix is /28")

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
        if addr is None:
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

    return NetworkConfig(
        network=network,
        subnet_len=subnet_len,
        subnet_min=bounds["SubnetMin"],
        subnet_max=bounds["SubnetMax"],
        backend=parse_backend(raw.get("Backend")),
    )
