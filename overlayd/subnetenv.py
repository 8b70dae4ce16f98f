"""flannel's ``subnet.env`` file: written atomically, read back on restart.

::

    FLANNEL_NETWORK=10.244.0.0/16
    FLANNEL_SUBNET=10.244.3.1/24
    FLANNEL_MTU=1472
    FLANNEL_IPMASQ=false
"""

from __future__ import annotations

import dataclasses
import ipaddress

from .atomicfile import write_atomic
from .errors import ConfigError


@dataclasses.dataclass(frozen=True)
class SubnetEnv:
    """The contents of subnet.env."""

    network: ipaddress.IPv4Network
    subnet: ipaddress.IPv4Network  # the node's leased subnet
    mtu: int
    ipmasq: bool

    def render(self) -> str:
        gateway = self.subnet.network_address + 1
        return (
            f"FLANNEL_NETWORK={self.network}\n"
            f"FLANNEL_SUBNET={gateway}/{self.subnet.prefixlen}\n"
            f"FLANNEL_MTU={self.mtu}\n"
            f"FLANNEL_IPMASQ={'true' if self.ipmasq else 'false'}\n"
        )


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
        network = ipaddress.IPv4Network(values["FLANNEL_NETWORK"])
        subnet = ipaddress.IPv4Interface(values["FLANNEL_SUBNET"]).network
        mtu = int(values["FLANNEL_MTU"])
    except KeyError as exc:
        raise ConfigError(f"subnet.env: {exc.args[0]} is missing") from None
    except ValueError as exc:
        raise ConfigError(f"subnet.env: {exc}") from None
    ipmasq = values.get("FLANNEL_IPMASQ", "false").lower() == "true"
    return SubnetEnv(network, subnet, mtu, ipmasq)


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
