"""Choosing the underlay interface and this node's public IPs (flannel's rules), pure.

The daemon's flags as flanneld's (``main.go`` + ``pkg/ipmatch``), checked in this order, for the
address families the network config needs (``families``: 4, 6 or both, from EnableIPv4 and
EnableIPv6; the interface must hold an address of each):

1. each ``--iface`` in the order given: an address (IPv4 or IPv6, of a family
   the config needs) means the interface holding it, with that address;
   anything else an interface name; the first one that resolves wins;
2. then each ``--iface-regex`` in order: first against every interface's
   addresses (the first interface with, for each family needed, an address
   matching; those addresses), then against interface names (the first
   matching name); ``re.search`` like Go's ``MatchString``, so anchor it to
   match whole names;
3. then ``--iface-can-reach IP`` (either family): the interface and source
   address the kernel's route to IP uses (``ip route get IP``);
4. with none of those flags: the interface holding ``--public-ip`` if given
   (and IPv4 is needed), else the one holding ``--public-ipv6`` if given (and
   IPv6 is needed), else the one of the main table's default route: on a
   dual-stack node the IPv4 and the IPv6 default routes must leave by the same
   interface (flannel's rule too).

The interface's address of a family not fixed by the flag that chose it is
its first one of that family (:func:`usable_ipv6` orders and filters IPv6
ones as flannel does). When flags were given and nothing matched, that is an
error naming every candidate tried (flannel too refuses to fall back to the
default route); an interface without an address of a family the config needs
is no match, and with no flags that is an error naming the family ("a node
without one", as flannel's "failed to find IPv6 address for interface").
The public IPs published in the lease are ``--public-ip`` / ``--public-ipv6``
if given (a node behind NAT: peers send to them, the router forwards), else
the interface addresses; the interface addresses stay the local ends of the
tunnels. A family the config does not need has neither.

Deliberate differences from flanneld: a regex's name match skips interfaces
without the addresses needed (flanneld takes the first name that matches and
then fails on it); a malformed regex is refused when the flags are parsed
rather than logged and skipped at startup; IPv6 link-local addresses are never
chosen (flannel ranks them last but may take one: without a scope they are no
tunnel endpoint between nodes); on a dual-stack node ``--iface IPv6-ADDRESS``
works (flanneld leaves the interface unset there) and ``--public-ipv6`` need
not be on the interface ``--iface IPv4-ADDRESS`` chose (flanneld requires it;
here, as for IPv4, it may be a NAT address).

The kernel is read once by :meth:`overlayd.plumbing.netlink.Netlink.underlay`
into :class:`Interface` records; :func:`choose` decides.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Iterable

from ..errors import ConfigError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# ifa_flags (linux/if_addr.h) that rank or rule out an IPv6 address
IFA_F_TEMPORARY = 0x01
IFA_F_DADFAILED = 0x08
IFA_F_DEPRECATED = 0x20
IFA_F_PERMANENT = 0x80

_FAMILY_WORDS = {frozenset({4}): "an IPv4 address", frozenset({6}): "an IPv6 address",
                 frozenset({4, 6}): "IPv4 and IPv6 addresses"}


@dataclasses.dataclass(frozen=True)
class Interface:
    """A network interface as selection sees it (in ifindex order): its IPv4 addresses, and its
    usable IPv6 addresses in order of preference (:func:`usable_ipv6`)."""

    name: str
    addresses: tuple[ipaddress.IPv4Address, ...]
    mtu: int
    addresses6: tuple[ipaddress.IPv6Address, ...] = ()

    def of(self, version: int) -> tuple:
        """The addresses of IP ``version``."""
        return self.addresses if version == 4 else self.addresses6


@dataclasses.dataclass(frozen=True)
class Choice:
    """The underlay picked: the interface, its addresses (the tunnels' local ends) and the public
    IPs, for each family the config needs (None for the other), and the interface's MTU."""

    iface: str
    address: ipaddress.IPv4Address | None
    public_ip: ipaddress.IPv4Address | None
    mtu: int
    address6: ipaddress.IPv6Address | None = None
    public_ip6: ipaddress.IPv6Address | None = None


@dataclasses.dataclass(frozen=True)
class Route:
    """Where the kernel sends packets for one destination: the output interface, source address
    and gateway (None: the destination is on the interface's own segment), of either family."""

    iface: str
    source: Address | None = None
    gateway: Address | None = None


def families(config) -> tuple[int, ...]:
    """The IP versions a :class:`~overlayd.netconf.NetworkConfig` needs on the underlay: 4 with its
    IPv4 pool (EnableIPv4, the default), 6 with its IPv6 pool (EnableIPv6)."""
    return tuple(version for version, pool in ((4, config.ipv4), (6, config.ipv6)) if pool is not None)


def parse_ip(value: str, version: int = 4) -> Address | None:
    """``value`` as an address of IP ``version`` (4, 6, or 0 for either), or None when it is not one
    (then it names an interface)."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    return address if version in (0, address.version) else None


def usable_ipv6(entries: Iterable[tuple[ipaddress.IPv6Address, int]]) -> tuple[ipaddress.IPv6Address, ...]:
    """The IPv6 addresses (with their ``ifa_flags``) an underlay may use, best first, as flannel's
    ``GetInterfaceIP6Addrs`` ranks them: unicast beyond the link (global or ULA; never link-local,
    loopback or multicast), not deprecated nor failed DAD; permanent (configured) before
    autoconfigured, then non-temporary before temporary (privacy) addresses."""
    kept = [(address, flags) for address, flags in entries
            if not (address.is_link_local or address.is_loopback or address.is_multicast
                    or address.is_unspecified or flags & (IFA_F_DEPRECATED | IFA_F_DADFAILED))]
    kept.sort(key=lambda entry: (not entry[1] & IFA_F_PERMANENT, bool(entry[1] & IFA_F_TEMPORARY)))
    return tuple(address for address, _ in kept)


Found = tuple[Interface, dict[int, Address]]


def _complete(each: Interface, pinned: dict[int, Address], families: frozenset[int]) -> Found | None:
    """``each`` with an address per family needed: the pinned one, else its first; None if it lacks one."""
    chosen = {}
    for version in sorted(families):
        address = pinned.get(version) or next(iter(each.of(version)), None)
        if address is None:
            return None
        chosen[version] = address
    return each, chosen


def _by_address(interfaces: list[Interface], ip: Address, families: frozenset[int]) -> Found | None:
    if ip.version not in families:
        return None
    for each in interfaces:
        if ip in each.of(ip.version):
            return _complete(each, {ip.version: ip}, families)
    return None


def _by_name(interfaces: list[Interface], name: str, families: frozenset[int]) -> Found | None:
    for each in interfaces:
        if each.name == name:
            return _complete(each, {}, families)
    return None


def _by_regex(interfaces: list[Interface], pattern: str, families: frozenset[int]) -> Found | None:
    regex = re.compile(pattern)
    for each in interfaces:
        matched = {version: next((a for a in each.of(version) if regex.search(str(a))), None)
                   for version in families}
        if all(matched.values()):
            return each, dict(sorted(matched.items()))
    for each in interfaces:
        found = _complete(each, {}, families) if regex.search(each.name) else None
        if found:
            return found
    return None


def _by_route(interfaces: list[Interface], route: Route | None, families: frozenset[int]) -> Found | None:
    if route is None:
        return None
    source = route.source
    pinned = {source.version: source} if source is not None else {}
    for each in interfaces:
        if each.name == route.iface:
            return _complete(each, {v: a for v, a in pinned.items() if a in each.of(v)}, families)
    return None


def _listing(interfaces: list[Interface], families: frozenset[int]) -> str:
    return ", ".join(f"{i.name}:[{' '.join(str(a) for v in sorted(families) for a in i.of(v))}]"
                     for i in interfaces) or "none"


def _by_flags(interfaces, families, ifaces, regexes, can_reach, reach_route) -> Found:
    found = None
    for value in ifaces:
        ip = parse_ip(value, 0)
        found = _by_address(interfaces, ip, families) if ip else _by_name(interfaces, value, families)
        if found:
            return found
    for pattern in regexes:
        found = _by_regex(interfaces, pattern, families)
        if found:
            return found
    if can_reach:
        found = _by_route(interfaces, reach_route, families)
        if found:
            return found
    tried = [f"--iface {v}" for v in ifaces] + [f"--iface-regex {r}" for r in regexes]
    tried += [f"--iface-can-reach {can_reach}"] if can_reach else []
    raise ConfigError(f"no interface with {_FAMILY_WORDS[families]} matches {', '.join(tried)} "
                      f"(interfaces: {_listing(interfaces, families)})")


def _by_default_routes(interfaces, families, routes: dict[int, Route | None]) -> Found:
    for version in sorted(families):
        if routes[version] is None:
            family = "" if families == {4} else f"IPv{version} "
            raise ConfigError(f"no {family}default route to pick the underlay interface from; pass --iface")
    if len({routes[v].iface for v in families}) > 1:
        raise ConfigError(f"the IPv6 default route's interface {routes[6].iface} is not the IPv4 default "
                          f"route's {routes[4].iface}; pass --iface")
    name = routes[min(families)].iface
    each = next((i for i in interfaces if i.name == name), None)
    if each is None:
        raise ConfigError(f"the default route's interface {name} is not listed; pass --iface")
    sources = {v: routes[v].source for v in families if routes[v].source in each.of(v)}
    found = _complete(each, sources, families)
    if found is None:
        raise ConfigError(f"the default route's interface {name} has no {_missing(each, families)} address; "
                          f"pass --iface")
    return found


def _missing(each: Interface, families: frozenset[int]) -> str:
    return " or ".join(f"IPv{v}" for v in sorted(families) if not each.of(v))


def _by_public(interfaces, families, ip: Address, flag: str) -> Found:
    for each in interfaces:
        if ip in each.of(ip.version):
            found = _complete(each, {ip.version: ip}, families)
            if found is None:
                raise ConfigError(f"{flag}: its interface {each.name} has no {_missing(each, families)} "
                                  f"address; pass --iface")
            return found
    raise ConfigError(f"{flag}: no interface holds {ip}; pass --iface (behind NAT: the interface "
                      f"peers' packets arrive on)")


def _public(value: str | None, version: int, flag: str) -> Address | None:
    if value is None:
        return None
    ip = parse_ip(value, version)
    if ip is None:
        raise ConfigError(f"{flag}: not an IPv{version} address: {value!r}")
    if version == 6 and not usable_ipv6([(ip, IFA_F_PERMANENT)]):
        raise ConfigError(f"{flag}: {ip} is not a global or unique-local unicast address (peers could not "
                          f"reach it)")
    return ip


def choose(interfaces: list[Interface], *, ifaces: tuple[str, ...] = (), regexes: tuple[str, ...] = (),
           can_reach: str | None = None, reach_route: Route | None = None,
           default_route: Route | None = None, public_ip: str | None = None,
           public_ip6: str | None = None, default_route6: Route | None = None,
           families: Iterable[int] = (4,)) -> Choice:
    """The underlay for these flags (see the module's rules); :class:`ConfigError` in one line.

    ``families`` are the IP versions the network config needs (4, 6 or both);
    ``reach_route`` is the kernel's route to ``can_reach`` (None: unreachable),
    ``default_route`` / ``default_route6`` the IPv4 / IPv6 default route's (None: there is none).
    """
    families = frozenset(families)
    if not families or not families <= {4, 6}:
        raise ConfigError(f"the underlay needs IPv4, IPv6 or both, not {sorted(families)}")
    public = _public(public_ip, 4, "--public-ip") if 4 in families else None  # else unused, as flannel's
    public6 = _public(public_ip6, 6, "--public-ipv6") if 6 in families else None
    if ifaces or regexes or can_reach:
        iface, chosen = _by_flags(interfaces, families, ifaces, regexes, can_reach, reach_route)
    elif public is not None:
        iface, chosen = _by_public(interfaces, families, public, "--public-ip")
    elif public6 is not None:
        iface, chosen = _by_public(interfaces, families, public6, "--public-ipv6")
    else:
        iface, chosen = _by_default_routes(interfaces, families, {4: default_route, 6: default_route6})
    address, address6 = chosen.get(4), chosen.get(6)
    return Choice(iface.name, address, public or address, iface.mtu, address6, public6 or address6)
