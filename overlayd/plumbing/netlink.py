"""Links, addresses, routes, neighbours and FDB entries through pyroute2's asyncio API.

Facts measured here that shape this module: ``replace`` is the idempotent
verb for routes and neighbours; an FDB ``replace`` needs
``state=permanent|noarp`` and ``flags=self``; a VXLAN device is created with
its UDP checksum on unless told otherwise, so we always pass it. pyroute2's
``netns=`` forks a helper, so nothing here takes a namespace: the daemon runs
inside the namespace it configures (``ip netns exec`` in the lab).

Every ``ensure_*`` reads before it writes and writes only what differs, so
the daemon can run them again every few seconds to repair drift (an operator
deleting a route) without reprogramming what is right. What a session
changed is kept in :attr:`Netlink.changes`, one phrase per change, worded to
follow "repaired: " in the daemon's log. A single FDB entry cannot be read
back on its own (``RTM_GETNEIGH`` on a VXLAN device answers EINVAL here), so
``ensure_fdb`` reads the device's FDB dump.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import json
import socket

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import PlumbingError
from .iface import Choice, Interface, Route, choose, usable_ipv6
from .peerwrites import Writes, failed_lines

NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
RTNH_F_ONLINK = 4
IFF_UP = 0x1
IFF_NOARP = 0x80
ARPHRD_ETHER = 1
IFA_F_NODAD = 0x02
RTPROT_KERNEL = 2  # a route the kernel made for an address of the device
FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
#: the metric the kernel gives a route added without one (IPv6: IP6_RT_PRIO_USER), the one "replace" writes
USER_METRIC = {4: 0, 6: 1024}


@dataclasses.dataclass
class DeviceState:
    """The per-peer kernel state on one device, read once (three dumps) and checked in memory.

    At 1000 peers, checking each peer's route, neighbour and FDB entry with a
    dump of its own parsed ~3 million netlink messages per pass; with a
    snapshot a pass parses each entry once. The ``ensure_*`` methods take it
    as ``state=`` and keep it up to date as they write.
    """

    index: int
    routes: dict  # USER_METRIC main-table routes through the device, both families:
    #               dst network -> (gateway str | None, onlink)
    neighbours: dict  # permanent neighbours, both families: ip str -> lladdr
    fdb: set  # permanent FDB entries: (lladdr, dst ip str)


@dataclasses.dataclass(frozen=True)
class DeviceDump:
    """What :meth:`Netlink.device_state` reads, as iproute2 printed it (JSON), not parsed yet.

    Two dumps are equal when the kernel listed the same state: a drift repair that found
    nothing to do can skip parsing the next time the dumps are the same (at 5000 peers the
    parse was ~70 ms of every pass).
    """

    index: int
    routes: tuple[bytes, bytes]  # ip -j -4 / -6 route show table main dev DEV
    neighbours: tuple[bytes, bytes] = (b"[]", b"[]")  # ip -j -4 / -6 neigh show dev DEV nud permanent
    fdb: bytes = b"[]"  # bridge -j fdb show dev DEV

    def state(self) -> DeviceState:
        """The snapshot these dumps show. Pure."""
        routes = {}
        for version, out in zip((4, 6), self.routes):
            for r in json.loads(out):
                if r.get("metric", 0) != USER_METRIC[version] or r.get("type", "unicast") != "unicast":
                    continue
                dst = ("0.0.0.0/0" if version == 4 else "::/0") if r["dst"] == "default" else r["dst"]
                routes[ipaddress.ip_network(dst)] = (r.get("gateway"), "onlink" in r.get("flags", ()))
        neighbours = {n["dst"]: n["lladdr"] for out in self.neighbours for n in json.loads(out) if n.get("lladdr")}
        fdb = {(f["mac"], f["dst"]) for f in json.loads(self.fdb) if f.get("dst") and f.get("state") == "permanent"}
        return DeviceState(self.index, routes, neighbours, fdb)


async def _iproute2(*argv: str) -> bytes:
    """Run an iproute2 listing and return its output (``[]`` for none); PlumbingError if it fails."""
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip().splitlines()
        raise PlumbingError(f"{' '.join(argv)}: {detail[-1] if detail else f'exit {proc.returncode}'}")
    return out or b"[]"


async def _iproute2_json(*argv: str) -> list[dict]:
    """Run an iproute2 listing with ``-j`` and return its records; PlumbingError if it fails."""
    return json.loads(await _iproute2(*argv))


async def _iproute2_batch(tool: str, lines: list[str]) -> dict[int, str]:
    """Run ``tool -force -batch -`` (``ip`` or ``bridge``) on ``lines``; the lines that failed
    (1-based) with iproute2's words (see :mod:`.peerwrites`). PlumbingError if it failed otherwise."""
    try:
        proc = await asyncio.create_subprocess_exec(tool, "-force", "-batch", "-", stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise PlumbingError(f"cannot run {tool}: {exc.strerror}") from None
    _, err = await proc.communicate("".join(f"{line}\n" for line in lines).encode())
    text = err.decode(errors="replace")
    failed = failed_lines(text)
    if proc.returncode != 0 and not failed:
        detail = text.strip().splitlines()
        raise PlumbingError(f"{tool} -batch: {detail[-1] if detail else f'exit {proc.returncode}'}")
    return failed


async def _main_routes(dst: ipaddress.IPv4Network | ipaddress.IPv6Network, metric: int) -> list[dict]:
    """The main table's routes to exactly ``dst`` at ``metric``, as iproute2 lists them
    (a pyroute2 dump parses every route of the table to find them: at 1000 peers, twice a
    repair pass)."""
    return [r for r in await _iproute2_json("ip", "-j", f"-{dst.version}", "route", "show", "table", "main",
                                            "exact", str(dst))
            if r.get("metric", 0) == metric]


def _fail(what: str, exc: NetlinkError) -> PlumbingError:
    return PlumbingError(f"{what}: {exc.args[1] if len(exc.args) > 1 else exc}")


def _vxlan_holds(data, version: int) -> bool:
    """Whether a VXLAN device with link data ``data`` opens a socket of IP ``version`` when up."""
    ipv6 = bool(data.get("vxlan_local6") or data.get("vxlan_group6"))
    return bool(data.get("vxlan_collect_metadata")) or ipv6 == (version == 6)


class Netlink:
    """An rtnetlink session: ``async with Netlink() as nl: await nl.ensure_route(...)``."""

    def __init__(self) -> None:
        self.ipr: AsyncIPRoute | None = None
        #: what this session changed, e.g. "route 10.244.0.0/16 dev tun0 was missing"; callers
        #: that repair kernel state by other means (nft) add theirs, so one list tells it all
        self.changes: list[str] = []

    async def __aenter__(self) -> "Netlink":
        self.ipr = AsyncIPRoute()
        await self.ipr.setup_endpoint()
        return self

    async def __aexit__(self, *exc) -> None:
        self.ipr.close()
        self.ipr = None

    # -- lookups -------------------------------------------------------------

    async def _link(self, name: str):
        try:
            return (await self.ipr.link("get", ifname=name))[0]
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise _fail(f"cannot read link {name}", exc) from None

    async def index(self, name: str) -> int:
        """The ifindex of ``name``; :class:`PlumbingError` if it does not exist."""
        link = await self._link(name)
        if link is None:
            raise PlumbingError(f"no network interface named {name}")
        return link["index"]

    async def link_names(self) -> list[str]:
        """The names of every link in this namespace."""
        return [link.get("ifname") async for link in await self.ipr.link("dump")]

    async def exists(self, name: str) -> bool:
        """Whether a link called ``name`` exists."""
        return await self._link(name) is not None

    async def ipv4_addresses(self, name: str) -> list[ipaddress.IPv4Interface]:
        """The IPv4 addresses on ``name``."""
        return await self.addresses(name, 4)

    async def addresses(self, name: str, version: int) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        """The addresses of IP ``version`` (4 or 6) on ``name``, link-local IPv6 ones included."""
        index = await self.index(name)
        return [ipaddress.ip_interface(f"{a.get('address')}/{a['prefixlen']}")
                async for a in await self.ipr.addr("dump", family=FAMILY[version], index=index)
                if a["index"] == index]

    async def underlay(self, ifaces: tuple[str, ...] = (), public_ip: str | None = None, *,
                       regexes: tuple[str, ...] = (), can_reach: str | None = None,
                       public_ip6: str | None = None, families: tuple[int, ...] = (4,)) -> Choice:
        """The node's underlay for the interface flags and the IP ``families`` the network config
        needs, by flannel's rules (:mod:`.iface`, which decides; here the kernel is only read: each
        link's IPv4 addresses, its usable IPv6 ones, the routes). Wrong flags are :class:`ConfigError`."""
        interfaces = []
        async for link in await self.ipr.link("dump"):
            index = link["index"]
            addresses = tuple(a.ip for a in await self.ipv4_addresses(link.get("ifname")))
            entries = [(ipaddress.IPv6Address(a.get("IFA_ADDRESS")), a.get("IFA_FLAGS", a["flags"]))
                       async for a in await self.ipr.addr("dump", family=socket.AF_INET6, index=index)
                       if a["index"] == index] if 6 in families else []
            addresses6 = usable_ipv6(entries)
            interfaces.append(Interface(link.get("ifname"), addresses, link.get("mtu"), addresses6))
        reach = await self.route_to(can_reach) if can_reach else None
        return choose(interfaces, ifaces=tuple(ifaces), regexes=tuple(regexes), can_reach=can_reach,
                      reach_route=reach, default_route=await self.route_to("0.0.0.0", default=True),
                      default_route6=await self.route_to("::", default=True) if 6 in families else None,
                      public_ip=public_ip, public_ip6=public_ip6, families=families)

    async def route_to(self, ip: str, default: bool = False) -> Route | None:
        """The interface, source address and gateway of the kernel's route to ``ip``, as ``ip route
        get`` shows it (``default``: of the main table's default route of ``ip``'s family itself, ``"0.0.0.0"`` or
        ``"::"``); None if there is none."""
        family = FAMILY[ipaddress.ip_address(ip).version]
        try:
            if default:
                routes = [r async for r in await self.ipr.route("dump", family=family)
                          if r["dst_len"] == 0 and r.get("table") == 254 and r.get("oif")]
            else:
                routes = list(await self.ipr.route("get", dst=ip, family=family))
        except NetlinkError:  # unreachable
            return None
        if not routes or not routes[0].get("oif"):
            return None
        name = (await self.ipr.link("get", index=routes[0].get("oif")))[0].get("ifname")
        source, gateway = routes[0].get("prefsrc"), routes[0].get("gateway")
        return Route(name, ipaddress.ip_address(source) if source else None,
                     ipaddress.ip_address(gateway) if gateway else None)

    async def vxlan_devices(self, port: int, version: int = 4) -> list[str]:
        """The VXLAN devices that are up on UDP ``port`` of IP ``version`` (the kernel shares one
        socket per family and port among them). As the kernel opens them: a device with an IPv6
        local or remote address holds the IPv6 socket, any other the IPv4 one, and a
        ``collect_metadata`` device both."""
        return [link.get("ifname") async for link in await self.ipr.link("dump")
                if link.get(("linkinfo", "kind")) == "vxlan" and link["flags"] & IFF_UP
                and link.get(("linkinfo", "data")).get("vxlan_port") == port
                and _vxlan_holds(link.get(("linkinfo", "data")), version)]

    async def is_ethernet(self, name: str) -> bool:
        """Whether ``name`` has an Ethernet link layer (host-gw needs one)."""
        link = await self._link(name)
        return link is not None and link["ifi_type"] == ARPHRD_ETHER

    # -- links -----------------------------------------------------------------

    async def _set(self, name: str, what: str, **kwargs) -> None:
        try:
            await self.ipr.link("set", index=await self.index(name), **kwargs)
        except NetlinkError as exc:
            raise _fail(f"cannot set {what} on {name}", exc) from None

    async def _ensure_attr(self, name: str, attr: str, value: int, what: str) -> None:
        link = await self._link(name)
        if link is None or link.get(attr) != value:
            await self._set(name, f"{what} {value}", **{attr: value})
            self.changes.append(f"{what} of {name} was {link.get(attr) if link else 'unknown'}, not {value}")

    async def ensure_mtu(self, name: str, mtu: int) -> None:
        """MTU of ``name`` is ``mtu``."""
        await self._ensure_attr(name, "mtu", mtu, "MTU")

    async def ensure_txqueuelen(self, name: str, qlen: int) -> None:
        """The transmit queue of ``name`` holds ``qlen`` packets."""
        await self._ensure_attr(name, "txqlen", qlen, "txqueuelen")

    async def ensure_link_up(self, name: str) -> None:
        """``name`` is administratively up."""
        link = await self._link(name)
        if link is None or not link["flags"] & IFF_UP:
            await self._set(name, "up", state="up")
            self.changes.append(f"{name} was down")

    async def ensure_noarp(self, name: str) -> None:
        """``name`` does not ARP (IFF_NOARP)."""
        link = await self._link(name)
        if link is None or not link["flags"] & IFF_NOARP:
            await self._set(name, "NOARP", flags=IFF_NOARP, change=IFF_NOARP)
            self.changes.append(f"{name} was not NOARP")

    async def ensure_bridge(self, name: str, mtu: int) -> None:
        """A Linux bridge ``name`` with ``mtu``, up."""
        link = await self._link(name)
        if link is not None and link.get(("linkinfo", "kind")) not in (None, "bridge"):
            raise PlumbingError(f"{name} exists but is not a bridge")
        if link is None:
            try:
                await self.ipr.link("add", ifname=name, kind="bridge", mtu=mtu)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise _fail(f"cannot create bridge {name}", exc) from None
            self.changes.append(f"bridge {name} was missing")
        await self.ensure_mtu(name, mtu)
        await self.ensure_link_up(name)

    async def ensure_vxlan(self, name: str, vni: int, port: int, local: ipaddress.IPv4Address | ipaddress.IPv6Address,
                           underlay_dev: str, mac: str, mtu: int, learning: bool = False,
                           udp_checksum: bool = False) -> None:
        """A VXLAN device ``name`` with exactly these parameters (recreated if it differs); over
        IPv6 when ``local`` is an IPv6 address."""
        dev_index = await self.index(underlay_dev)
        want = {"vxlan_id": vni, "vxlan_port": port, "vxlan_local" if local.version == 4 else "vxlan_local6": str(local),
                "vxlan_link": dev_index, "vxlan_learning": int(learning),
                "vxlan_udp_csum": int(udp_checksum)}
        link = await self._link(name)
        if link is not None:
            data = link.get(("linkinfo", "data"))
            have = {k: data.get(k) for k in want} if data is not None else {}
            if link.get(("linkinfo", "kind")) != "vxlan" or have != want:
                await self.delete_link(name)
                self.changes.append(f"VXLAN device {name} had other parameters ({have}): recreated")
                link = None
        if link is None:
            try:
                await self.ipr.link("add", ifname=name, kind="vxlan", address=mac, mtu=mtu, **want)
            except NetlinkError as exc:
                raise _fail(f"cannot create VXLAN device {name}", exc) from None
            self.changes.append(f"VXLAN device {name} was missing")
        elif link.get("address") != mac:
            await self._set(name, f"MAC {mac}", address=mac)
            self.changes.append(f"MAC of {name} was {link.get('address')}, not {mac}")
        await self.ensure_mtu(name, mtu)

    async def delete_link(self, name: str) -> None:
        """Delete ``name`` if it exists."""
        link = await self._link(name)
        if link is None:
            return
        try:
            await self.ipr.link("del", index=link["index"])
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise _fail(f"cannot delete {name}", exc) from None

    # -- addresses -------------------------------------------------------------

    async def ensure_address(self, name: str, address: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> None:
        """``address`` is the only address of its family on ``name`` (others are removed, but
        for IPv6 link-local ones, which IPv6 needs on every link).

        An IPv6 address is added without duplicate address detection (``nodad``): it is
        our lease's gateway, unique in the cluster, and usable at once instead of
        tentative for a second or two (pods started then could not reach it).
        """
        index = await self.index(name)
        have = [a for a in await self.addresses(name, address.version) if not a.is_link_local]
        flags = {"flags": IFA_F_NODAD} if address.version == 6 else {}
        try:
            for old in have:
                if old != address:
                    await self.ipr.addr("del", index=index, address=str(old.ip), prefixlen=old.network.prefixlen)
                    self.changes.append(f"address {old} on {name} was extra (removed)")
            if address not in have:
                await self.ipr.addr("add", index=index, address=str(address.ip),
                                    prefixlen=address.network.prefixlen, **flags)
                self.changes.append(f"address {address} on {name} was missing")
        except NetlinkError as exc:
            raise _fail(f"cannot set address {address} on {name}", exc) from None

    async def device_state(self, dev: str, peers: bool = True) -> DeviceState:
        """Snapshot ``dev``'s routes (and with ``peers``, its neighbours and FDB entries)."""
        return (await self.device_dump(dev, peers)).state()

    async def device_dump(self, dev: str, peers: bool = True) -> DeviceDump:
        """``dev``'s routes (and with ``peers``, its neighbours and FDB entries), unparsed.

        Whole tables are read through iproute2's JSON output, not pyroute2:
        parsing 1000 routes + 1000 neighbours + 1000 FDB entries took 240 ms
        of CPU with pyroute2 and 31 ms with ``ip -j``/``bridge -j`` (measured
        here), and the drift repair reads them every pass.
        """
        index = await self.index(dev)
        routes = tuple([await _iproute2("ip", "-j", f"-{version}", "route", "show", "table", "main", "dev", dev)
                        for version in (4, 6)])
        if not peers:
            return DeviceDump(index, routes)
        neighbours = tuple([await _iproute2("ip", "-j", f"-{version}", "neigh", "show", "dev", dev, "nud", "permanent")
                            for version in (4, 6)])
        return DeviceDump(index, routes, neighbours, await _iproute2("bridge", "-j", "fdb", "show", "dev", dev))

    async def write(self, writes: Writes) -> dict:
        """Write a :class:`~overlayd.plumbing.peerwrites.Writes` in two processes (the FDB entries
        first, as the ``ensure_*`` calls go for a peer); what failed, by tag, in words (the first
        failure of each). The changes of the lines that went through join :attr:`changes`."""
        failed: dict = {}
        for tool, lines in (("bridge", writes.bridge), ("ip", writes.ip)):
            if not lines:
                continue
            errors = await _iproute2_batch(tool, [line.text for line in lines])
            for number, line in enumerate(lines, 1):
                if number in errors:
                    failed.setdefault(line.tag, f"'{tool} {line.text}' failed: {errors[number]}")
                else:
                    self.changes.append(line.change)
        return failed

    # -- routes ----------------------------------------------------------------

    async def ensure_route(self, dst: ipaddress.IPv4Network | ipaddress.IPv6Network, dev: str,
                           gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None,
                           onlink: bool = False, state: DeviceState | None = None) -> None:
        """Route ``dst`` (either family) through ``dev`` (via ``gateway``), replacing any other
        route to ``dst`` at the family's default metric.

        With ``state`` (a snapshot of ``dev``) nothing is read from the kernel.
        """
        index = state.index if state is not None else await self.index(dev)
        want = (index, str(gateway) if gateway is not None else None, onlink)
        if state is not None:
            have = [(index, *state.routes[dst])] if dst in state.routes else []
        else:
            have = [(index if r.get("dev") == dev else r.get("dev"), r.get("gateway"),
                     "onlink" in r.get("flags", ()))
                    for r in await _main_routes(dst, USER_METRIC[dst.version])]  # the one "replace" writes
        if have == [want]:
            return
        kwargs = {"dst": str(dst), "oif": index, "family": FAMILY[dst.version]}
        if gateway is not None:
            kwargs["gateway"] = str(gateway)
        if onlink:
            kwargs["flags"] = RTNH_F_ONLINK
        try:
            await self.ipr.route("replace", **kwargs)
        except NetlinkError as exc:
            raise _fail(f"cannot route {dst} via {gateway or dev}", exc) from None
        if state is not None:
            state.routes[dst] = want[1:]
        route = f"route {dst}{f' via {gateway}' if gateway else ''} dev {dev}{' onlink' if onlink else ''}"
        self.changes.append(f"{route} was {'different' if have else 'missing'}")

    async def ensure_unreachable(self, dst: ipaddress.IPv4Network | ipaddress.IPv6Network, metric: int) -> None:
        """An ``unreachable`` route to ``dst`` at ``metric``; routes to ``dst`` at other metrics stay."""
        have = [r.get("type", "unicast") for r in await _main_routes(dst, metric)]
        if have == ["unreachable"]:
            return
        try:
            await self.ipr.route("replace", dst=str(dst), type="unreachable", priority=metric,
                                 family=FAMILY[dst.version])
        except NetlinkError as exc:
            raise _fail(f"cannot add route unreachable {dst} metric {metric}", exc) from None
        self.changes.append(f"route unreachable {dst} metric {metric} was {'different' if have else 'missing'}")

    async def delete_route(self, dst: ipaddress.IPv4Network | ipaddress.IPv6Network, dev: str | None = None) -> None:
        """Delete the route to ``dst`` (through ``dev``) if there is one."""
        kwargs = {"dst": str(dst), "family": FAMILY[dst.version]}
        if dev is not None:
            link = await self._link(dev)
            if link is None:
                return
            kwargs["oif"] = link["index"]
        await self._delete_route(kwargs)

    async def unreachable_networks(self, metric: int) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The destinations of the main table's ``unreachable`` routes at ``metric``, both families."""
        found = []
        for version in (4, 6):
            found += [ipaddress.ip_network(r["dst"] if "/" in r["dst"] else f"{r['dst']}/{32 if version == 4 else 128}")
                      for r in await _iproute2_json("ip", "-j", f"-{version}", "route", "show", "table", "main",
                                                    "type", "unreachable")
                      if r.get("metric", 0) == metric and r.get("dst") not in (None, "default")]
        return found

    async def routes_within(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> list[dict]:
        """The main table's routes to ``network`` or a part of it, through any device or of any type,
        but the kernel's own (an address's prefix route: it goes with the address), as iproute2
        lists them, each with its ``dst`` as a network (``network`` below)."""
        routes = await _iproute2_json("ip", "-j", f"-{network.version}", "route", "show", "table", "main",
                                      "root", str(network))
        return [{**r, "network": ipaddress.ip_network(r["dst"] if "/" in r["dst"]
                                                      else f"{r['dst']}/{network.max_prefixlen}")}
                for r in routes if r.get("protocol") != "kernel"]

    async def delete_routes_within(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network,
                                   prefixlen: int | None = None,
                                   keep: frozenset = frozenset()) -> int:
        """Delete :meth:`routes_within` ``network`` (only those of ``prefixlen``, if given; never those
        to a network in ``keep``); how many."""
        count = 0
        for r in await self.routes_within(network):
            if (prefixlen is not None and r["network"].prefixlen != prefixlen) or r["network"] in keep:
                continue
            dst = str(r["network"])
            kwargs = {"dst": dst, "family": FAMILY[network.version], "priority": r.get("metric", 0)}
            if r.get("type", "unicast") != "unicast":
                kwargs["type"] = r["type"]
            elif r.get("dev"):
                link = await self._link(r["dev"])
                if link is None:
                    continue
                kwargs["oif"] = link["index"]
            await self._delete_route(kwargs)
            count += 1
        return count

    async def delete_addresses_within(self, name: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> int:
        """Delete ``name``'s addresses that lie in ``network`` (none if there is no such link); how many."""
        if not await self.exists(name):
            return 0
        index = await self.index(name)
        gone = [a for a in await self.addresses(name, network.version) if a.ip in network]
        for address in gone:
            try:
                await self.ipr.addr("del", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
            except NetlinkError as exc:
                raise _fail(f"cannot delete address {address} from {name}", exc) from None
        return len(gone)

    async def delete_unreachable(self, dst: ipaddress.IPv4Network | ipaddress.IPv6Network, metric: int) -> None:
        """Delete the ``unreachable`` route to ``dst`` at ``metric`` if there is one."""
        await self._delete_route({"dst": str(dst), "type": "unreachable", "priority": metric,
                                  "family": FAMILY[dst.version]})

    async def _delete_route(self, kwargs: dict) -> None:
        try:
            await self.ipr.route("del", **kwargs)
        except NetlinkError as exc:
            if exc.code not in (errno.ESRCH, errno.ENOENT):
                raise _fail(f"cannot delete route {kwargs['dst']}", exc) from None

    async def routes(self, dev: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """Destinations of the main-table routes of both families through ``dev``, but the
        kernel's own (``proto kernel``): the prefix routes of the device's addresses, such as
        IPv6's ``fe80::/64`` on every link and the route an IPv6 /128 address gets (IPv4's /32
        gets none), which only the address's removal takes away."""
        index = await self.index(dev)
        found = []
        for version, default in ((4, "0.0.0.0"), (6, "::")):
            found += [ipaddress.ip_network(f"{r.get('dst') or default}/{r['dst_len']}")
                      async for r in await self.ipr.route("dump", family=FAMILY[version])
                      if r.get("oif") == index and r.get("table") == 254 and r.get("proto") != RTPROT_KERNEL]
        return found

    async def flush_peer_state(self, dev: str, keep_routes: tuple = ()) -> int:
        """Delete every main-table route (but ``keep_routes`` and the kernel's own, see :meth:`routes`),
        permanent neighbour (not the kernel's, such as IPv6 multicast ``ff02::16`` NOARP) and FDB
        entry on ``dev``.

        For a restart: a kernel backend's device outlives overlayd, and so
        would the entries of peers that left while it was down. Returns how
        many entries went.
        """
        index = await self.index(dev)
        gone = 0
        for dst in await self.routes(dev):
            if dst not in keep_routes:
                await self.delete_route(dst, dev)
                gone += 1
        for family in FAMILY.values():
            for n in [n async for n in await self.ipr.neigh("dump", ifindex=index, family=family)]:
                if n["ifindex"] == index and n.get("dst") and n["state"] & NUD_PERMANENT:  # ours, not the kernel's
                    await self.delete_neighbour(ipaddress.ip_address(n.get("dst")), dev)
                    gone += 1
        for f in [f async for f in await self.ipr.fdb("dump", ifindex=index)]:
            if f["ifindex"] == index and f.get("dst"):
                await self.delete_fdb(f.get("lladdr"), dev, f.get("dst"))
                gone += 1
        return gone

    # -- neighbours and FDB --------------------------------------------------------

    async def ensure_neighbour(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, mac: str, dev: str,
                               state: DeviceState | None = None) -> None:
        """A permanent ARP (IPv4) or neighbour (IPv6) entry ``ip -> mac`` on ``dev`` (checked
        against ``state`` if given)."""
        index = state.index if state is not None else await self.index(dev)
        family = FAMILY[ip.version]
        if state is not None:
            have = [(state.neighbours[str(ip)], NUD_PERMANENT)] if str(ip) in state.neighbours else []
        else:
            try:
                have = [(n.get("lladdr"), n["state"])
                        for n in await self.ipr.neigh("get", dst=str(ip), ifindex=index, family=family)]
            except NetlinkError as exc:
                if exc.code != errno.ENOENT:
                    raise _fail(f"cannot read neighbour {ip} on {dev}", exc) from None
                have = []
        if have == [(mac.lower(), NUD_PERMANENT)]:
            return
        try:
            await self.ipr.neigh("replace", dst=str(ip), lladdr=mac, ifindex=index, state=NUD_PERMANENT,
                                 family=family)
        except NetlinkError as exc:
            raise _fail(f"cannot set neighbour {ip} on {dev}", exc) from None
        if state is not None:
            state.neighbours[str(ip)] = mac.lower()
        self.changes.append(f"neighbour {ip} lladdr {mac} dev {dev} was {'different' if have else 'missing'}")

    async def delete_neighbour(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, dev: str) -> None:
        """Remove the neighbour entry for ``ip`` on ``dev`` if present."""
        link = await self._link(dev)
        if link is None:
            return
        try:
            await self.ipr.neigh("del", dst=str(ip), ifindex=link["index"], family=FAMILY[ip.version])
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.ESRCH):
                raise _fail(f"cannot delete neighbour {ip} on {dev}", exc) from None

    async def ensure_fdb(self, mac: str, dst_ip: ipaddress.IPv4Address | ipaddress.IPv6Address, dev: str,
                         state: DeviceState | None = None) -> None:
        """A permanent FDB entry on VXLAN device ``dev``: frames for ``mac`` go to ``dst_ip``
        (checked against ``state`` if given, else against a dump of the device's FDB)."""
        if state is None:
            state = await self.device_state(dev)
        if (mac.lower(), str(dst_ip)) in state.fdb:
            return
        index = state.index
        try:
            await self.ipr.fdb("replace", ifindex=index, lladdr=mac, dst=str(dst_ip),
                               state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF)
        except NetlinkError as exc:
            raise _fail(f"cannot set FDB {mac} -> {dst_ip} on {dev}", exc) from None
        state.fdb.add((mac.lower(), str(dst_ip)))
        self.changes.append(f"FDB {mac} dst {dst_ip} dev {dev} was missing")

    async def delete_fdb(self, mac: str, dev: str, dst_ip: str | ipaddress.IPv4Address) -> None:
        """Remove the FDB entry ``mac -> dst_ip`` on ``dev`` if present."""
        link = await self._link(dev)
        if link is None:
            return
        try:
            await self.ipr.fdb("del", ifindex=link["index"], lladdr=mac, dst=str(dst_ip),
                               state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF)
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.ESRCH):
                raise _fail(f"cannot delete FDB {mac} on {dev}", exc) from None
