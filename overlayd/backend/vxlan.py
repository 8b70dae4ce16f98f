"""The kernel VXLAN backend: flannel's default, done by a Linux VXLAN device.

Design history (as flannel's ``vxlan.go`` keeps one): flannel first used L3
misses to program neighbours on demand, then switched to static entries per
peer, which is what we do. The device ``flannel.<VNI>`` is created with
``nolearning``, the VNI, the port, ``local`` = the public IP, ``dev`` = the
underlay interface, and the UDP checksum OFF set explicitly (pyroute2 and
iproute2 both create it with the checksum on here unless told otherwise).
For each peer: a route ``<subnet> via <subnet>.0 dev flannel.N onlink``, a
permanent neighbour ``<subnet>.0 -> VtepMAC`` and an FDB entry ``VtepMAC ->
public IP``; all three go when the lease goes. Our userspace VXLAN backend
publishes the same BackendData, so nodes of either kind are peers.

Dual stack, as flannel has it: IPv6 pods get a second device,
``flannel-v6.<VNI>``, over the node's IPv6 underlay address (``local``), with
the lease's IPv6 subnet's network address as a /128 and its own VtepMAC,
published in ``BackendV6Data``; a peer's IPv6 subnet gets the same three
entries on it, towards its ``PublicIPv6``. Each family is one :class:`Vtep`,
programmed by the same code; an IPv6-only node has only the IPv6 one.

Port check: the device opens its UDP socket (on every address) only when it
is set up, after the lease. :meth:`KernelVxlanBackend.preflight` therefore
binds the port once, before any lease, and refuses when a process or a
non-VXLAN kernel socket holds it: for each family the node has a device of,
as the kernel binds it (``0.0.0.0``; ``[::]`` IPv6-only for flannel-v6). A VXLAN device already up on the port (our
own ``flannel.<VNI>`` from before a restart, or another VNI's) is no
conflict: the kernel shares one socket per port among VXLAN devices.

Transmit checksum offload (issue 10 item 5): left as the kernel sets it, on,
as flannel does. With it on a kernel VTEP sends the inner TCP/UDP checksum
partial (CHECKSUM_PARTIAL: the field holds the pseudo-header sum, for a NIC
to finish) and TCP as 64 KB GSO superpackets, for a NIC to cut. Turning it
off costs 3-5x between two kernel nodes (it turns TSO off too: every 1.4 KB
segment is encapsulated alone; scripts/bench: kernel-vxlan against
kvx-tx-off). A NIC finishes and cuts both; a veth, a bridge with veth ports
(containers as nodes, this project's lab) or a paravirtual NIC hands them on
as they are to a neighbour namespace or guest of the same host. A kernel
receiver does not mind (the skb keeps its offload marks); a userspace VTEP
reads raw bytes, and ours takes both: it completes a partial checksum
(:func:`overlayd.encap.ether.complete_partial_checksum`) and cuts a TCP
superpacket to its tap's MTU (:func:`overlayd.encap.ether.cut_superpacket`;
the C engine writes it to its vnet_hdr tap as one GSO write). So nothing
needs it off any more. History: until the userspace receiver took
superpackets, offload was turned off over anything but NICs (bonds, VLANs,
bridges of NICs), at 0.19x a hand-built kernel VXLAN pair in the lab.
Weighed and left then: turning it on only when no peer is a userspace VTEP
(leases do not tell, and an older overlayd would not say); turning tunnel
segmentation off on the underlay instead (every receiver then pays per
packet).

A pod's UDP GSO send (UDP_SEGMENT, e.g. QUIC) also leaves as one VXLAN
datagram, whose segment size is not on the wire: our userspace receivers'
sockets do not ask for UDP_GRO on the VXLAN wire, so their kernel cuts it
into proper datagrams before they read it (tests/e2e/test_vxlan_offload.py).
What is still lost with offload on, over a virtual underlay: a third-party
userspace VTEP may take neither partial checksums nor superpackets.
The operator's way out, as flannel documents it: turn it off on the kernel
nodes (``ethtool -K flannel.<VNI> tx-checksum-ip-generic off``, or ``python
-m overlayd.plumbing.ethtool flannel.<VNI> off`` where no ethtool binary is
installed), made to last with a udev rule that runs it when the device is
added (``ACTION=="add"``, ``ENV{INTERFACE}=="flannel.1"``): we never touch the
setting, so it stays while the device lives, and a device that drift repair
or a reboot recreates comes back with the kernel's default (on), then the
rule's setting. A device kept from an older overlayd keeps that version's
setting (off over virtual underlays); setup logs when it finds it off.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import logging
import socket

from ..dataplane.sockets import udp_port_holder
from ..encap.ether import mac_to_bytes, mac_to_str, stable_mac
from ..errors import ConfigError, EncapError, PlumbingError
from ..lease.model import Lease
from ..lease.watcher import Batch
from ..netconf import (DEFAULT_VNI, BackendConfig, NetworkConfig, _bool_field, _check_switches, _int_field,
                       _mtu_field, _port_field, _show)
from ..plumbing import ethtool, sysctl
from ..plumbing.netlink import DeviceDump, Netlink
from ..plumbing.peerwrites import Writes
from .base import Backend, NodeOptions, delete_peer_routes, lease_subnets
from .hostgw import node_versions, peer_routes
from .registry import BackendSpec

log = logging.getLogger(__name__)

TYPE = "vxlan"
OVERHEAD = 50  # outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14)
MAX_VNI = (1 << 24) - 1
KEYS = frozenset({"Type", "Port", "VNI", "MTU", "GBP", "Learning", "DirectRouting", "MacPrefix", "Name"})
# flannel's switches overlayd does not implement: field -> the value that asks for nothing (accepted),
# and why the other value is refused
UNSUPPORTED = {
    "GBP": (False, "no VXLAN Group Based Policy (set it false)"),
    "Learning": (False, "peers' FDB entries come from their leases, not from MAC learning (set it false)"),
}


def parse(raw: dict, notes: list[str]) -> BackendConfig:
    """The vxlan backend's settings (flannel's): ``Port``, ``VNI``, ``MTU``, ``DirectRouting``; ``GBP``
    and ``Learning`` only false (:data:`UNSUPPORTED`); ``MacPrefix`` and ``Name``, Windows-only in
    flannel, ignored with a note. Pure."""
    _check_switches(raw, "Backend.", UNSUPPORTED)
    for key in ("MacPrefix", "Name"):
        if key in raw:
            if not isinstance(raw[key], str):
                raise ConfigError(f"Backend.{key}: must be a string, got {_show(raw[key])}")
            notes.append(f"Backend.{key}: ignored (Windows only in flannel)")
    return BackendConfig(type=TYPE, port=_port_field(raw), vni=_int_field(raw, "VNI", "Backend.", 0, MAX_VNI, DEFAULT_VNI),
                         mtu=_mtu_field(raw), direct_routing=bool(_bool_field(raw, "DirectRouting", "Backend.")))


def implementation(options: NodeOptions) -> type[Backend]:
    """The kernel's VXLAN device (``--vxlan-impl kernel``) or overlayd's own over a tap (``user``):
    both publish BackendType vxlan and interoperate."""
    if options.vxlan_impl == "kernel":
        return KernelVxlanBackend
    from .vxlan_user import UserVxlanBackend  # it imports this module

    return UserVxlanBackend


def vtep_mac(public_ip: ipaddress.IPv4Address | ipaddress.IPv6Address, vni: int) -> str:
    """This node's VTEP MAC for the device over ``public_ip``'s family: derived from that address
    and the VNI, so it survives restarts."""
    return mac_to_str(stable_mac(public_ip.packed + vni.to_bytes(3, "big")))


def vxlan_peer_mac(lease: Lease, vni: int, version: int = 4) -> str | None:
    """The lease's VtepMAC for IP ``version`` (``BackendData``'s, or ``BackendV6Data``'s for 6)
    if it is a usable VXLAN peer on ``vni``, else None.

    Leases can be written by hand (or by other software): a missing or
    malformed MAC, or another VNI, makes the peer unusable, never the daemon crash.
    """
    data = lease.attrs.backend_data if version == 4 else lease.attrs.backend_v6_data
    if lease.attrs.backend_type != TYPE or not isinstance(data, dict):
        return None
    if data.get("VNI", vni) != vni:
        return None
    try:
        return mac_to_str(mac_to_bytes(data.get("VtepMAC")))
    except EncapError:
        return None


SYSFS_NET = "/sys/class/net"
#: the device statistics /metrics exports for a kernel VXLAN node
DEVICE_STATISTICS = tuple(f"{d}_{kind}" for d in ("rx", "tx") for kind in ("packets", "bytes", "dropped", "errors"))


def read_device_statistics(device: str) -> dict[str, int] | None:
    """``device``'s kernel counters (:data:`DEVICE_STATISTICS`) from sysfs, as ``ip -s link`` shows
    them; None when the device does not exist (sysfs shows the reader's network namespace)."""
    counts = {}
    for name in DEVICE_STATISTICS:
        try:
            with open(f"{SYSFS_NET}/{device}/statistics/{name}") as f:
                counts[name] = int(f.read())
        except (OSError, ValueError):
            return None
    return counts


def vtep_gateway(subnet: ipaddress.IPv4Network | ipaddress.IPv6Network) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The peer-side address routes point at: the subnet's network address (flannel's ``.0``, ``::``)."""
    return subnet.network_address


def vtep_device(version: int, vni: int) -> str:
    """flannel's name for the VXLAN device of IP ``version`` on ``vni``."""
    return f"flannel.{vni}" if version == 4 else f"flannel-v6.{vni}"


@dataclasses.dataclass(frozen=True)
class Vtep:
    """One of this node's VXLAN devices: ``flannel.<VNI>`` for IPv4 pods over the IPv4 underlay,
    ``flannel-v6.<VNI>`` for IPv6 pods over the IPv6 underlay (flannel's names)."""

    version: int
    device: str
    local: ipaddress.IPv4Address | ipaddress.IPv6Address  # the device's end on the underlay
    mac: str

    @classmethod
    def of(cls, version: int, vni: int, local: ipaddress.IPv4Address | ipaddress.IPv6Address,
           public_ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> "Vtep":
        """The device for IP ``version``, its MAC derived from ``public_ip`` (pure)."""
        return cls(version, vtep_device(version, vni), local, vtep_mac(public_ip, vni))


#: where a VXLAN device of each IP version binds its UDP socket: (socket family, every address)
WILDCARD = {4: (socket.AF_INET, "0.0.0.0"), 6: (socket.AF_INET6, "::")}


def udp_port_free(version: int, port: int) -> bool:
    """Whether UDP ``port`` of IP ``version`` can be bound on every address now, as a VXLAN
    device of that version binds it (IPv6: IPv6 only, so an IPv4 holder is no conflict)."""
    family, wildcard = WILDCARD[version]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        if version == 6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            probe.bind((wildcard, port))
            return True
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise PlumbingError(f"cannot probe UDP port {port}: {exc.strerror}") from None
            return False


async def direct_device(nl: Netlink, config: NetworkConfig,
                        public_ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """With ``config``'s DirectRouting, the device a peer at ``public_ip`` (its PublicIP, or its
    PublicIPv6 for its IPv6 subnet) is reached on without a gateway (flannel's test: the kernel's
    route to it has none, so it is on our L2 segment); else None. Both
    VXLAN implementations decide with it, so a kernel and a userspace node route to each other alike."""
    if not config.backend.direct_routing:
        return None
    route = await nl.route_to(str(public_ip))
    return route.iface if route is not None and route.gateway is None else None


class KernelVxlanBackend(Backend):
    """VXLAN by the kernel, programmed per peer."""

    type_name = TYPE
    _version = 0  # of the peer tables, moved on after every apply
    _subnets: tuple[int, list[str]] = (-1, [])  # (table version, peer_subnets())
    _direct: tuple[int, int] = (-1, 0)  # (table version, direct peer nodes)
    _verified: int | None = None  # what the last pass that repaired nothing saw (see reconcile)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.vni = self.config.backend.vni
        self.versions = node_versions(self)
        ends = {4: (self.underlay.address, self.underlay.public_ip),
                6: (self.underlay.address6, self.underlay.public_ip6)}
        #: IP version -> its device; :attr:`device` is the first (flannel.<VNI> unless IPv6-only)
        self.vteps = {version: Vtep.of(version, self.vni, *ends[version]) for version in sorted(self.versions)}
        self.device = next(iter(self.vteps.values())).device if self.vteps else vtep_device(4, self.vni)
        # peer subnet (either family) -> (public IP, VtepMAC, the underlay device of its direct route or None)
        self.peers: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, tuple[str, str, str | None]] = {}
        self.skipped: set = set()  # peers (by lease.subnet) not routed to: a gauge, not a tally
        self.leases: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, Lease] = {}  # peer -> its programmed lease
        self._lock = asyncio.Lock()  # apply and reconcile: a peer being removed is never put back

    def device_mtu(self, version: int) -> int:
        """The MTU of the device for IP ``version``: flannel's (the underlay's, or Backend.MTU, minus
        50), and for flannel-v6.<VNI> 20 less, since its outer IPv6 header is 20 bytes longer."""
        return self.config.backend.overlay_mtu(self.underlay.mtu) - (20 if version == 6 else 0)

    @property
    def mtu(self) -> int:
        """Pods' MTU (subnet.env): the first device's, flannel.<VNI>'s, or flannel-v6.<VNI>'s on an
        IPv6-only node. A dual-stack node keeps the IPv4 one, as flannel does: an IPv6 packet
        above flannel-v6.<VNI>'s MTU gets Packet Too Big from the node (IPv6 path MTU discovery)."""
        return self.device_mtu(min(self.vteps, default=4))

    def backend_data(self) -> dict | None:
        """The lease's ``BackendData``: the IPv4 device's VNI and VtepMAC (None on an IPv6-only node)."""
        vtep = self.vteps.get(4)
        return None if vtep is None else {"VNI": self.vni, "VtepMAC": vtep.mac}

    def backend_v6_data(self) -> dict | None:
        """The lease's ``BackendV6Data``: the IPv6 device's VNI and VtepMAC (None without one)."""
        vtep = self.vteps.get(6)
        return None if vtep is None else {"VNI": self.vni, "VtepMAC": vtep.mac}

    async def preflight(self) -> None:
        """Refuse a UDP port held by anything but a VXLAN device, on the port of each family this
        node has a device of (see the module's port check)."""
        port = self.config.backend.port
        for version, vtep in self.vteps.items():
            if udp_port_free(version, port):
                continue
            async with Netlink() as nl:
                if await nl.vxlan_devices(port, version):
                    continue
            address = self.underlay.public_ip if version == 4 else f"[{self.underlay.public_ip6}]"
            raise PlumbingError(f"cannot open UDP {address}:{port} for {vtep.device}: port in use "
                                f"(held by {udp_port_holder(port)}; stop it or pick another Backend.Port)")

    async def setup(self, lease: Lease) -> None:
        self.lease = lease
        async with Netlink() as nl:
            for version in {4, 6} - self.vteps.keys():  # left from a run with that family on, with its peers'
                await nl.delete_link(vtep_device(version, self.vni))  # entries, which nothing would maintain
            await self._ensure_devices(nl)
            for vtep in self.vteps.values():
                if not ethtool.tx_checksum_offload(vtep.device):  # see the module's note
                    log.info("%s: transmit checksum offload is off (an operator's choice, or kept from an older "
                             "overlayd): 3-5x slower between kernel nodes; 'python -m overlayd.plumbing.ethtool %s "
                             "on' turns it back on", vtep.device, vtep.device)
                stale = await nl.flush_peer_state(vtep.device)  # the first listing re-adds live peers
                if stale:
                    log.info("%s: removed %d route/neighbour/FDB entries left from before", vtep.device, stale)

    async def _ensure_devices(self, nl: Netlink) -> None:
        own = {subnet.version: subnet for subnet in lease_subnets(self.lease)}
        for version, vtep in self.vteps.items():
            await nl.ensure_vxlan(vtep.device, vni=self.vni, port=self.config.backend.port,
                                  local=vtep.local, underlay_dev=self.underlay.iface,
                                  mac=vtep.mac, mtu=self.device_mtu(version),
                                  learning=False, udp_checksum=False)
            address = own[version].network_address
            await nl.ensure_address(vtep.device, ipaddress.ip_interface(f"{address}/{address.max_prefixlen}"))
            await nl.ensure_link_up(vtep.device)
            if version == 4:
                sysctl.disable_ipv6(vtep.device)
            sysctl.set_rp_filter(vtep.device, 2)

    async def reconcile(self, nl: Netlink) -> None:
        """Drift repair: the devices, then every peer's entries against one snapshot of them,
        what differs written in one batch (see :mod:`overlayd.plumbing.peerwrites`).

        A pass that finds nothing to repair remembers the kernel's listings and the peer
        tables' version: while both are the same, the next pass has nothing to parse or
        check (at 5000 peers that was ~100 ms of CPU every resync period)."""
        async with self._lock:
            await self._ensure_devices(nl)
            for subnet, (public_ip, _, direct) in list(self.peers.items()):
                if direct and direct != self.underlay.iface:  # no snapshot of that device: read its route
                    try:
                        await nl.ensure_route(subnet, direct, gateway=ipaddress.ip_address(public_ip))
                    except PlumbingError as exc:  # the other peers are still repaired
                        log.warning("peer %s on %s: cannot repair: %s", subnet, public_ip, exc)
            devices, underlay = await self._dumps(nl)  # one read for every peer: O(peers) a pass
            listed = hash((self._version, devices, underlay))
            if listed == self._verified:
                return
            state = ({version: dump.state() for version, dump in devices}, underlay and underlay.state())
            writes = Writes()
            for subnet, (public_ip, mac, direct) in self.peers.items():
                if not direct or direct == self.underlay.iface:
                    self._entries(writes, subnet, public_ip, mac, direct, state)
            for subnet, problem in (await nl.write(writes)).items():
                log.warning("peer %s on %s: cannot repair: %s", subnet, self.peers[subnet][0], problem)
            self._verified = None if writes else listed

    async def apply(self, batch: Batch) -> None:
        """Removals first, one subnet at a time; then every added peer's entries in one batch,
        written without reading the kernel first (``replace`` is idempotent): at 5000 peers a
        snapshot cost ~80 ms of every join."""
        try:
            async with self._lock, Netlink() as nl:
                for lease in batch.removed:
                    await self._forget_lease(nl, lease)
                writes, programmed = Writes(), []
                for lease in batch.added:
                    ends = [(subnet, public_ip, vxlan_peer_mac(lease, self.vni, subnet.version))
                            for subnet, public_ip in peer_routes(lease, self.versions)]
                    if not ends or any(mac is None for *_, mac in ends):
                        log.warning("peer %s on %s is not a VXLAN peer on VNI %d: skipped",
                                    lease.subnet, lease.public_ip, self.vni)
                        await self._forget_lease(nl, lease)  # it may have been one before this change
                        self.skipped.add(lease.subnet)
                        continue
                    dropped = lease_subnets(self.leases.get(lease.subnet)) - {subnet for subnet, *_ in ends}
                    self.leases[lease.subnet] = lease
                    for subnet in dropped:  # a changed lease lost a family: that family's entries go
                        await self._forget(nl, subnet)
                    for subnet, public_ip, mac in ends:
                        await self._program(nl, writes, lease.subnet, subnet, public_ip, mac)
                    programmed.append(lease)
                failed = await nl.write(writes)
                for lease in programmed:
                    if lease.subnet in failed:
                        log.warning("peer %s on %s: %s: skipped", lease.subnet, lease.public_ip, failed[lease.subnet])
                        await self._forget_lease(nl, lease)
                        self.skipped.add(lease.subnet)
                    else:
                        self.skipped.discard(lease.subnet)
        finally:
            self._version += 1  # the tables changed: peer_subnets() and stats() are made again

    async def teardown(self, nl: Netlink) -> None:
        """The devices go with their entries (:meth:`Backend.teardown` and the IPv6 one), and direct
        routes with them."""
        await super().teardown(nl)
        for vtep in self.vteps.values():
            await nl.delete_link(vtep.device)
        if self.config.backend.direct_routing:
            await delete_peer_routes(nl, self.config, self.lease)

    async def _dumps(self, nl: Netlink) -> tuple[tuple[tuple[int, DeviceDump], ...], DeviceDump | None]:
        """What the devices list, by IP version (and with DirectRouting, the underlay's routes)."""
        underlay = self.config.backend.direct_routing
        return (tuple([(version, await nl.device_dump(vtep.device)) for version, vtep in self.vteps.items()]),
                await nl.device_dump(self.underlay.iface, peers=False) if underlay else None)

    async def _program(self, nl: Netlink, writes: Writes, tag, subnet, public_ip, mac: str) -> None:
        """One subnet of a peer (of the lease known by ``tag``) into ``writes``."""
        new = (str(public_ip), mac, await direct_device(nl, self.config, public_ip))
        old = self.peers.get(subnet)
        if old is not None and old != new:  # moved, new MAC, or direct <-> encapsulated: start afresh
            await self._forget(nl, subnet)
        self._entries(writes, subnet, new[0], mac, new[2], None, tag)
        self.peers[subnet] = new
        if new[2]:
            log.info("peer %s on %s: direct route via %s (same segment, not encapsulated)", subnet, public_ip, new[2])

    def _entries(self, writes: Writes, subnet: ipaddress.IPv4Network | ipaddress.IPv6Network, public_ip: str,
                 mac: str, direct: str | None, state: tuple | None, tag=None) -> None:
        """A direct peer: a route via its public IP on ``direct`` (host-gw style); any other: the
        FDB entry, neighbour and onlink route through the VXLAN device of the subnet's family.
        Checked against ``state`` (the devices' snapshots, see :meth:`_state`) if given; tagged
        ``tag`` (the subnet itself by default)."""
        tag = subnet if tag is None else tag
        devices, underlay = state or (None, None)
        if direct:
            writes.route(tag, subnet, direct, gateway=ipaddress.ip_address(public_ip), state=underlay)
            return
        name, device = self.vteps[subnet.version].device, devices and devices[subnet.version]
        gateway = vtep_gateway(subnet)
        writes.fdb(tag, mac, public_ip, name, device)
        writes.neighbour(tag, gateway, mac, name, device)
        writes.route(tag, subnet, name, gateway=gateway, onlink=True, state=device)

    async def _forget_lease(self, nl: Netlink, lease: Lease) -> None:
        """Forget every subnet of a peer's lease (and of the one programmed before it)."""
        self.skipped.discard(lease.subnet)
        for subnet in lease_subnets(lease) | lease_subnets(self.leases.pop(lease.subnet, None)):
            await self._forget(nl, subnet)

    async def _forget(self, nl: Netlink, subnet: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
        """Remove a peer subnet's route, neighbour and FDB entry, or its direct route (whatever of them exists)."""
        old = self.peers.pop(subnet, None)
        if old is not None and old[2]:
            await nl.delete_route(subnet, dev=old[2])
            return
        vtep = self.vteps.get(subnet.version)
        if vtep is None:
            return
        await nl.delete_route(subnet, dev=vtep.device)
        await nl.delete_neighbour(vtep_gateway(subnet), vtep.device)
        if old is not None:
            await nl.delete_fdb(old[1], vtep.device, old[0])

    # These are also read by the health server's thread: list() copies the dict in C, under the
    # GIL, before any Python-level iteration (which a peer change could interrupt). Both are made
    # again only after a change (systemd's status line and the status file ask every 1-2 s: at
    # 5000 peers sorting them took ~15 ms each time); a result is kept with the table version
    # read before it was made, so one made during a change is made again after it.
    def peer_subnets(self) -> list[str]:
        """The peer subnets programmed, sorted (the same list object until the next change)."""
        version, subnets = self._subnets
        if version != self._version:
            version = self._version
            subnets = sorted(str(s) for s in list(self.peers))
            self._subnets = (version, subnets)
        return subnets

    def device_statistics(self) -> dict[str, int] | None:
        """The VXLAN device's counters (module function, read at scrape time)."""
        return read_device_statistics(self.device)

    def stats(self) -> dict:
        """``peers``: the peer subnets programmed (a table size); ``direct_peers``: the peer nodes with
        a direct route for a subnet of either family (a dual-stack peer counts once, as in overlayd_peers)."""
        version, direct_peers = self._direct
        if version != self._version:
            version = self._version
            # dict.copy() runs no Python code, list(items()) may (a collection): the control loop changes peers
            direct = {subnet for subnet, (*_, dev) in self.peers.copy().items() if dev}
            direct_peers = sum(1 for lease in list(self.leases.values()) if lease_subnets(lease) & direct) \
                if direct else 0
            self._direct = (version, direct_peers)
        return {"peers": len(self.peers), "skipped_peers": len(self.skipped), "direct_peers": direct_peers}


SPEC = BackendSpec(TYPE, KEYS, OVERHEAD, parse, implementation, devices=r"flannel(-v6)?\.[0-9]+")
