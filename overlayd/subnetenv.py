"""flannel's ``subnet.env`` file: written atomically, read back on restart.

::

    FLANNEL_NETWORK=10.244.0.0/16
    FLANNEL_SUBNET=10.244.3.1/24
    FLANNEL_IPV6_NETWORK=fd00:10:244::/56
    FLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64
    FLANNEL_MTU=1472
    FLANNEL_IPMASQ=false

as flannel's WriteSubnetFile writes it: the IPv6 lines only with EnableIPv6, the
IPv4 ones only without ``EnableIPv4: false``, each subnet as its first address.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from .atomicfile import write_atomic
from .errors import ConfigError


@dataclasses.dataclass(frozen=True)
class SubnetEnv:
    """The contents of subnet.env (the IPv4 pair None on an IPv6-only node, the IPv6 pair
    None without IPv6)."""

    network: ipaddress.IPv4Network | None
    subnet: ipaddress.IPv4Network | None  # the node's leased subnet
    mtu: int
    ipmasq: bool
    network6: ipaddress.IPv6Network | None = None
    subnet6: ipaddress.IPv6Network | None = None

    def __post_init__(self):
        if (self.network is None) != (self.subnet is None) or (self.network6 is None) != (self.subnet6 is None):
            raise ValueError("a family's network and subnet go together")
        if self.network is None and self.network6 is None:
            raise ValueError("subnet.env needs an IPv4 or an IPv6 subnet")

    def render(self) -> str:
        lines = []
        for name, network, subnet in (("", self.network, self.subnet), ("IPV6_", self.network6, self.subnet6)):
            if network is not None:
                lines += [f"FLANNEL_{name}NETWORK={network}",
                          f"FLANNEL_{name}SUBNET={subnet.network_address + 1}/{subnet.prefixlen}"]
        lines += [f"FLANNEL_MTU={self.mtu}", f"FLANNEL_IPMASQ={'true' if self.ipmasq else 'false'}"]
        return "\n".join(lines) + "\n"


def _pair(values: dict[str, str], name: str, network_type, interface_type):
    """A family's (network, subnet) from the file, or (None, None) when it has neither line."""
    net, sub = values.get(f"FLANNEL_{name}NETWORK"), values.get(f"FLANNEL_{name}SUBNET")
    if net is None and sub is None:
        return None, None
    if net is None or sub is None:
        raise ConfigError(f"subnet.env: FLANNEL_{name}{'NETWORK' if net is None else 'SUBNET'} is missing")
    return network_type(net), interface_type(sub).network


def parse(text: str) -> SubnetEnv:
    """Parse subnet.env text; :class:`ConfigError` naming the bad line."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"subnet.env: not KEY=VALUE: {line!r}")
        values[key.strip()] = value.strip()
    try:
        network, subnet = _pair(values, "", ipaddress.IPv4Network, ipaddress.IPv4Interface)
        network6, subnet6 = _pair(values, "IPV6_", ipaddress.IPv6Network, ipaddress.IPv6Interface)
        if network is None and network6 is None:
            raise KeyError("FLANNEL_NETWORK")
        mtu = int(values["FLANNEL_MTU"])
    except KeyError as exc:
        raise ConfigError(f"subnet.env: {exc.args[0]} is missing") from None
    except ValueError as exc:
        raise ConfigError(f"subnet.env: {exc}") from None
    ipmasq = values.get("FLANNEL_IPMASQ", "false").lower() == "true"
    return SubnetEnv(network, subnet, mtu, ipmasq, network6, subnet6)


def read(path: str) -> SubnetEnv | None:
    """The file's contents, or None when it does not exist or cannot be parsed."""
    try:
        with open(path, encoding="utf-8") as f:
            return parse(f.read())
    except (OSError, ConfigError):
        return None


def write(path: str, env: SubnetEnv) -> None:
    """Write ``env`` to ``path`` atomically."""
    write_atomic(path, env.render())
