"""The lease model and flannel's etcd codec.

Key layout (flannel's): ``<prefix>/config`` holds the network config and
``<prefix>/subnets/10.244.3.0-24`` one lease per node; a dual-stack lease is
``10.244.3.0-24&fd00:10:244:3::-64`` and an IPv6-only one
``0.0.0.0-0&fd00:10:244:3::-64`` (flannel's MakeSubnetKey with an empty IPv4
subnet). The value is flannel's lease JSON::

    {"PublicIP": "198.18.0.11", "PublicIPv6": "2001:db8::11", "BackendType": "vxlan",
     "BackendData": {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:ff"},
     "BackendV6Data": {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:fe"}}

``PublicIPv6`` and ``BackendV6Data`` are absent (or null, as flannel writes
them) on an IPv4 lease; an IPv6-only node's ``PublicIP`` is ``"0.0.0.0"``
(flannel's zero value), read as no IPv4 underlay address.

A lease is known by its :attr:`Lease.subnet`: the IPv4 subnet, or for an
IPv6-only lease the IPv6 one; :attr:`Lease.subnet6` is its IPv6 subnet, if any.

Decoding is strict about what peers will use: an address must be a string
(not a number) naming a unicast address, since a peer at 0.0.0.0,
255.255.255.255, a multicast or a loopback address would become a route or
an FDB entry that sends the overlay's traffic nowhere (or to ourselves). A
key must be spelled as flannel spells it (lower-case, compressed IPv6), so
that one subnet has one key.

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
_UNSPECIFIED = ipaddress.IPv4Address(0)
_NO_IPV4 = ipaddress.IPv4Network("0.0.0.0/0")  # the IPv4 half of an IPv6-only lease's key


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


def not_unicast6(ip: ipaddress.IPv6Address) -> str | None:
    """Why ``ip`` cannot be a node's IPv6 address (a short phrase), or None if it can."""
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_loopback:
        return "the loopback address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_link_local:
        return "a link-local address (it needs an interface to mean anything)"
    if ip.ipv4_mapped is not None:
        return "an IPv4-mapped address (use PublicIP)"
    return None


def _address(obj: dict, key: str, kind: type, optional: bool):
    """``obj[key]`` as an address of ``kind``; None when optional and absent or null."""
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a string")
    return kind(value)


def _data(obj: dict, key: str) -> dict | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, dict):
        raise TypeError(key)
    return value or None


@dataclasses.dataclass(frozen=True)
class LeaseAttrs:
    """What a node publishes about itself in its lease."""

    public_ip: ipaddress.IPv4Address | None  # None: an IPv6-only node ("0.0.0.0" in the JSON)
    backend_type: str
    backend_data: dict[str, Any] | None = None
    public_ip6: ipaddress.IPv6Address | None = None
    backend_v6_data: dict[str, Any] | None = None

    def encode(self) -> bytes:
        """Flannel's lease JSON (BackendData omitted when empty, as flannel does; the IPv6
        fields only when there is an IPv6 address)."""
        obj: dict[str, Any] = {"PublicIP": str(self.public_ip or _UNSPECIFIED),
                               "BackendType": self.backend_type}
        if self.backend_data:
            obj["BackendData"] = self.backend_data
        if self.public_ip6 is not None:
            obj["PublicIPv6"] = str(self.public_ip6)
        if self.backend_v6_data:
            obj["BackendV6Data"] = self.backend_v6_data
        return json.dumps(obj, sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> "LeaseAttrs":
        """Parse flannel's lease JSON; :class:`LeaseError` if it is not one or an address
        in it is not a unicast address of its family."""
        try:
            obj = json.loads(raw)
            public_ip = _address(obj, "PublicIP", ipaddress.IPv4Address, optional=False)
            public_ip6 = _address(obj, "PublicIPv6", ipaddress.IPv6Address, optional=True)
            backend_type = obj.get("BackendType") or "udp"
            if not isinstance(backend_type, str):
                raise TypeError("BackendType")
            data, data6 = _data(obj, "BackendData"), _data(obj, "BackendV6Data")
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise LeaseError(f"malformed lease value ({exc.__class__.__name__}: {exc})") from None
        if public_ip == _UNSPECIFIED and public_ip6 is not None:
            public_ip = None  # an IPv6-only node
        why = public_ip is not None and not_unicast(public_ip)
        if why:
            raise LeaseError(f"bad lease value: PublicIP {public_ip} is {why}")
        why = public_ip6 is not None and not_unicast6(public_ip6)
        if why:
            raise LeaseError(f"bad lease value: PublicIPv6 {public_ip6} is {why}")
        return cls(public_ip=public_ip, backend_type=backend_type, backend_data=data,
                   public_ip6=public_ip6, backend_v6_data=data6)


@dataclasses.dataclass(frozen=True)
class Lease:
    """A subnet leased by one node.

    ``expiration`` is a wall-clock time (seconds since the epoch) or None when
    the key has no TTL; ``handle`` is the store's own reference to the TTL
    (the etcd lease ID) and ``revision`` the key's last modification revision.
    """

    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network  # IPv6 only for an IPv6-only lease
    attrs: LeaseAttrs
    expiration: float | None = None
    handle: int = 0
    revision: int = 0
    subnet6: ipaddress.IPv6Network | None = None  # the IPv6 subnet of a dual-stack or IPv6-only lease

    def __post_init__(self):
        if self.subnet.version == 6 and self.subnet6 != self.subnet:
            raise ValueError("an IPv6-only lease is known by its IPv6 subnet: subnet6 must equal it")

    @property
    def public_ip(self) -> ipaddress.IPv4Address | None:
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


def subnet_key(prefix: str, subnet: ipaddress.IPv4Network | ipaddress.IPv6Network,
               subnet6: ipaddress.IPv6Network | None = None) -> str:
    """``<prefix>/subnets/10.244.3.0-24``, with ``&fd00:10:244:3::-64`` for a dual-stack
    lease; ``subnet`` IPv6 names an IPv6-only lease (``0.0.0.0-0&fd00:10:244:3::-64``)."""
    if subnet.version == 6:
        subnet, subnet6 = _NO_IPV4, subnet
    name = f"{subnet.network_address}-{subnet.prefixlen}"
    if subnet6 is not None:
        name += f"&{subnet6.network_address}-{subnet6.prefixlen}"
    return subnets_prefix(prefix) + name


def _part(text: str, kind: type, key: str):
    """One ``address-length`` half of a key, spelled as flannel spells it."""
    addr, sep, length = text.partition("-")
    if not sep or not length.isdigit() or length != str(int(length)):
        raise LeaseError(f"not a lease key: {key!r}")
    try:
        net = kind(f"{addr}/{length}")
    except ValueError:
        raise LeaseError(f"not a lease key: {key!r}") from None
    if str(net.network_address) != addr:
        raise LeaseError(f"not a lease key: {key!r} (not spelled as flannel spells {net})")
    return net


def parse_lease_key(prefix: str, key: str | bytes
                    ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ipaddress.IPv6Network | None]:
    """What a lease key names: ``(subnet, subnet6)`` as in :class:`Lease` (the IPv4 subnet,
    or the IPv6 one for an IPv6-only key; the IPv6 subnet or None). :class:`LeaseError`
    for anything else."""
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    head = subnets_prefix(prefix)
    if not key.startswith(head):
        raise LeaseError(f"not a lease key: {key!r}")
    four, amp, six = key[len(head):].partition("&")
    subnet = _part(four, ipaddress.IPv4Network, key)
    subnet6 = _part(six, ipaddress.IPv6Network, key) if amp else None
    if subnet == _NO_IPV4:
        if subnet6 is None:
            raise LeaseError(f"not a lease key: {key!r}")
        return subnet6, subnet6
    return subnet, subnet6
