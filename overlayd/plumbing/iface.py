"""Choosing the underlay interface and this node's public IP (flannel's rules), pure.

The daemon's flags as flanneld's (``main.go`` + ``pkg/ipmatch``), checked in this order:

1. each ``--iface`` in the order given: an IPv4 address means the interface
   holding it (and that address), anything else an interface name (and its
   first IPv4 address); the first one that resolves wins;
2. then each ``--iface-regex`` in order: first against every interface's
   IPv4 addresses (the first interface with a matching address, that
   address), then against interface names (the first matching name, its first
   IPv4 address); ``re.search`` like Go's ``MatchString``, so anchor it to match
   whole names;
3. then ``--iface-can-reach IP``: the interface and source address the
   kernel's route to IP uses (``ip route get IP``);
4. with none of those flags: the interface holding ``--public-ip`` if given,
   else the one of the main table's default route.

When flags were given and nothing matched, that is an error naming every
candidate tried (flannel too refuses to fall back to the default route).
The public IP published in the lease is ``--public-ip`` if given (a node
behind NAT: peers send to it, the router forwards), else the interface
address; the interface address stays the local end of the tunnel.

Deliberate differences from flanneld: a regex's name match skips interfaces
without an IPv4 address (flanneld takes the first name that matches and then
fails on it), and a malformed regex is refused when the flags are parsed
rather than logged and skipped at startup.

The kernel is read once by :meth:`overlayd.plumbing.netlink.Netlink.underlay`
into :class:`Interface` records; :func:`choose` decides.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

from ..errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Interface:
    """A network interface as selection sees it (in ifindex order)."""

    name: str
    addresses: tuple[ipaddress.IPv4Address, ...]
    mtu: int


@dataclasses.dataclass(frozen=True)
class Choice:
    """The underlay picked: the interface, its address (the tunnel's local end) and the public IP."""

    iface: str
    address: ipaddress.IPv4Address
    public_ip: ipaddress.IPv4Address
    mtu: int


@dataclasses.dataclass(frozen=True)
class Route:
    """Where the kernel sends packets for one destination: the output interface, source address
    and gateway (None: the destination is on the interface's own segment)."""

    iface: str
    source: ipaddress.IPv4Address | None = None
    gateway: ipaddress.IPv4Address | None = None


def parse_ip(value: str) -> ipaddress.IPv4Address | None:
    """``value`` as an IPv4 address, or None when it is not one (then it names an interface)."""
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        return None


def _by_address(interfaces: list[Interface], ip: ipaddress.IPv4Address) -> tuple[Interface, ipaddress.IPv4Address] | None:
    for each in interfaces:
        if ip in each.addresses:
            return each, ip
    return None


def _by_name(interfaces: list[Interface], name: str) -> tuple[Interface, ipaddress.IPv4Address] | None:
    for each in interfaces:
        if each.name == name and each.addresses:
            return each, each.addresses[0]
    return None


def _by_regex(interfaces: list[Interface], pattern: str) -> tuple[Interface, ipaddress.IPv4Address] | None:
    regex = re.compile(pattern)
    for each in interfaces:
        for address in each.addresses:
            if regex.search(str(address)):
                return each, address
    for each in interfaces:
        if each.addresses and regex.search(each.name):
            return each, each.addresses[0]
    return None


def _by_route(interfaces: list[Interface], route: Route | None) -> tuple[Interface, ipaddress.IPv4Address] | None:
    if route is None:
        return None
    found = _by_name(interfaces, route.iface)
    if found is not None and route.source in found[0].addresses:
        return found[0], route.source
    return found


def _listing(interfaces: list[Interface]) -> str:
    return ", ".join(f"{i.name}:[{' '.join(map(str, i.addresses))}]" for i in interfaces) or "none"


def choose(interfaces: list[Interface], *, ifaces: tuple[str, ...] = (), regexes: tuple[str, ...] = (),
           can_reach: str | None = None, reach_route: Route | None = None,
           default_route: Route | None = None, public_ip: str | None = None) -> Choice:
    """The underlay for these flags (see the module's rules); :class:`ConfigError` in one line.

    ``reach_route`` is the kernel's route to ``can_reach`` (None: unreachable),
    ``default_route`` the default route's (None: there is none).
    """
    public = None
    if public_ip is not None:
        public = parse_ip(public_ip)
        if public is None:
            raise ConfigError(f"--public-ip: not an IPv4 address: {public_ip!r}")
    if ifaces or regexes or can_reach:
        found = None
        for value in ifaces:
            ip = parse_ip(value)
            found = _by_address(interfaces, ip) if ip else _by_name(interfaces, value)
            if found:
                break
        for pattern in regexes if found is None else ():
            found = _by_regex(interfaces, pattern)
            if found:
                break
        if found is None and can_reach:
            found = _by_route(interfaces, reach_route)
        if found is None:
            tried = [f"--iface {v}" for v in ifaces] + [f"--iface-regex {r}" for r in regexes]
            tried += [f"--iface-can-reach {can_reach}"] if can_reach else []
            raise ConfigError(f"no interface with an IPv4 address matches {', '.join(tried)} "
                              f"(interfaces: {_listing(interfaces)})")
    elif public is not None:
        found = _by_address(interfaces, public)
        if found is None:
            raise ConfigError(f"--public-ip: no interface holds {public}; pass --iface (behind NAT: "
                              f"the interface peers' packets arrive on)")
    else:
        if default_route is None:
            raise ConfigError("no default route to pick the underlay interface from; pass --iface")
        found = _by_route(interfaces, default_route)
        if found is None:
            raise ConfigError(f"the default route's interface {default_route.iface} has no IPv4 address; "
                              f"pass --iface")
    iface, address = found
    return Choice(iface.name, address, public or address, iface.mtu)
