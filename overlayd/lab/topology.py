"""A multi-node overlayd cluster in network namespaces on one machine.

One implementation serves ``scripts/lab`` and the end-to-end tests. Layout
(``P`` is the lab's namespace prefix, e.g. ``ovl-lab``)::

    P-ul    the underlay: bridge br0 and one veth port per attached namespace
    P-etcd  etcd on 198.18.0.2, on a port the lab picks
    P-etcd2 with ``etcd_members=3``: members 2 and 3 on 198.18.0.3 and .4 (P-etcd3)
    P-n1    node1: eth0 198.18.0.11/24, overlayd, cni0, tun0/overlay0/flannel.1
    P-n1p1  a pod of node1, joined to node1's cni0 by our CNI plugin

IP families (``ip_family``): ``ipv4`` (the default) is the lab as it always
was. ``dual`` and ``ipv6`` give every underlay port an IPv6 address too, from
the documentation range on the same bridge (:func:`underlay_ip6`: 198.18.0.11
is also 2001:db8::11/64; added without duplicate detection, so usable at
once), and a network config with ``EnableIPv6`` and the pod range
fd00:10:244::/56 in /64 subnets (``ipv6``: ``EnableIPv4`` false as well; etcd
is still reached over IPv4, the control plane's underlay). Pods get an
address of each family the network has, and the ping matrix covers each.

Nothing is linked to the machine's own network: the underlay bridge lives in
its own namespace, veth pairs are created there with the far end moved
straight into the target namespace, and no namespace gets a default route.
The lab's state (names, addresses, PIDs) is kept in ``<state_dir>/lab.json``,
written after every step, so ``down`` can clean up even after a failed
``up`` or from another process. Processes are stopped only by the PIDs the
lab recorded, and only if their command line still names the lab's state
directory (a PID reused by an unrelated process is left alone).

Fault tests drive the same processes: :meth:`Lab.stop_node`,
:meth:`Lab.kill_node` (SIGKILL: devices, routes and files stay as a crash
leaves them), :meth:`Lab.restart_node`, :meth:`Lab.stop_etcd` /
:meth:`Lab.start_etcd` (same data directory and ports, so leases survive)
and :meth:`Lab.pause_etcd` / :meth:`Lab.resume_etcd` (SIGSTOP/SIGCONT), each
for every etcd member or, with ``member=i``, for member i alone (0-based).
With ``etcd_tls`` the lab makes a CA, a server certificate per member and a
client certificate in ``<state_dir>/pki`` (:class:`LabPKI`); client URLs are
https with ``--client-cert-auth`` and every client the lab runs (daemons,
overlayctl, etcdctl) gets the certificate flags or variables.
A node's ``extra_args`` are added to its daemon's command line on every start.

With ``machines=True`` (``scripts/lab up --machines``) each node is a booted
Debian 12 machine in its namespace running the shipped systemd unit
(:mod:`overlayd.lab.machines`): the node methods then act through
``systemctl`` inside it (``stop_node`` is ``systemctl stop overlayd``,
``kill_node`` and ``pause_node`` signal the unit's main process, after which
systemd does what the unit says), a node's ``pid`` is its machine's, and
:meth:`Lab.reboot_node` reboots the machine. Its nodes boot side by side.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from ..atomicfile import write_atomic
from ..backend import registry
from ..errors import ConfigError, OverlayError
from ..netconf import parse_config
from .etcd import EtcdServer, LabPKI, free_port

UNDERLAY = ipaddress.IPv4Network("198.18.0.0/24")
UNDERLAY6 = ipaddress.IPv6Network("2001:db8::/64")  # documentation range, never routed out
NETWORK6 = "fd00:10:244::/56"  # the pods' IPv6 range (a ULA), /64 per node
SERVICE_NETWORK = "10.96.0.0/16"  # the ClusterIPs (services are IPv4: not in an IPv6-only lab)
IP_FAMILIES = {"ipv4": (4,), "dual": (4, 6), "ipv6": (6,)}  # --ip-family -> IP versions of the network
ETCD_IP = "198.18.0.2"      # etcd member i (0-based) gets 198.18.0.(2 + i)
ETCD_MEMBERS = (1, 3)
NODE_IP_BASE = 10           # node N gets 198.18.0.(10 + N)
EXTRA_IP_BASE = 200         # extra hosts on the underlay (an "external" host, a rogue sender)
NODE_FILES = ("log", "status_file", "subnet_file", "daemon_state_dir")  # node keys of to_dict() from state_dir
WG_RUN = "/run/wireguard"  # wireguard-go's UAPI sockets: a file-system path, not a network namespace's
PREFIX = "/coreos.com/network"
CNI_PATH = "/usr/lib/cni"
VENV_BIN = Path(sys.executable).parent


class LabError(OverlayError):
    """The lab could not be built or driven."""


def _bin(name: str) -> str:
    path = VENV_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        raise LabError(f"{name} not found (run scripts/install)")
    return found


def run(argv: list[str], check: bool = True, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    """Run a command, capturing text output; :class:`LabError` naming it when it fails."""
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired:
        raise LabError(f"timed out after {timeout}s: {' '.join(argv)}") from None
    if check and res.returncode != 0:
        detail = (res.stderr or res.stdout).strip().splitlines()
        raise LabError(f"{' '.join(argv)}: {detail[-1] if detail else f'exit {res.returncode}'}")
    return res


def netns_exists(name: str) -> bool:
    return os.path.exists(f"/var/run/netns/{name}")


def underlay_ip6(ip: str) -> str:
    """The IPv6 underlay address of the lab port with IPv4 address ``ip``: the same last digits in
    :data:`UNDERLAY6` (198.18.0.11 -> 2001:db8::11), so the two read alike. Pure."""
    return str(ipaddress.IPv6Address(f"{UNDERLAY6.network_address}{ip.rsplit('.', 1)[1]}"))


def network_config(backend: str, network: str, vni: int, port: int, ip_family: str = "ipv4") -> dict:
    """The lab's network config (flannel's net-conf JSON) for ``ip_family``; pure.

    ``dual`` adds ``EnableIPv6`` with :data:`NETWORK6` in /64 subnets; ``ipv6`` also
    sets ``EnableIPv4`` false and leaves the IPv4 keys out (flannel ignores them then).
    A network with IPv4 has the ``ServiceNetwork`` :data:`SERVICE_NETWORK` (issue 22).
    """
    versions = IP_FAMILIES[ip_family]
    backend_conf = {"Type": backend}
    keys = registry.spec(backend).keys  # ``port`` and ``vni`` for the backends that have them
    if "Port" in keys:
        backend_conf["Port"] = port
    if "VNI" in keys:
        backend_conf["VNI"] = vni
    config = {"Network": network, "SubnetLen": 24} if 4 in versions else {"EnableIPv4": False}
    if 4 in versions:
        config["ServiceNetwork"] = SERVICE_NETWORK
    if 6 in versions:
        config.update(EnableIPv6=True, IPv6Network=NETWORK6, IPv6SubnetLen=64)
    config["Backend"] = backend_conf
    return config


@dataclasses.dataclass
class Pod:
    name: str
    netns: str
    node: str
    ip: str = ""  # IPv4 ("" in an IPv6-only lab)
    container_id: str = ""
    ip6: str = ""  # IPv6 ("" unless the network has IPv6)
    server_pid: int | None = None  # the demo service's server in the pod (overlayd.lab.demo)

    def address(self, version: int) -> str:
        """The pod's address of IP ``version`` ("" if it has none)."""
        return self.ip if version == 4 else self.ip6


@dataclasses.dataclass
class Node:
    name: str
    netns: str
    ip: str
    vxlan_impl: str = "user"
    event_loop: str = "asyncio"
    ip_masq: bool = False
    datapath: str | None = None  # None: the daemon's default
    extra_args: list[str] = dataclasses.field(default_factory=list)  # more overlayd flags
    pid: int | None = None
    pods: list[Pod] = dataclasses.field(default_factory=list)
    ip6: str = ""  # the IPv6 underlay address (dual and ipv6 labs)


@dataclasses.dataclass
class Host:
    """A plain namespace on the underlay with no overlayd (external host, rogue sender)."""

    name: str
    netns: str
    ip: str
    ip6: str = ""  # the IPv6 underlay address (dual and ipv6 labs)


class Lab:
    """Build, drive and tear down a lab; see the module docstring for the layout."""

    def __init__(self, state_dir: str, prefix: str = "ovl-lab", backend: str = "udp",
                 network: str = "10.244.0.0/16", vni: int = 1, port: int = 8472,
                 lease_ttl: int = 3600, progress: Callable[[str], None] | None = None,
                 etcd_members: int = 1, etcd_tls: bool = False, ip_family: str = "ipv4",
                 machines: bool = False):
        if ip_family not in IP_FAMILIES:
            raise LabError(f"ip_family must be one of {', '.join(IP_FAMILIES)}, not {ip_family!r}")
        if len(prefix) > 8:
            raise LabError(f"lab prefix {prefix!r} is too long (8 characters at most)")
        if etcd_members not in ETCD_MEMBERS:
            raise LabError(f"etcd_members must be one of {ETCD_MEMBERS}, not {etcd_members}")
        self.state_dir = os.path.abspath(state_dir)
        self.prefix = prefix
        self.backend = backend
        self.network = network
        self.vni = vni
        self.port = port
        self.lease_ttl = lease_ttl
        self.etcd_port = 0
        self.etcd_peer_port = 0
        self.etcd_pids: list[int | None] = [None] * etcd_members  # one per member
        self.etcd_tls = etcd_tls
        self.ip_family = ip_family
        self.machines = machines  # nodes are booted machines running the systemd unit
        self.pod_services: tuple[str, ...] = ()  # services new pods join through CNI (overlayd.lab.demo)
        self.nodes: list[Node] = []
        self.hosts: list[Host] = []
        self.namespaces: list[str] = []  # every namespace created, in creation order
        self._children: set[int] = set()  # PIDs this Lab object spawned itself
        self._save_lock = threading.Lock()  # a machines lab's nodes boot side by side
        self.progress = progress or (lambda msg: None)

    @functools.cached_property
    def _machines(self):
        """What the nodes of a machines lab do (:class:`overlayd.lab.machines.MachineNodes`)."""
        from .machines import MachineNodes  # imports this module

        return MachineNodes(self)

    # -- state ------------------------------------------------------------------

    @property
    def versions(self) -> tuple[int, ...]:
        """The IP versions of the pod network (and of the underlay's tunnels): (4,), (4, 6) or (6,)."""
        return IP_FAMILIES[self.ip_family]

    @property
    def underlay_ns(self) -> str:
        return f"{self.prefix}-ul"

    @property
    def etcd_ns(self) -> str:
        """Member 0's namespace (etcd's, in a one-member lab)."""
        return self.etcd_member_ns(0)

    def etcd_member_ns(self, member: int) -> str:
        return f"{self.prefix}-etcd{member + 1 if member else ''}"

    @staticmethod
    def etcd_member_ip(member: int) -> str:
        return str(ipaddress.IPv4Address(ETCD_IP) + member)

    def etcd_member_endpoint(self, member: int) -> str:
        return f"{'https' if self.etcd_tls else 'http'}://{self.etcd_member_ip(member)}:{self.etcd_port}"

    @property
    def etcd_pid(self) -> int | None:
        """Member 0's PID (etcd's, in a one-member lab)."""
        return self.etcd_pids[0]

    @property
    def etcd_endpoint(self) -> str:
        """Member 0's client URL (etcd's, in a one-member lab)."""
        return self.etcd_member_endpoint(0)

    @property
    def etcd_endpoints(self) -> str:
        """Every member's client URL, comma-separated, as overlayd's --etcd-endpoints takes them."""
        return ",".join(self.etcd_member_endpoint(i) for i in range(len(self.etcd_pids)))

    @property
    def pki(self) -> LabPKI | None:
        """The lab's certificates (``etcd_tls``), else None."""
        return LabPKI(os.path.join(self.state_dir, "pki")) if self.etcd_tls else None

    def to_dict(self) -> dict:
        """The lab's topology, as ``scripts/lab status --json`` prints it."""
        return {
            "prefix": self.prefix, "state_dir": self.state_dir, "backend": self.backend,
            "network": self.network, "vni": self.vni, "port": self.port, "lease_ttl": self.lease_ttl,
            "ip_family": self.ip_family, "network6": NETWORK6 if 6 in self.versions else None,
            "machines": self.machines, "pod_services": list(self.pod_services),
            "underlay": {"netns": self.underlay_ns, "network": str(UNDERLAY),
                         "network6": str(UNDERLAY6) if 6 in self.versions else None},
            "etcd": {"netns": self.etcd_ns, "endpoint": self.etcd_endpoint if self.etcd_port else None,
                     "port": self.etcd_port, "peer_port": self.etcd_peer_port, "pid": self.etcd_pid,
                     "tls": self.etcd_tls, "pki": self.pki.directory if self.pki else None,
                     "members": [{"netns": self.etcd_member_ns(i), "ip": self.etcd_member_ip(i),
                                  "endpoint": self.etcd_member_endpoint(i), "pid": pid}
                                 for i, pid in enumerate(self.etcd_pids)],
                     "prefix": PREFIX},
            "nodes": [{**dataclasses.asdict(n), **self.node_files(n)} for n in self.nodes],
            "hosts": [dataclasses.asdict(h) for h in self.hosts],
            "namespaces": self.namespaces,
        }

    def save(self) -> None:
        with self._save_lock:
            write_atomic(os.path.join(self.state_dir, "lab.json"), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, state_dir: str, progress: Callable[[str], None] | None = None) -> "Lab":
        """The lab recorded in ``state_dir``; :class:`LabError` if there is none."""
        try:
            with open(os.path.join(state_dir, "lab.json"), encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise LabError(f"no lab in {state_dir} (start one with 'scripts/lab up')") from None
        except (OSError, ValueError) as exc:
            raise LabError(f"cannot read {state_dir}/lab.json: {exc}") from None
        members = data["etcd"].get("members") or [{"pid": data["etcd"]["pid"]}]
        lab = cls(state_dir, data["prefix"], data["backend"], data["network"], data["vni"], data["port"],
                  data["lease_ttl"], progress, len(members), data["etcd"].get("tls", False),
                  data.get("ip_family", "ipv4"), data.get("machines", False))
        lab.etcd_port, lab.etcd_pids = data["etcd"]["port"], [m["pid"] for m in members]
        lab.etcd_peer_port = data["etcd"].get("peer_port", 0)
        lab.pod_services = tuple(data.get("pod_services", ()))
        for n in data["nodes"]:
            pods = [Pod(**p) for p in n.pop("pods")]
            for derived in NODE_FILES:
                n.pop(derived, None)
            lab.nodes.append(Node(**n, pods=pods))
        lab.hosts = [Host(**h) for h in data["hosts"]]
        lab.namespaces = data["namespaces"]
        return lab

    def node(self, name: str) -> Node:
        """The node called ``name`` (node1, node2, ...)."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise LabError(f"no node {name!r} in this lab (nodes: {', '.join(n.name for n in self.nodes) or 'none'})")

    def node_dir(self, node: Node) -> str:
        return os.path.join(self.state_dir, node.name)

    def subnet_file(self, node: Node) -> str:
        """``node``'s subnet.env (a machine's, as this host reaches it)."""
        if self.machines:
            return self._machines.path(node, "/run/flannel/subnet.env")
        return os.path.join(self.node_dir(node), "subnet.env")

    def status_file(self, node: Node) -> str:
        """``node``'s status file (a machine's, as this host reaches it)."""
        if self.machines:
            return self._machines.path(node, "/run/overlayd/status.json")
        return os.path.join(self.node_dir(node), "status.json")

    def log_file(self, node: Node) -> str:
        """``node``'s daemon log (a machine's console: its overlayd logs to the machine's journal)."""
        if self.machines:
            return self._machines.machine(node).console
        return os.path.join(self.node_dir(node), "overlayd.log")

    def daemon_state_dir(self, node: Node) -> str:
        """``node``'s daemon's ``--state-dir`` (its wireguard key)."""
        return os.path.join(self.node_dir(node), "state")

    def wg_run_dir(self, node: Node) -> str:
        """What ``node``'s daemon sees as :data:`WG_RUN` (see :meth:`start_node`)."""
        return os.path.join(self.node_dir(node), "wireguard-run")

    def node_files(self, node: Node) -> dict[str, str]:
        """Where ``node``'s daemon writes, by :data:`NODE_FILES` key (in ``status --json``)."""
        return {"log": self.log_file(node), "status_file": self.status_file(node),
                "subnet_file": self.subnet_file(node), "daemon_state_dir": self.daemon_state_dir(node)}

    def pods(self) -> list[Pod]:
        return [p for n in self.nodes for p in n.pods]

    # -- building ----------------------------------------------------------------

    def up(self, nodes: int = 3, pods_per_node: int = 1, variants: list[dict] | None = None) -> None:
        """Underlay, etcd and the network config, ``nodes`` nodes, ``pods_per_node`` pods each.

        ``variants[i]`` gives node i+1's options (``vxlan_impl``, ``event_loop``, ``ip_masq``).
        """
        if os.path.exists(os.path.join(self.state_dir, "lab.json")):
            raise LabError(f"a lab already exists in {self.state_dir} ('scripts/lab down' first)")
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces)")
        if self.machines:
            self._machines.image()  # built (once per recipe) before the lab makes anything
        os.makedirs(self.state_dir, exist_ok=True)
        self.save()
        self.progress("underlay bridge")
        self._add_netns(self.underlay_ns)
        self._ip(self.underlay_ns, "link", "add", "br0", "type", "bridge")
        self._ip(self.underlay_ns, "link", "set", "br0", "up")
        members = range(len(self.etcd_pids))
        self.progress(f"etcd ({len(members)} member{'s' if len(members) > 1 else ''}"
                      f"{', TLS' if self.etcd_tls else ''})")
        for i in members:
            self._attach(self.etcd_member_ns(i), f"etcd{i + 1 if i else ''}", self.etcd_member_ip(i))
        if self.etcd_tls:
            LabPKI.create(self.pki.directory, {self._etcd_name(i): self.etcd_member_ip(i) for i in members})
        self.start_etcd()
        self.set_config()
        options = [variants[i] if variants and i < len(variants) else {} for i in range(nodes)]
        if not self.machines:
            for variant in options:
                self.add_node(**variant, pods=pods_per_node)
            return
        added = [self._new_node(**variant) for variant in options]
        self._machines.boot_all(added)
        for node in added:
            for _ in range(pods_per_node):
                self.add_pod(node)

    def _add_netns(self, name: str) -> None:
        if netns_exists(name):
            raise LabError(f"namespace {name} already exists (a lab left behind? 'scripts/lab down')")
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        self.save()
        self._ip(name, "link", "set", "lo", "up")

    @staticmethod
    def _ip(netns: str, *args: str) -> subprocess.CompletedProcess:
        return run(["ip", "-n", netns, *args])

    def _attach(self, netns: str, port: str, ip: str) -> str:
        """A new namespace with eth0 (``ip``/24) on the underlay bridge, and in a lab with IPv6
        also :func:`underlay_ip6` of it (/64, no duplicate detection); that address, or ""."""
        self._add_netns(netns)
        self._ip(self.underlay_ns, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns)
        self._ip(self.underlay_ns, "link", "set", port, "master", "br0", "up")
        self._ip(netns, "addr", "add", f"{ip}/{UNDERLAY.prefixlen}", "dev", "eth0")
        ip6 = ""
        if 6 in self.versions:
            ip6 = underlay_ip6(ip)
            self._ip(netns, "addr", "add", f"{ip6}/{UNDERLAY6.prefixlen}", "dev", "eth0", "nodad")
        self._ip(netns, "link", "set", "eth0", "up")
        return ip6

    def _spawn(self, netns: str, argv: list[str], log_path: str, env: dict | None = None) -> int:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(["ip", "netns", "exec", netns, *argv], stdout=log, stderr=log,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    env=dict(os.environ, **(env or {})))
        self._children.add(proc.pid)
        return proc.pid

    def _etcd_name(self, member: int) -> str:
        return f"{self.prefix}{member + 1 if member else ''}"

    def _etcd_members(self, member: int | None) -> list[int]:
        if member is None:
            return list(range(len(self.etcd_pids)))
        if not 0 <= member < len(self.etcd_pids):
            raise LabError(f"no etcd member {member} (this lab has {len(self.etcd_pids)}: 0-based)")
        return [member]

    def _etcd_server(self, member: int) -> EtcdServer:
        if not self.etcd_port:
            self.etcd_port, self.etcd_peer_port = free_port(), free_port()
        names = range(len(self.etcd_pids))
        data_dir = os.path.join(self.state_dir, f"etcd{member + 1 if member else ''}")
        cluster = {self._etcd_name(i): f"http://{self.etcd_member_ip(i)}:{self.etcd_peer_port}" for i in names}
        return EtcdServer(data_dir, host=self.etcd_member_ip(member), port=self.etcd_port,
                          peer_port=self.etcd_peer_port, netns=self.etcd_member_ns(member),
                          name=self._etcd_name(member), cluster=cluster, pki=self.pki)

    def start_etcd(self, timeout: float = 20, member: int | None = None) -> None:
        """Start etcd (every member that is not running, or ``member``), again after
        :meth:`stop_etcd` on the same ports and data (leases survive)."""
        todo = [i for i in self._etcd_members(member) if not _alive(self.etcd_pids[i])]
        if not todo:
            raise LabError(f"etcd already runs (pid {', '.join(str(p) for p in self.etcd_pids)})")
        servers = {i: self._etcd_server(i) for i in todo}
        try:
            for i, server in servers.items():  # all first: a new cluster's members need each other
                server.start(timeout, wait=False)
                self.etcd_pids[i] = server.pid
                self._children.add(server.pid)
                self.save()
            for server in servers.values():
                server.wait_healthy(timeout)
        except RuntimeError as exc:
            for i, server in servers.items():
                server.stop()
                self.etcd_pids[i] = None
            self.save()
            raise LabError(str(exc)) from None

    def stop_etcd(self, sig: int = signal.SIGTERM, member: int | None = None) -> None:
        """Stop etcd, every member or ``member`` (``sig``: SIGTERM, or SIGKILL for a crash);
        :meth:`start_etcd` brings it back."""
        for i in self._etcd_members(member):
            if self.etcd_pids[i] is not None:
                self._stop_pid(self.etcd_pids[i], sig)
            self.etcd_pids[i] = None
        self.save()

    def restart_etcd(self, member: int | None = None) -> None:
        """Stop (SIGTERM) and start etcd (every member, or ``member``) on the same ports and data."""
        self.stop_etcd(member=member)
        self.start_etcd(member=member)

    def pause_etcd(self, member: int | None = None) -> None:
        """Freeze etcd, every member or ``member`` (SIGSTOP): its port stays open, nothing answers."""
        for i in self._etcd_members(member):
            self._signal(self.etcd_pids[i], signal.SIGSTOP, f"etcd member {i}")

    def resume_etcd(self, member: int | None = None) -> None:
        """Let paused etcd members (or ``member``) run again (SIGCONT)."""
        for i in self._etcd_members(member):
            self._signal(self.etcd_pids[i], signal.SIGCONT, f"etcd member {i}")

    def etcd_members_used(self, node: Node) -> set[int]:
        """The etcd members ``node``'s overlayd has a TCP connection to right now (``ss``)."""
        res = run(["ip", "netns", "exec", node.netns, "ss", "-Htnp", "state", "established"], timeout=10)
        ips = {self.etcd_member_ip(i): i for i in range(len(self.etcd_pids))}
        used = set()
        for line in res.stdout.splitlines():
            fields = line.split()
            if len(fields) >= 4 and f"pid={node.pid}," in line:
                host, _, port = fields[3].rpartition(":")
                host = host.strip("[]").removeprefix("::ffff:")  # IPv4-mapped on a dual-stack socket
                if host in ips and port == str(self.etcd_port):
                    used.add(ips[host])
        return used

    def pause_node(self, node: Node) -> None:
        """Freeze overlayd on ``node`` (SIGSTOP): a wedged daemon whose kernel state stays (on a
        machine, until systemd's watchdog kills and restarts it)."""
        if self.machines:
            self._machines.signal(node, signal.SIGSTOP)
            return
        self._signal(node.pid, signal.SIGSTOP, f"overlayd on {node.name}")

    def resume_node(self, node: Node) -> None:
        """Let a paused overlayd run again (SIGCONT)."""
        if self.machines:
            self._machines.signal(node, signal.SIGCONT)
            return
        self._signal(node.pid, signal.SIGCONT, f"overlayd on {node.name}")

    def _signal(self, pid: int | None, sig: int, what: str) -> None:
        if pid is None or not self._ours(pid):
            raise LabError(f"{what} is not running")
        os.kill(pid, sig)

    def etcd_env(self) -> dict:
        """The environment that points overlayd/overlayctl at the lab's etcd (all members, certificates)."""
        env = {"OVERLAYD_ETCD_ENDPOINTS": self.etcd_endpoints, "OVERLAYD_ETCD_PREFIX": PREFIX}
        if self.pki:
            env.update(OVERLAYD_ETCD_CAFILE=self.pki.ca, OVERLAYD_ETCD_CERTFILE=self.pki.client_cert,
                       OVERLAYD_ETCD_KEYFILE=self.pki.client_key)
        return env

    def overlayctl(self, *args: str, netns: str | None = None, check: bool = True,
                   input: str | None = None) -> subprocess.CompletedProcess:
        """Run ``overlayctl ARGS`` inside ``netns`` (default: etcd's) against the lab's etcd."""
        return run(["ip", "netns", "exec", netns or self.etcd_ns, _bin("overlayctl"), *args],
                   check=check, input=input, env=dict(os.environ, **self.etcd_env()))

    def etcdctl(self, *args: str, check: bool = True, member: int = 0) -> subprocess.CompletedProcess:
        """Run ``etcdctl ARGS`` (v3 API) inside ``member``'s namespace against that member,
        as an operator would (with the client certificate in a TLS lab)."""
        tls = self.pki.etcdctl_args() if self.pki else []
        return run(["ip", "netns", "exec", self.etcd_member_ns(member), "etcdctl", "--endpoints",
                    self.etcd_member_endpoint(member), *tls, *args],
                   check=check, env=dict(os.environ, ETCDCTL_API="3"))

    def set_config(self) -> None:
        """Write :func:`network_config` to etcd: with ``overlayctl config set`` for IPv4, with
        ``etcdctl put`` (checked by :func:`~overlayd.netconf.parse_config` first) for a network
        with IPv6, which ``overlayctl`` refuses while the daemon carries IPv4 only."""
        config = network_config(self.backend, self.network, self.vni, self.port, self.ip_family)
        if 6 not in self.versions:
            self.overlayctl("config", "set", "-", input=json.dumps(config))
            return
        try:
            parse_config(config)
        except ConfigError as exc:
            raise LabError(f"the lab's network config: {exc}") from None
        self.etcdctl("put", f"{PREFIX}/config", json.dumps(config))

    def add_node(self, vxlan_impl: str = "user", event_loop: str = "asyncio", ip_masq: bool = False,
                 datapath: str | None = None, extra_args: list[str] | None = None, pods: int = 0,
                 wait: bool = True) -> Node:
        """A new node namespace running overlayd (with ``extra_args`` flags), and ``pods`` pods once it is ready."""
        node = self._new_node(vxlan_impl, event_loop, ip_masq, datapath, extra_args)
        self.start_node(node, wait=wait)
        for _ in range(pods):
            self.add_pod(node)
        return node

    def _new_node(self, vxlan_impl: str = "user", event_loop: str = "asyncio", ip_masq: bool = False,
                  datapath: str | None = None, extra_args: list[str] | None = None) -> Node:
        """The next node, its namespace on the underlay and its directory; nothing started yet."""
        index = len(self.nodes) + 1
        node = Node(f"node{index}", f"{self.prefix}-n{index}", str(UNDERLAY.network_address + NODE_IP_BASE + index),
                    vxlan_impl, event_loop, ip_masq, datapath, list(extra_args or []))
        self.progress(f"{node.name}: namespace {node.netns}, {node.ip}")
        node.ip6 = self._attach(node.netns, f"n{index}", node.ip)
        self.nodes.append(node)
        os.makedirs(self.node_dir(node), exist_ok=True)
        self.save()
        return node

    def start_node(self, node: Node, wait: bool = True, env: dict | None = None) -> None:
        """Start overlayd on ``node`` (again, after :meth:`stop_node`), with extra ``env``.

        The status file the last run left is removed first: ``wait`` waits for the new one.
        Each node's daemon has its own ``--state-dir`` and its own :data:`WG_RUN`: the nodes share
        one file system, where wireguard-go serves ``/run/wireguard/flannel-wg.sock`` for every
        namespace alike, so the daemon runs in a mount namespace of its own (``ip netns exec``
        makes one, with ``/`` a slave: nothing mounted there leaks out) with
        :meth:`wg_run_dir` bound on :data:`WG_RUN`. :meth:`node_argv` enters it.

        A machine is booted (and provisioned the first time) if it is not running, else its
        overlayd started with ``systemctl start`` (no extra ``env`` then: the unit's is the daemon's).
        """
        if self.machines:
            if env:
                raise LabError("a machine's overlayd takes its settings from /etc/default/overlayd, not env")
            self._machines.start(node, wait=wait)
            return
        if _alive(node.pid):
            raise LabError(f"overlayd on {node.name} already runs (pid {node.pid})")
        os.makedirs(WG_RUN, exist_ok=True)  # the mount point (wireguard-go would make it, too)
        os.makedirs(self.wg_run_dir(node), exist_ok=True)
        argv = ["sh", "-c", 'mount --bind "$0" "$1" && shift && exec "$@"', self.wg_run_dir(node), WG_RUN,
                _bin("overlayd"), "--iface", "eth0", "--subnet-file", self.subnet_file(node),
                "--status-file", self.status_file(node), "--state-dir", self.daemon_state_dir(node),
                "--lease-ttl", str(self.lease_ttl), "--vxlan-impl", node.vxlan_impl, "--event-loop", node.event_loop]
        if node.ip_masq:
            argv.append("--ip-masq")
        if node.datapath:
            argv += ["--datapath", node.datapath]
        argv += node.extra_args
        if os.path.exists(self.status_file(node)):
            os.unlink(self.status_file(node))
        self.progress(f"{node.name}: starting overlayd ({self.backend}"
                      f"{'/' + node.vxlan_impl if self.backend == 'vxlan' else ''})")
        node.pid = self._spawn(node.netns, argv, self.log_file(node), {**self.etcd_env(), **(env or {})})
        self.save()
        if wait:
            self.wait_ready(node)

    def node_argv(self, node: Node, argv: list[str]) -> list[str]:
        """``argv`` to run in ``node``'s namespace: in its running daemon's network and mount namespaces
        (where ``wg`` finds its wireguard-go, see :meth:`start_node`), else in its network namespace;
        in a machines lab, inside the node's machine (with its overlayd's etcd settings)."""
        if self.machines:
            return self._machines.argv(node, argv)
        if _alive(node.pid) and self._ours(node.pid):
            return ["nsenter", "-t", str(node.pid), "-n", "-m", *argv]
        return ["ip", "netns", "exec", node.netns, *argv]

    def wait_ready(self, node: Node, timeout: float = 30) -> None:
        """Wait until overlayd on ``node`` is set up: its status file says ``running`` (it is
        written from the start, with state ``starting`` until then); a machine's unit must be active too."""
        if self.machines:
            self._machines.wait_ready(node, timeout)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.node_status(node).get("state") == "running":
                    return
            except (OSError, ValueError):  # not written yet
                pass
            if not _alive(node.pid):
                raise LabError(f"overlayd on {node.name} exited: {self._log_tail(node)}")
            time.sleep(0.1)
        raise LabError(f"overlayd on {node.name} not ready after {timeout:.0f}s: {self._log_tail(node)}")

    def _log_tail(self, node: Node) -> str:
        try:
            with open(self.log_file(node), encoding="utf-8", errors="replace") as f:
                lines = [l.strip() for l in f if l.strip()]
            return lines[-1] if lines else "(empty log)"
        except OSError:
            return "(no log)"

    def stop_node(self, node: Node, sig: int = signal.SIGTERM) -> None:
        """Stop overlayd on ``node`` (SIGTERM; its lease stays, as flannel's does). On a machine,
        ``systemctl stop overlayd`` (``sig`` SIGKILL: :meth:`kill_node`)."""
        if self.machines:
            if sig == signal.SIGKILL:
                self._machines.signal(node, signal.SIGKILL)
            else:
                self._machines.systemctl(node, "stop", "overlayd")
            return
        if node.pid is not None:
            self._stop_pid(node.pid, sig)
        node.pid = None
        self.save()

    def kill_node(self, node: Node) -> None:
        """SIGKILL overlayd on ``node``: its devices, routes, status and subnet files stay as a crash leaves them
        (on a machine systemd then restarts it, as the unit says)."""
        self.stop_node(node, signal.SIGKILL)

    def restart_node(self, node: Node, wait: bool = True) -> None:
        """Stop (SIGTERM) and start overlayd on ``node`` with the same flags."""
        self.stop_node(node)
        self.start_node(node, wait=wait)

    def reboot_node(self, node: Node) -> None:
        """Reboot ``node``'s machine (``systemctl reboot``); back once its overlayd is ready again."""
        if not self.machines:
            raise LabError("only a machine reboots (scripts/lab up --machines); 'restart' restarts overlayd")
        self._machines.reboot(node)

    def node_status(self, node: Node) -> dict:
        """The node's status file (peers, counters) as overlayd last wrote it."""
        with open(self.status_file(node), encoding="utf-8") as f:
            return json.load(f)

    def add_pod(self, node: Node) -> Pod:
        """A pod namespace on ``node``, attached with our CNI plugin as a runtime would."""
        index = len(node.pods) + 1
        pod = Pod(f"{node.name}-pod{index}", f"{node.netns}p{index}", node.name,
                  container_id=f"{self.prefix}-{node.name}-pod{index}")
        self.progress(f"{pod.name}: CNI ADD")
        self._add_netns(pod.netns)
        node.pods.append(pod)
        self.save()
        result = self.cni(node, pod, "ADD")
        try:
            addresses = [ipaddress.ip_interface(each["address"]).ip for each in result["ips"]]
        except (KeyError, TypeError, ValueError):
            addresses = []
        for version in self.versions:
            found = next((str(a) for a in addresses if a.version == version), "")
            if not found:
                raise LabError(f"CNI ADD for {pod.name} returned no IPv{version} address: {result}")
            setattr(pod, "ip" if version == 4 else "ip6", found)
        self.save()
        return pod

    def cni_conf(self, node: Node) -> dict:
        """``node``'s CNI network config: its subnet file, IPAM directory and its daemon's endpoint
        spool (``endpointsDir``: next to the status file, where the daemon reads it)."""
        return {"cniVersion": "1.0.0", "name": "overlayd-lab", "type": "overlayd",
                "subnetFile": self.subnet_file(node), "dataDir": os.path.join(self.node_dir(node), "cni"),
                "endpointsDir": os.path.join(os.path.dirname(self.status_file(node)), "endpoints")}

    def cni(self, node: Node, pod: Pod, command: str) -> dict:
        """Call our CNI plugin inside ``node`` for ``pod``; the parsed result. A machine's own
        plugin and config (``scripts/install`` put them there), as a runtime on it would."""
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": pod.container_id, "CNI_IFNAME": "eth0"}
        if self.pod_services:  # IgnoreUnknown as runtimes set it: the delegates refuse keys they do not know
            env["CNI_ARGS"] = f"IgnoreUnknown=1;OVERLAYD_SERVICES={','.join(self.pod_services)}"
        if self.machines:
            argv, conf = self._machines.cni(node, pod, env)
        else:
            env.update(CNI_NETNS=f"/var/run/netns/{pod.netns}", CNI_PATH=CNI_PATH)
            argv, conf = ["ip", "netns", "exec", node.netns, _bin("overlayd-cni")], self.cni_conf(node)
        res = run(argv, check=False, input=json.dumps(conf), env=dict(os.environ, **env))
        try:
            out = json.loads(res.stdout) if res.stdout.strip() else {}
        except ValueError:
            raise LabError(f"CNI {command} for {pod.name}: not JSON: {res.stdout[:200]!r}") from None
        if res.returncode != 0:
            raise LabError(f"CNI {command} for {pod.name}: {out.get('msg', res.stderr.strip())}")
        return out

    def start_pod_server(self, pod: Pod, argv: list[str]) -> None:
        """Run ``argv`` in ``pod`` (output in ``<node dir>/<pod>-server.log``), recorded as its
        ``server_pid`` and stopped by :meth:`down`; ``argv`` must name the lab's state directory
        (see :meth:`_ours`)."""
        log = os.path.join(self.state_dir, pod.node, f"{pod.name}-server.log")
        pod.server_pid = self._spawn(pod.netns, argv, log)
        self.save()

    def add_host(self, name: str) -> Host:
        """A plain namespace on the underlay (no overlayd): an external host or a rogue sender."""
        index = len(self.hosts) + 1
        host = Host(name, f"{self.prefix}-h{index}", str(UNDERLAY.network_address + EXTRA_IP_BASE + index))
        host.ip6 = self._attach(host.netns, f"h{index}", host.ip)
        self.hosts.append(host)
        self.save()
        return host

    # -- using -----------------------------------------------------------------------

    def exec(self, netns: str, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        """Run ``argv`` in ``netns`` with the lab's etcd in the environment."""
        return run(["ip", "netns", "exec", netns, *argv], env=dict(os.environ, **self.etcd_env()), **kwargs)

    def ping(self, src: Pod, dst_ip: str, tries: int = 10) -> bool:
        """Whether ``src`` reaches ``dst_ip``, IPv4 or IPv6 (one echo per try, up to ``tries`` seconds)."""
        family = "-6" if ipaddress.ip_address(dst_ip).version == 6 else "-4"
        for _ in range(tries):
            res = run(["ip", "netns", "exec", src.netns, "ping", family, "-c1", "-W1", "-n", dst_ip],
                      check=False, timeout=10)
            if res.returncode == 0:
                return True
        return False

    def reachability(self, tries: int = 10, version: int = 4) -> dict[tuple[str, str], bool]:
        """Every pod pings every other pod's address of IP ``version``; ``{(src pod, dst pod): reached}``."""
        pods = self.pods()
        pairs = [(a, b) for a in pods for b in pods if a is not b]
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            results = pool.map(lambda ab: self.ping(ab[0], ab[1].address(version), tries), pairs)
            return {(a.name, b.name): ok for (a, b), ok in zip(pairs, results)}

    # -- tearing down --------------------------------------------------------------

    def _stop_pid(self, pid: int, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` (then SIGKILL after 10 s) to ``pid`` if it is still a process this lab
        started, and wait until it is gone (a paused process is continued to see the signal)."""
        if not self._ours(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            os.kill(pid, signal.SIGCONT)
        if not _wait_gone(pid, 10) and self._ours(pid):
            os.kill(pid, signal.SIGKILL)
            if not _wait_gone(pid, 10):
                raise LabError(f"pid {pid} outlived SIGKILL by 10 s")

    def _ours(self, pid: int) -> bool:
        """Whether ``pid`` is a process of this lab: our own child, or (for a lab loaded
        from its state file) a process whose command line names our state directory."""
        if pid in self._children:
            return _alive(pid)
        for _ in range(20):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                return False
            if cmdline:  # empty for an instant while the process execs
                return self.state_dir.encode() in cmdline
            time.sleep(0.01)
        return False

    def leftover_processes(self) -> list[int]:
        """PIDs this Lab object spawned that still run (after :meth:`down`: none, or a bug)."""
        return sorted(pid for pid in self._children if _alive(pid))

    def down(self) -> None:
        """Stop every process, delete every namespace and the state directory (a machines lab:
        power its machines off first, and remove their mounts and cgroups)."""
        failure = None
        if self.machines:
            self.progress(f"powering off {len(self.nodes)} machines")
            try:
                self._machines.down_all(self.nodes)
            except LabError as exc:  # the rest still goes; the state directory stays (see down_all)
                failure = exc
        for pod in self.pods():
            if pod.server_pid is not None:
                self._stop_pid(pod.server_pid)
        for node in self.nodes:
            if node.pid is not None:
                self.progress(f"{node.name}: stopping overlayd")
                self._stop_pid(node.pid)
        for pid in self.etcd_pids:
            if pid is not None:
                self.progress(f"etcd: stopping pid {pid}")
                self._stop_pid(pid)
        for name in reversed(self.namespaces):
            if netns_exists(name):
                run(["ip", "netns", "del", name], check=False)
        self.progress(f"removed {len(self.namespaces)} namespaces")
        if failure is not None:
            raise failure
        shutil.rmtree(self.state_dir, ignore_errors=True)


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``pid`` to end; whether it did."""
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _alive(pid: int | None) -> bool:
    """Whether ``pid`` runs (zombies count as gone; reaped if they are our children)."""
    if pid is None:
        return False
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
