"""The lease model and flannel's etcd codec.

Key layout (flannel's): ``<prefix>/config`` holds the network config and
``<prefix>/subnets/10.244.3.0-24`` one lease per node. The value is flannel's
lease JSON::

    {"PublicIP": "198.18.0.11", "BackendType": "vxlan",
     "BackendData": {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:ff"}}

Decoding is strict about what peers will use: PublicIP must be a dotted
string (not a number) naming a unicast address, since a peer at 0.0.0.0,
255.255.255.255, a multicast or a loopback address would become a route or
an FDB entry that sends the overlay's traffic nowhere (or to ourselves).

Pure code: no I/O.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from typing import Any

from ..errors import LeaseError

DEFAULT_PREFIX = "/coreos.com/network"

_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")


def not_unicast(ip: ipaddress.IPv4Address) -> str | None:
    """Why ``ip`` cannot be a node's address (a short phrase), or None if it can."""
    if ip in _THIS_NETWORK:
        return "an unspecified ('this network') address"
    if ip == ipaddress.IPv4Address("255.255.255.255"):
        return "the broadcast address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_reserved:
        return "a reserved (240.0.0.0/4) address"
    return None


@dataclasses.dataclass(frozen=True)
class LeaseAttrs:
    """What a node publishes about itself in its lease."""

    public_ip: ipaddress.IPv4Address
    backend_type: str
    backend_data: dict[str, Any] | None = None

    def encode(self) -> bytes:
        """Flannel's lease JSON (BackendData omitted when empty, as flannel does)."""
        obj: dict[str, Any] = {"PublicIP": str(self.public_ip), "BackendType": self.backend_type}
        if self.backend_data:
            obj["BackendData"] = self.backend_data
        return json.dumps(obj, sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> "LeaseAttrs":
        """Parse flannel's lease JSON; :class:`LeaseError` if it is not one
        or its PublicIP is not a unicast address."""
        try:
            obj = json.loads(raw)
            if not isinstance(obj["PublicIP"], str):
                raise TypeError("PublicIP must be a string")
            public_ip = ipaddress.IPv4Address(obj["PublicIP"])
            backend_type = obj.get("BackendType") or "udp"
            if not isinstance(backend_type, str):
                raise TypeError("BackendType")
            data = obj.get("BackendData")
            if data is not None and not isinstance(data, dict):
                raise TypeError("BackendData")
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise LeaseError(f"malformed lease value ({exc.__class__.__name__}: {exc})") from None
        why = not_unicast(public_ip)
        if why:
            raise LeaseError(f"bad lease value: PublicIP {public_ip} is {why}")
        return cls(public_ip=public_ip, backend_type=backend_type, backend_data=data or None)


@dataclasses.dataclass(frozen=True)
class Lease:
    """A subnet leased by one node.

    ``expiration`` is a wall-clock time (seconds since the epoch) or None when
    the key has no TTL; ``handle`` is the store's own reference to the TTL
    (the etcd lease ID) and ``revision`` the key's last modification revision.
    """

    subnet: ipaddress.IPv4Network
    attrs: LeaseAttrs
    expiration: float | None = None
    handle: int = 0
    revision: int = 0

    @property
    def public_ip(self) -> ipaddress.IPv4Address:
        return self.attrs.public_ip

    def time_left(self, now: float) -> float | None:
        """Seconds until the lease expires, or None without a TTL."""
        if self.expiration is None:
            return None
        return max(0.0, self.expiration - now)


def config_key(prefix: str) -> str:
    """The etcd key of the network config."""
    return f"{prefix.rstrip('/')}/config"


def subnets_prefix(prefix: str) -> str:
    """The etcd key prefix under which leases live (ends with a slash)."""
    return f"{prefix.rstrip('/')}/subnets/"


def subnet_key(prefix: str, subnet: ipaddress.IPv4Network) -> str:
    """``<prefix>/subnets/10.244.3.0-24``."""
    return f"{subnets_prefix(prefix)}{subnet.network_address}-{subnet.prefixlen}"


def parse_subnet_key(prefix: str, key: str | bytes) -> ipaddress.IPv4Network:
    """The subnet a lease key names; :class:`LeaseError` for anything else."""
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    head = subnets_prefix(prefix)
    if not key.startswith(head):
        raise LeaseError(f"not a lease key: {key!r}")
    name = key[len(head):]
    addr, sep, length = name.partition("-")
    if not sep or not length.isdigit():
        raise LeaseError(f"not a lease key: {key!r}")
    try:
        return ipaddress.IPv4Network(f"{addr}/{int(length)}")
    except ValueError:
        raise LeaseError(f"not a lease key: {key!r}") from None
