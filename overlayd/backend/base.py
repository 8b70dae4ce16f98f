"""The backend interface (flannel's ``pkg/backend/common.go``, in Python).

A backend turns a leased subnet into working plumbing and keeps it in step
with the peers: it says what to publish in the lease (``lease_attrs``), sets
up the node (``setup``), applies peer changes (``apply``), runs its data
plane, if it has one (``run``), and puts back what an operator removed
(``reconcile``). The lease machinery never looks inside.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import ipaddress
from typing import TYPE_CHECKING

from ..lease.model import Lease, LeaseAttrs
from ..lease.watcher import Batch
from ..netconf import NetworkConfig

if TYPE_CHECKING:
    from ..plumbing.iface import Choice
    from ..plumbing.netlink import Netlink


@dataclasses.dataclass(frozen=True)
class Underlay:
    """The node's own network: the interface peers reach it on, its addresses there (the
    tunnels' local ends) and the public IPs peers send to (others behind NAT), per family:
    ``public_ip`` None on an IPv6-only node, ``public_ip6`` None on a node without IPv6
    (:class:`overlayd.plumbing.iface.Choice` has them as the config's families need them)."""

    iface: str
    public_ip: ipaddress.IPv4Address | None
    mtu: int
    address: ipaddress.IPv4Address | None = None  # None: the public IP
    public_ip6: ipaddress.IPv6Address | None = None  # the lease's PublicIPv6
    address6: ipaddress.IPv6Address | None = None  # None: the public IPv6

    def __post_init__(self):
        if self.address is None:
            object.__setattr__(self, "address", self.public_ip)
        if self.address6 is None:
            object.__setattr__(self, "address6", self.public_ip6)

    @classmethod
    def from_choice(cls, choice: "Choice") -> "Underlay":
        """The underlay :func:`overlayd.plumbing.iface.choose` picked (``Netlink.underlay``)."""
        return cls(choice.iface, choice.public_ip, choice.mtu, choice.address, choice.public_ip6, choice.address6)


@dataclasses.dataclass(frozen=True)
class NodeOptions:
    """Per-node choices from the daemon's flags that backends may read."""

    vxlan_impl: str = "user"
    use_uvloop: bool = False
    datapath: str = "python"  # "c": the userspace backends' C engine (overlayd._fastpath)
    udp_checksum: bool = False  # send checksummed UDP (the C engine then uses UDP GSO); default: checksum 0
    state_dir: str = "/var/lib/overlayd"  # files kept across restarts and reboots (wireguard's private key)


class Backend(abc.ABC):
    """One encapsulation (or none): udp, vxlan, host-gw."""

    #: the ``BackendType`` published in leases
    type_name: str = ""
    #: the overlay device this backend makes ("" if none, as host-gw)
    device: str = ""

    def __init__(self, config: NetworkConfig, underlay: Underlay, options: NodeOptions):
        self.config = config
        self.underlay = underlay
        self.options = options
        self.lease: Lease | None = None

    @property
    def mtu(self) -> int:
        """The overlay MTU (pods get it through subnet.env)."""
        return self.config.backend.overlay_mtu(self.underlay.mtu)

    def lease_attrs(self) -> LeaseAttrs:
        """What this node publishes in its lease: ``PublicIP`` and ``PublicIPv6`` (the underlay's,
        either None when the node has no such family), ``BackendType``, ``BackendData`` and
        ``BackendV6Data``."""
        return LeaseAttrs(self.underlay.public_ip, self.type_name, self.backend_data(),
                          public_ip6=self.underlay.public_ip6, backend_v6_data=self.backend_v6_data())

    def backend_data(self) -> dict | None:
        """The lease's ``BackendData`` (None for backends that publish none)."""
        return None

    def backend_v6_data(self) -> dict | None:
        """The lease's ``BackendV6Data``: what peers need to reach this node's IPv6 side (flannel's
        kernel VXLAN: the IPv6 device's VNI and VtepMAC); None for backends that publish none."""
        return None

    async def preflight(self) -> None:
        """Refuse (ConfigError) before any lease is taken if this node cannot run the backend."""

    @abc.abstractmethod
    async def setup(self, lease: Lease) -> None:
        """Create devices, addresses and routes for ``lease``; idempotent."""

    @abc.abstractmethod
    async def apply(self, batch: Batch) -> None:
        """Peers appeared, changed or left."""

    async def run(self) -> None:
        """The data plane, until cancelled. Kernel-only backends have none: they idle
        here, since the daemon treats any of its loops ending as fatal."""
        await asyncio.Future()

    async def reconcile(self, nl: "Netlink") -> None:
        """Drift repair, called every resync period after :meth:`setup`: put back the kernel
        state this backend owns (device, address, routes, peers' entries) where it is
        missing or wrong, and write nothing where it is right (``nl.changes`` says what was done)."""

    async def teardown(self, nl: "Netlink") -> None:
        """``--cleanup-on-exit``: release (:meth:`close`) and remove the kernel state this backend
        made. Here: delete :attr:`device`, which takes its addresses, routes, neighbours and FDB
        entries along; backends with state elsewhere extend it."""
        await self.close()
        if self.device:
            await nl.delete_link(self.device)

    def stats(self) -> dict:
        """Counters for status output."""
        return {}

    def peer_stats(self, now: float | None = None) -> list[dict]:
        """Per-peer sessions, for backends that keep them (wireguard): one row per peer node and device,
        with its lease ``subnet``, ``device``, ``public_key``, ``endpoint``, ``subnets`` there,
        ``latest_handshake`` (epoch seconds, 0: never), ``handshake_age`` (seconds at ``now``, None:
        never), ``stalled`` (sending without a session) and ``rx_bytes``/``tx_bytes``. The status file
        and /metrics show them. Here: none."""
        return []

    def device_statistics(self) -> dict[str, int] | None:
        """The kernel's own counters of an overlay device the kernel forwards through (``rx_packets``,
        ``tx_bytes``, ... as sysfs names them), read now; None where overlayd's data plane counts instead
        (or the device is gone). Called from the health server's thread."""
        return None

    @abc.abstractmethod
    def peer_subnets(self) -> list[str]:
        """The peer subnets this node can currently reach (for status output)."""

    async def close(self) -> None:
        """Release file descriptors and sockets (devices and routes stay, like flannel's)."""


def lease_subnets(lease: Lease | None) -> set[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The subnets of ``lease`` (one or two; none for None)."""
    return set() if lease is None else {lease.subnet, lease.subnet6} - {None}


async def delete_peer_routes(nl: "Netlink", config: NetworkConfig, lease: Lease | None) -> None:
    """Delete every route to a peer-sized subnet of ``config``'s Network (either family's) but
    ``lease``'s,
    through any device, known or not: host-gw's and VXLAN's direct routes on the underlay, kernel
    VXLAN's on ``flannel.<VNI>`` (a device that outlives the daemon). The daemon calls it before any
    backend's :meth:`~Backend.setup`, so routes left by an earlier run, or by another backend before
    the operator switched (pod packets in the clear beside a WireGuard device), are gone; a backend
    that routes per peer puts back the live ones from the first listing."""
    own = frozenset(lease_subnets(lease))
    for pool in (config.ipv4, config.ipv6):
        if pool is not None:
            await nl.delete_routes_within(pool.network, prefixlen=pool.subnet_len, keep=own)
