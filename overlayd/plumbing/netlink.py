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
from .iface import Choice, Interface, Route, choose

NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
RTNH_F_ONLINK = 4
IFF_UP = 0x1
IFF_NOARP = 0x80
ARPHRD_ETHER = 1


@dataclasses.dataclass
class DeviceState:
    """The per-peer kernel state on one device, read once (three dumps) and checked in memory.

    At 1000 peers, checking each peer's route, neighbour and FDB entry with a
    dump of its own parsed ~3 million netlink messages per pass; with a
    snapshot a pass parses each entry once. The ``ensure_*`` methods take it
    as ``state=`` and keep it up to date as they write.
    """

    index: int
    routes: dict  # metric-0 main-table routes through the device: dst network -> (gateway str | None, onlink)
    neighbours: dict  # permanent IPv4 neighbours: ip str -> lladdr
    fdb: set  # permanent FDB entries: (lladdr, dst ip str)


async def _iproute2_json(*argv: str) -> list[dict]:
    """Run an iproute2 listing with ``-j`` and return its records; PlumbingError if it fails."""
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip().splitlines()
        raise PlumbingError(f"{' '.join(argv)}: {detail[-1] if detail else f'exit {proc.returncode}'}")
    return json.loads(out or b"[]")


async def _main_routes(dst: ipaddress.IPv4Network, metric: int) -> list[dict]:
    """The main table's IPv4 routes to exactly ``dst`` at ``metric``, as iproute2 lists them
    (a pyroute2 dump parses every route of the table to find them: at 1000 peers, twice a
    repair pass)."""
    return [r for r in await _iproute2_json("ip", "-j", "-4", "route", "show", "table", "main", "exact", str(dst))
            if r.get("metric", 0) == metric]


def _fail(what: str, exc: NetlinkError) -> PlumbingError:
    return PlumbingError(f"{what}: {exc.args[1] if len(exc.args) > 1 else exc}")


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

    async def exists(self, name: str) -> bool:
        """Whether a link called ``name`` exists."""
        return await self._link(name) is not None

    async def ipv4_addresses(self, name: str) -> list[ipaddress.IPv4Interface]:
        """The IPv4 addresses on ``name``."""
        index = await self.index(name)
        return [ipaddress.IPv4Interface(f"{a.get('address')}/{a['prefixlen']}")
                async for a in await self.ipr.addr("dump", family=socket.AF_INET, index=index)
                if a["index"] == index]

    async def underlay(self, ifaces: tuple[str, ...] = (), public_ip: str | None = None, *,
                       regexes: tuple[str, ...] = (), can_reach: str | None = None) -> Choice:
        """The node's underlay for the interface flags, by flannel's rules (:mod:`.iface`, which
        decides; here the kernel is only read). Wrong flags are :class:`ConfigError`."""
        interfaces = []
        async for link in await self.ipr.link("dump"):
            addresses = tuple(a.ip for a in await self.ipv4_addresses(link.get("ifname")))
            interfaces.append(Interface(link.get("ifname"), addresses, link.get("mtu")))
        reach = await self.route_to(can_reach) if can_reach else None
        return choose(interfaces, ifaces=tuple(ifaces), regexes=tuple(regexes), can_reach=can_reach,
                      reach_route=reach, default_route=await self.route_to("0.0.0.0", default=True),
                      public_ip=public_ip)

    async def route_to(self, ip: str, default: bool = False) -> Route | None:
        """The interface, source address and gateway of the kernel's route to ``ip``, as ``ip route
        get`` shows it (``default``: of the main table's default route itself); None if there is none."""
        try:
            if default:
                routes = [r async for r in await self.ipr.route("dump", family=socket.AF_INET)
                          if r["dst_len"] == 0 and r.get("table") == 254 and r.get("oif")]
            else:
                routes = list(await self.ipr.route("get", dst=ip))
        except NetlinkError:  # unreachable
            return None
        if not routes or not routes[0].get("oif"):
            return None
        name = (await self.ipr.link("get", index=routes[0].get("oif")))[0].get("ifname")
        source, gateway = routes[0].get("prefsrc"), routes[0].get("gateway")
        return Route(name, ipaddress.IPv4Address(source) if source else None,
                     ipaddress.IPv4Address(gateway) if gateway else None)

    async def vxlan_devices(self, port: int) -> list[str]:
        """The VXLAN devices that are up on UDP ``port`` (the kernel shares one socket among them)."""
        return [link.get("ifname") async for link in await self.ipr.link("dump")
                if link.get(("linkinfo", "kind")) == "vxlan" and link["flags"] & IFF_UP
                and link.get(("linkinfo", "data")).get("vxlan_port") == port]

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

    async def ensure_vxlan(self, name: str, vni: int, port: int, local: ipaddress.IPv4Address,
                           underlay_dev: str, mac: str, mtu: int, learning: bool = False,
                           udp_checksum: bool = False) -> None:
        """A VXLAN device ``name`` with exactly these parameters (recreated if it differs)."""
        dev_index = await self.index(underlay_dev)
        want = {"vxlan_id": vni, "vxlan_port": port, "vxlan_local": str(local),
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

    async def ensure_address(self, name: str, address: ipaddress.IPv4Interface) -> None:
        """``address`` is the only IPv4 address on ``name`` (others are removed)."""
        index = await self.index(name)
        have = await self.ipv4_addresses(name)
        try:
            for old in have:
                if old != address:
                    await self.ipr.addr("del", index=index, address=str(old.ip), prefixlen=old.network.prefixlen)
                    self.changes.append(f"address {old} on {name} was extra (removed)")
            if address not in have:
                await self.ipr.addr("add", index=index, address=str(address.ip),
                                    prefixlen=address.network.prefixlen)
                self.changes.append(f"address {address} on {name} was missing")
        except NetlinkError as exc:
            raise _fail(f"cannot set address {address} on {name}", exc) from None

    async def device_state(self, dev: str, peers: bool = True) -> DeviceState:
        """Snapshot ``dev``'s routes (and with ``peers``, its neighbours and FDB entries).

        Whole tables are read through iproute2's JSON output, not pyroute2:
        parsing 1000 routes + 1000 neighbours + 1000 FDB entries took 240 ms
        of CPU with pyroute2 and 31 ms with ``ip -j``/``bridge -j`` (measured
        here), and the drift repair reads them every pass.
        """
        index = await self.index(dev)
        routes = {}
        for r in await _iproute2_json("ip", "-j", "route", "show", "table", "main", "dev", dev):
            if r.get("metric", 0) or r.get("type", "unicast") != "unicast":
                continue
            dst = "0.0.0.0/0" if r["dst"] == "default" else r["dst"]
            routes[ipaddress.IPv4Network(dst)] = (r.get("gateway"), "onlink" in r.get("flags", ()))
        neighbours, fdb = {}, set()
        if peers:
            for n in await _iproute2_json("ip", "-j", "-4", "neigh", "show", "dev", dev, "nud", "permanent"):
                if n.get("lladdr"):
                    neighbours[n["dst"]] = n["lladdr"]
            for f in await _iproute2_json("bridge", "-j", "fdb", "show", "dev", dev):
                if f.get("dst") and f.get("state") == "permanent":
                    fdb.add((f["mac"], f["dst"]))
        return DeviceState(index, routes, neighbours, fdb)

    # -- routes ----------------------------------------------------------------

    async def ensure_route(self, dst: ipaddress.IPv4Network, dev: str,
                           gateway: ipaddress.IPv4Address | None = None, onlink: bool = False,
                           state: DeviceState | None = None) -> None:
        """Route ``dst`` through ``dev`` (via ``gateway``), replacing any other route to ``dst``.

        With ``state`` (a snapshot of ``dev``) nothing is read from the kernel.
        """
        index = state.index if state is not None else await self.index(dev)
        want = (index, str(gateway) if gateway is not None else None, onlink)
        if state is not None:
            have = [(index, *state.routes[dst])] if dst in state.routes else []
        else:
            have = [(index if r.get("dev") == dev else r.get("dev"), r.get("gateway"),
                     "onlink" in r.get("flags", ()))
                    for r in await _main_routes(dst, 0)]  # the metric-0 route, the one "replace" writes
        if have == [want]:
            return
        kwargs = {"dst": str(dst), "oif": index}
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

    async def ensure_unreachable(self, dst: ipaddress.IPv4Network, metric: int) -> None:
        """An ``unreachable`` route to ``dst`` at ``metric``; routes to ``dst`` at other metrics stay."""
        have = [r.get("type", "unicast") for r in await _main_routes(dst, metric)]
        if have == ["unreachable"]:
            return
        try:
            await self.ipr.route("replace", dst=str(dst), type="unreachable", priority=metric)
        except NetlinkError as exc:
            raise _fail(f"cannot add route unreachable {dst} metric {metric}", exc) from None
        self.changes.append(f"route unreachable {dst} metric {metric} was {'different' if have else 'missing'}")

    async def delete_route(self, dst: ipaddress.IPv4Network, dev: str | None = None) -> None:
        """Delete the route to ``dst`` (through ``dev``) if there is one."""
        kwargs = {"dst": str(dst)}
        if dev is not None:
            link = await self._link(dev)
            if link is None:
                return
            kwargs["oif"] = link["index"]
        await self._delete_route(kwargs)

    async def delete_unreachable(self, dst: ipaddress.IPv4Network, metric: int) -> None:
        """Delete the ``unreachable`` route to ``dst`` at ``metric`` if there is one."""
        await self._delete_route({"dst": str(dst), "type": "unreachable", "priority": metric})

    async def _delete_route(self, kwargs: dict) -> None:
        try:
            await self.ipr.route("del", **kwargs)
        except NetlinkError as exc:
            if exc.code not in (errno.ESRCH, errno.ENOENT):
                raise _fail(f"cannot delete route {kwargs['dst']}", exc) from None

    async def routes(self, dev: str) -> list[ipaddress.IPv4Network]:
        """Destinations of the main-table IPv4 routes through ``dev``."""
        index = await self.index(dev)
        return [ipaddress.IPv4Network(f"{r.get('dst') or '0.0.0.0'}/{r['dst_len']}")
                async for r in await self.ipr.route("dump", family=socket.AF_INET)
                if r.get("oif") == index and r.get("table") == 254]

    async def flush_peer_state(self, dev: str, keep_routes: tuple = ()) -> int:
        """Delete every main-table route (but ``keep_routes``), IPv4 neighbour and FDB entry on ``dev``.

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
        for n in [n async for n in await self.ipr.neigh("dump", ifindex=index, family=socket.AF_INET)]:
            if n["ifindex"] == index and n.get("dst"):
                await self.delete_neighbour(ipaddress.IPv4Address(n.get("dst")), dev)
                gone += 1
        for f in [f async for f in await self.ipr.fdb("dump", ifindex=index)]:
            if f["ifindex"] == index and f.get("dst"):
                await self.delete_fdb(f.get("lladdr"), dev, f.get("dst"))
                gone += 1
        return gone

    # -- neighbours and FDB --------------------------------------------------------

    async def ensure_neighbour(self, ip: ipaddress.IPv4Address, mac: str, dev: str,
                               state: DeviceState | None = None) -> None:
        """A permanent ARP entry ``ip -> mac`` on ``dev`` (checked against ``state`` if given)."""
        index = state.index if state is not None else await self.index(dev)
        if state is not None:
            have = [(state.neighbours[str(ip)], NUD_PERMANENT)] if str(ip) in state.neighbours else []
        else:
            try:
                have = [(n.get("lladdr"), n["state"])
                        for n in await self.ipr.neigh("get", dst=str(ip), ifindex=index)]
            except NetlinkError as exc:
                if exc.code != errno.ENOENT:
                    raise _fail(f"cannot read neighbour {ip} on {dev}", exc) from None
                have = []
        if have == [(mac.lower(), NUD_PERMANENT)]:
            return
        try:
            await self.ipr.neigh("replace", dst=str(ip), lladdr=mac, ifindex=index, state=NUD_PERMANENT)
        except NetlinkError as exc:
            raise _fail(f"cannot set neighbour {ip} on {dev}", exc) from None
        if state is not None:
            state.neighbours[str(ip)] = mac.lower()
        self.changes.append(f"neighbour {ip} lladdr {mac} dev {dev} was {'different' if have else 'missing'}")

    async def delete_neighbour(self, ip: ipaddress.IPv4Address, dev: str) -> None:
        """Remove the ARP entry for ``ip`` on ``dev`` if present."""
        link = await self._link(dev)
        if link is None:
            return
        try:
            await self.ipr.neigh("del", dst=str(ip), ifindex=link["index"])
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.ESRCH):
                raise _fail(f"cannot delete neighbour {ip} on {dev}", exc) from None

    async def ensure_fdb(self, mac: str, dst_ip: ipaddress.IPv4Address, dev: str,
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
