"""``scripts/bench``: overlayd's data planes side by side with the kernel's VXLAN and the bare underlay.

Every figure comes from one run on this machine, measured the same way, one
lab per configuration (built, measured, torn down before the next):

* TCP: ``--rounds`` iperf3 runs of ``--seconds`` each, one stream from a pod
  on node1 to a pod on node2; the median Gbit/s, retransmits summed.
* Ratios: to a kernel VXLAN pair built by hand (iproute2) between two
  namespaces on the same underlay, once with the kernel's default offloads
  (``kvx-default``) and once with transmit checksum offload off
  (``kvx-tx-off``, what ``ethtool -K <dev> tx off`` does). The hand-built
  pair carries pod to pod too, through a veth and the host's routing on
  each side. Our nodes add a bridge, cni0, and the CNI bridge plugin's
  masquerade rules (connection tracking) to that path: ``kvx-cni`` is the
  hand-built pair with that pod path, the like-for-like row for
  ``kernel-vxlan``.
* RTT: pings at 1, 20 and 200 per second (``RTT_RATES``, a bounded count
  each); median and 99th percentile per rate. A slow rate finds the data
  path idle: every thread it wakes has to be woken from sleep, often on an
  idle CPU.
* Idle CPU: what the nodes' overlayd processes use, per daemon, over
  ``IDLE_SECONDS`` without traffic after the rest (so any polling that the
  traffic started has ended); the C engine's threads (``ENGINE_THREAD``)
  alone too.
* CPU: utime + stime of both nodes' overlayd processes (``/proc/<pid>/stat``)
  across the TCP rounds, per GB received. Kernel data paths do their work in
  softirq context, charged to whichever process the CPU was interrupting:
  not attributable, shown as ``-``.
* Packets/s: iperf3 UDP with 64-byte payloads at ``--udp-rate`` (bounded),
  for ``--seconds``: what the receiver got per second, and the loss.
* IPv6 (issue 17): a ``-v6`` row is its IPv4 twin's configuration in a
  dual-stack lab (``--ip-family dual``), every figure measured pod to pod over
  IPv6; ``x v4`` is its TCP throughput as a multiple of the twin's, in the
  same run (the C engine's target: within 10%, 0.90 or more).

* Services (``--services``, issue 22; instead of the rows above): a ClusterIP
  against the pod IP directly, pod on node1 to pod on node2 over overlayd's
  kernel VXLAN (:func:`measure_services`): TCP throughput (iperf3, as above)
  and the rate of new connections (one after another, each an HTTP request
  and answer: :func:`overlayd.lab.demo.rate`, at most :data:`CONN_LIMIT` per
  run), the two targets alternating round by round; ``x pod`` is the
  ClusterIP's figure as a multiple of the pod IP's.

``bare`` is the underlay itself (two namespaces on the lab's bridge, no
overlay): the ceiling. Every load loop is bounded in count and time; all
traffic stays inside the lab's namespaces. Figures depend on the machine and
on what else runs on it (the footer gives the load average): compare rows of
one run, not runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, NamedTuple

import click

from . import demo
from .topology import Lab, LabError, run


class Config(NamedTuple):
    """One row of the bench.

    ``backend``: the lab's Backend.Type with overlayd on two nodes, or
    ``None`` for a row without overlayd (``HAND_BUILT``). ``node``: the
    nodes' options (:meth:`.topology.Lab.add_node` keywords). ``tx_offload``:
    ``"on"``/``"off"`` forces transmit checksum offload on the hand-built
    VXLAN device, ``None`` leaves the kernel's default (on). overlayd's kernel
    backend leaves it at that default too, so ``kernel-vxlan`` compares with
    ``kvx-default`` like for like. ``version``: the IP version of the measured
    traffic; 6 runs the row in a dual-stack lab, pod to pod over IPv6.
    """

    backend: str | None
    node: dict
    what: str
    tx_offload: str | None = None
    version: int = 4


class RttRate(NamedTuple):
    """Pings at ``rate`` per second, ``count`` of them."""

    rate: int
    count: int


@dataclasses.dataclass
class Rtt:
    """Round-trip times at one ping rate, in microseconds."""

    rate: int
    p50_us: float
    p99_us: float


VXLAN_HAND = "vx0"
CONFIGS = {
    "bare": Config(None, {}, "bare underlay (veth + bridge), host to host, no overlay"),
    "kvx-default": Config(None, {"vxlan": True}, "kernel VXLAN by hand (iproute2), default offloads"),
    "kvx-tx-off": Config(None, {"vxlan": True}, "kernel VXLAN by hand, tx checksum offload off",
                         tx_offload="off"),
    "kvx-cni": Config(None, {"vxlan": True, "cni_path": True},
                      "kernel VXLAN by hand, default offloads, pods on a node's CNI path (bridge + masquerade)"),
    "kernel-vxlan": Config("vxlan", {"vxlan_impl": "kernel"}, "overlayd kernel VXLAN backend (default offloads)"),
    "udp": Config("udp", {"datapath": "python"}, "overlayd UDP backend, Python data path, asyncio"),
    "udp-uvloop": Config("udp", {"datapath": "python", "event_loop": "uvloop"},
                         "overlayd UDP backend, Python data path, uvloop thread"),
    "udp-c": Config("udp", {"datapath": "c"}, "overlayd UDP backend, C engine threads, tun superpackets"),
    "udp-c-csum": Config("udp", {"datapath": "c", "extra_args": ["--udp-checksum"]},
                         "overlayd UDP backend, C engine, --udp-checksum (UDP GSO + UDP_GRO)"),
    "udp-c-v6": Config("udp", {"datapath": "c"}, "udp-c, dual-stack lab, TCP/ping/UDP pod to pod over IPv6",
                       version=6),
    "vxlan-user": Config("vxlan", {"vxlan_impl": "user", "datapath": "python"},
                         "overlayd userspace VXLAN, Python data path, asyncio"),
    "vxlan-user-c": Config("vxlan", {"vxlan_impl": "user", "datapath": "c"},
                           "overlayd userspace VXLAN, C engine threads, tap superpackets"),
    "vxlan-user-c-v6": Config("vxlan", {"vxlan_impl": "user", "datapath": "c"},
                              "vxlan-user-c, dual-stack lab, pod to pod over IPv6", version=6),
    "wireguard": Config("wireguard", {}, "overlayd wireguard backend: the kernel's WireGuard, else wireguard-go"),
}
REFERENCES = ("kvx-default", "kvx-tx-off")
IPV4_TWIN = "v4"  # the ratios' key of an IPv6 row's throughput to its IPv4 twin's
RTT_RATES = (RttRate(1, 15), RttRate(20, 150), RttRate(200, 400))  # 24.5 s of pings per row
PING_GRACE = 5  # seconds ping may run past its planned last echo
IDLE_SECONDS = 5
ENGINE_THREAD = "ovl-engine"  # the C engine threads' name (pthread_setname_np in overlayd/csrc/engine.c)
UDP_PAYLOAD = 64
SERVER_GRACE = 20  # seconds an iperf3 server may outlive its client's planned run


@dataclasses.dataclass
class Result:
    name: str
    what: str
    gbits: float | None = None
    rounds: list[float] = dataclasses.field(default_factory=list)
    retransmits: int | None = None
    rtt: list[Rtt] = dataclasses.field(default_factory=list)
    cpu_s_per_gb: float | None = None  # None: not attributable (kernel data path) or not measured
    idle_cpu_pct: float | None = None  # per daemon, % of one CPU (None: no daemon)
    engine_idle_cpu_pct: float | None = None  # the same for its C engine threads alone
    udp_pps: float | None = None
    udp_loss_pct: float | None = None
    ratios: dict[str, float] = dataclasses.field(default_factory=dict)
    error: str = ""


@dataclasses.dataclass
class Endpoints:
    """Where the traffic of one configuration goes: namespaces, the receiver's address,
    and the PIDs whose CPU time is the data plane's (none for kernel data paths)."""

    src: str
    dst: str
    dst_ip: str
    daemons: list[int]


# -- parsing (pure) ---------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    rank = math.ceil(q * len(ordered) - 1e-9)  # the smallest value with a share >= q at or below it
    return ordered[min(len(ordered), max(1, rank)) - 1]


def ping_times_us(output: str) -> list[float]:
    """Every echo's RTT in microseconds from ``ping`` output (``time=0.045 ms`` lines)."""
    return [float(t) * 1000 for t in re.findall(r"time=([\d.]+) ms", output)]


def cpu_seconds(stat: str) -> float:
    """utime + stime of a ``/proc/<pid>/stat`` line, in seconds (all threads)."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(task_dir: str, name: str | None = None) -> float:
    """CPU seconds of the threads under ``task_dir`` (``/proc/<pid>/task``), only those called ``name``
    unless None: their ``schedstat`` run times, in nanoseconds (``stat``'s clock ticks are too coarse
    for a daemon at rest)."""
    total = 0
    for tid in os.listdir(task_dir):
        try:
            with open(os.path.join(task_dir, tid, "comm"), encoding="utf-8", errors="replace") as f:
                comm = f.read().rstrip("\n")
            with open(os.path.join(task_dir, tid, "schedstat"), encoding="ascii") as f:
                runtime_ns = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):  # the thread ended meanwhile
            continue
        if name is None or comm == name:
            total += runtime_ns
    return total / 1e9


def idle_pct(cpu_seconds: float, daemons: int, seconds: float) -> float:
    """CPU use per daemon, in % of one CPU, from ``cpu_seconds`` used by ``daemons`` in ``seconds``."""
    return 100 * cpu_seconds / daemons / seconds


def ping_argv(dst_ip: str, r: RttRate) -> list[str]:
    """``ping`` for ``r.count`` echoes at ``r.rate`` per second, bounded by a deadline."""
    deadline = math.ceil(r.count / r.rate) + PING_GRACE
    return ["ping", "-c", str(r.count), "-i", f"{1 / r.rate:g}", "-W", "1", "-w", str(deadline), "-n", dst_ip]


def rtt_stats(r: RttRate, times: list[float]) -> Rtt:
    """The median and 99th percentile of ``times`` (µs), pinged as ``r``; too few echoes is a LabError."""
    if len(times) < r.count // 2:
        raise LabError(f"ping: {len(times)} of {r.count} echoes answered at {r.rate}/s")
    return Rtt(r.rate, statistics.median(times), percentile(times, 0.99))


def udp_result(report: dict) -> tuple[float, float]:
    """(received packets/s, loss %) from an iperf3 UDP client's JSON report."""
    total = report["end"]["sum"]
    received = total["packets"] - total["lost_packets"]
    return received / total["seconds"], float(total["lost_percent"])


# -- measuring ------------------------------------------------------------------

def with_children(pids: list[int]) -> list[int]:
    """``pids`` and their child processes (a wireguard node's data plane is its overlayd's wireguard-go)."""
    out = list(pids)
    for pid in pids:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as f:
                out += [int(child) for child in f.read().split()]
    return out


def daemon_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system, all threads) the processes ``pids`` have used so far."""
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            total += cpu_seconds(f.read())
    return total


def _iperf(ep: Endpoints, seconds: int, client_args: list[str], target: str | None = None) -> dict:
    """One bounded iperf3 run from ``ep.src`` to ``ep.dst`` (the client connects to ``target``,
    a ClusterIP in front of ``ep.dst_ip``, if given); the client's JSON report."""
    server = subprocess.Popen(["ip", "netns", "exec", ep.dst, "timeout", str(seconds + SERVER_GRACE),
                               "iperf3", "-s", "-1", "-B", ep.dst_ip],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        res = run(["ip", "netns", "exec", ep.src, "iperf3", "-c", target or ep.dst_ip, "-t", str(seconds), "-J",
                   *client_args], check=False, timeout=seconds + SERVER_GRACE)
        try:
            report = json.loads(res.stdout)
        except ValueError:
            raise LabError(f"iperf3: no report ({res.stderr.strip()[-200:]})") from None
        if "error" in report:
            raise LabError(f"iperf3: {report['error']}")
        return report
    finally:
        if server.poll() is None:
            server.terminate()
        server.wait(10)


def measure_tcp(ep: Endpoints, result: Result, rounds: int, seconds: int) -> None:
    cpu_before = daemon_cpu(ep.daemons)
    received = 0
    retrans = 0
    for _ in range(rounds):
        end = _iperf(ep, seconds, [])["end"]
        result.rounds.append(end["sum_received"]["bits_per_second"] / 1e9)
        received += end["sum_received"]["bytes"]
        retrans += end["sum_sent"].get("retransmits", 0)
    result.gbits = statistics.median(result.rounds)
    result.retransmits = retrans
    if ep.daemons and received:
        result.cpu_s_per_gb = (daemon_cpu(ep.daemons) - cpu_before) / (received / 1e9)


def measure_rtt(ep: Endpoints, result: Result, progress: Callable[[str], None]) -> None:
    for r in RTT_RATES:
        progress(f"{result.name}: {r.count} pings at {r.rate}/s")
        argv = ping_argv(ep.dst_ip, r)
        out = run(["ip", "netns", "exec", ep.src, *argv], check=False, timeout=int(argv[argv.index("-w") + 1]) + 10)
        result.rtt.append(rtt_stats(r, ping_times_us(out.stdout)))


def measure_idle(ep: Endpoints, result: Result) -> None:
    """The daemons' CPU use, and their engine threads', over IDLE_SECONDS without traffic."""
    if not ep.daemons:
        return
    tasks = [f"/proc/{pid}/task" for pid in ep.daemons]

    def used() -> tuple[float, float]:
        return sum(thread_cpu(t) for t in tasks), sum(thread_cpu(t, ENGINE_THREAD) for t in tasks)

    time.sleep(1)  # the last flow's stragglers (a bounded wait, not a condition: nothing to wait on)
    before = used()
    time.sleep(IDLE_SECONDS)
    after = used()
    result.idle_cpu_pct, result.engine_idle_cpu_pct = (
        idle_pct(a - b, len(ep.daemons), IDLE_SECONDS) for a, b in zip(after, before))


def measure_udp(ep: Endpoints, result: Result, seconds: int, rate: str) -> None:
    report = _iperf(ep, seconds, ["-u", "-l", str(UDP_PAYLOAD), "-b", rate])
    result.udp_pps, result.udp_loss_pct = udp_result(report)


# -- labs ---------------------------------------------------------------------------

def set_tx_offload(netns: str, dev: str, setting: str) -> None:
    """Transmit checksum offload on ``dev`` in ``netns`` (no ethtool binary needed)."""
    run(["ip", "netns", "exec", netns, sys.executable, "-m", "overlayd.plumbing.ethtool", dev, setting])


def hand_vxlan(lab: Lab, a, b, cni_path: bool = False) -> tuple[str, str]:
    """A kernel VXLAN pair built by hand (iproute2) between hosts ``a`` and ``b``, with a pod
    behind each, as flannel would route it; the pods' namespaces and the receiving pod's address.

    VNI 42 on port 4789 over the lab's underlay, outer UDP checksum off (as
    flannel's), the kernel's defaults otherwise; the devices hold 10.244.0.1-2/24,
    pod i sits at 10.244.i.2 behind a veth on its host (10.244.i.1), and each
    host routes the other's pod subnet via the other's device address.
    ``cni_path``: the pod's veth joins a bridge holding 10.244.i.1 instead, and
    the host masquerades what the pod sends outside its subnet, as the CNI
    bridge plugin's ``ipMasq`` rules on our nodes do (the NAT table turns
    connection tracking on for every packet): the pod path of a CNI node.
    """
    pods = []
    for i, (host, peer) in enumerate(((a, b), (b, a)), start=1):
        pod = f"{host.netns}p"
        lab.namespaces.append(pod)  # before it exists: lab.down() removes it whatever fails next
        lab.save()
        run(["ip", "netns", "add", pod])
        ip, pod_ip = ["ip", "-n", host.netns], ["ip", "-n", pod]
        run([*ip, "link", "add", VXLAN_HAND, "type", "vxlan", "id", "42", "dstport", "4789",
             "local", host.ip, "remote", peer.ip, "dev", "eth0", "noudpcsum"])
        run([*ip, "addr", "add", f"10.244.0.{i}/24", "dev", VXLAN_HAND])
        run([*ip, "link", "set", VXLAN_HAND, "up"])
        run([*ip, "link", "add", "pod0", "type", "veth", "peer", "name", "eth0", "netns", pod])
        gateway = "pod0"
        if cni_path:
            gateway = "cni0"
            run([*ip, "link", "add", gateway, "type", "bridge"])
            run([*ip, "link", "set", "pod0", "master", gateway])
            run(["ip", "netns", "exec", host.netns, "nft", "-f", "-"], input=(
                "table ip nat {\n chain postrouting {\n  type nat hook postrouting priority srcnat;\n"
                f"  ip saddr 10.244.{i}.2 ip daddr != {{ 10.244.{i}.0/24, 224.0.0.0/4 }} masquerade\n }}\n}}\n"))
        run([*ip, "addr", "add", f"10.244.{i}.1/24", "dev", gateway])
        for dev in {"pod0", gateway}:
            run([*ip, "link", "set", dev, "up"])
        run([*ip, "route", "add", f"10.244.{3 - i}.0/24", "via", f"10.244.0.{3 - i}"])
        run(["ip", "netns", "exec", host.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        run([*pod_ip, "addr", "add", f"10.244.{i}.2/24", "dev", "eth0"])
        for dev in ("lo", "eth0"):
            run([*pod_ip, "link", "set", dev, "up"])
        run([*pod_ip, "route", "add", "default", "via", f"10.244.{i}.1"])
        pods.append(pod)
    return pods[0], pods[1]


def build(lab: Lab, config: Config) -> Endpoints:
    """Bring ``lab`` up for ``config``; where its traffic goes."""
    if config.backend is None:
        lab.up(nodes=0)
        a, b = lab.add_host("a"), lab.add_host("b")
        if not config.node.get("vxlan"):
            return Endpoints(a.netns, b.netns, b.ip, [])
        src, dst = hand_vxlan(lab, a, b, cni_path=config.node.get("cni_path", False))
        if config.tx_offload:
            for host in (a, b):
                set_tx_offload(host.netns, VXLAN_HAND, config.tx_offload)
        return Endpoints(src, dst, "10.244.2.2", [])
    lab.up(nodes=2, pods_per_node=1, variants=[config.node, config.node])
    n1, n2 = lab.nodes
    kernel = config.backend == "vxlan" and config.node.get("vxlan_impl") == "kernel"
    dst_ip = n2.pods[0].address(config.version)
    if not lab.ping(n1.pods[0], dst_ip):
        raise LabError(f"pods cannot reach each other over IPv{config.version}")
    daemons = [] if kernel or config.backend == "host-gw" else with_children([n.pid for n in lab.nodes])
    return Endpoints(n1.pods[0].netns, n2.pods[0].netns, dst_ip, daemons)


def fast_path_built() -> bool:
    """Whether the C extension imports (``scripts/install`` builds it)."""
    try:
        import overlayd._fastpath  # noqa: F401
    except ImportError:
        return False
    return True


def measure(name: str, rounds: int, seconds: int, udp_rate: str, progress: Callable[[str], None]) -> Result:
    """Every figure of one configuration, from a lab built for it and torn down after."""
    config = CONFIGS[name]
    result = Result(name, config.what)
    if config.node.get("datapath") == "c" and not fast_path_built():
        result.error = "the C fast path is not built"
        return result
    with tempfile.TemporaryDirectory(prefix="overlayd-bench-") as tmp:
        lab = Lab(tmp + "/lab", f"ovb{os.getpid() % 100000}", backend=config.backend or "udp",
                  ip_family="dual" if config.version == 6 else "ipv4")
        try:
            progress(f"{name}: building the lab")
            ep = build(lab, config)
            progress(f"{name}: TCP, {rounds} x {seconds}s")
            measure_tcp(ep, result, rounds, seconds)
            measure_rtt(ep, result, progress)
            progress(f"{name}: UDP {UDP_PAYLOAD} B at {udp_rate} for {seconds}s")
            measure_udp(ep, result, seconds, udp_rate)
            progress(f"{name}: idle for {IDLE_SECONDS}s")
            measure_idle(ep, result)
        except (LabError, OSError, KeyError) as exc:
            result.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, LabError) else str(exc)
        finally:
            lab.down()
    return result


IPERF_PORT = 5201
CONN_LIMIT = 50_000  # new connections per connection-rate run, at most


@dataclasses.dataclass
class ServiceResult:
    """A ClusterIP against the pod IP directly: per target (``pod``, ``vip``), the rounds'
    TCP Gbit/s and new connections per second."""

    gbits: dict[str, list[float]] = dataclasses.field(default_factory=lambda: {"pod": [], "vip": []})
    conns: dict[str, list[float]] = dataclasses.field(default_factory=lambda: {"pod": [], "vip": []})
    failed_conns: int = 0
    error: str = ""


def measure_services(rounds: int, seconds: int, progress: Callable[[str], None]) -> ServiceResult:
    """The services figures (see the module note) from one 2-node kernel-VXLAN lab."""
    result = ServiceResult()
    with tempfile.TemporaryDirectory(prefix="overlayd-bench-") as tmp:
        lab = Lab(tmp + "/lab", f"ovs{os.getpid() % 100000}", backend="vxlan")
        try:
            progress("services: building the lab, a service in front of node2's pod")
            lab.up(nodes=2, pods_per_node=1, variants=[{"vxlan_impl": "kernel"}] * 2)
            client, server = lab.nodes[0].pods[0], lab.nodes[1].pods[0]
            demo.start_servers(lab, [server])  # HTTP on demo.TARGET_PORT: health check and connections
            record = json.loads(lab.overlayctl("service", "create", "bench", "--port", str(demo.TARGET_PORT),
                                               "--port", str(IPERF_PORT), "--json").stdout)["service"]
            lab.overlayctl("endpoint", "add", "bench", server.ip, "-q")
            vip = record["cluster_ip"]
            deadline = time.monotonic() + 30
            while " " not in demo.ask(lab, client, vip, demo.TARGET_PORT, 1)[0]:
                if time.monotonic() > deadline:
                    raise LabError(f"the ClusterIP {vip} does not answer node1's pod after 30 s")
            ep = Endpoints(client.netns, server.netns, server.ip, [])
            targets = {"pod": server.ip, "vip": vip}
            for i in range(rounds):
                for name in ("pod", "vip") if i % 2 == 0 else ("vip", "pod"):
                    progress(f"services: round {i + 1}/{rounds}, {name}: TCP {seconds}s, connections {seconds}s")
                    end = _iperf(ep, seconds, [], target=targets[name])["end"]
                    result.gbits[name].append(end["sum_received"]["bits_per_second"] / 1e9)
                    out = run(["ip", "netns", "exec", client.netns, sys.executable, "-m", demo.__name__, "rate",
                               targets[name], str(demo.TARGET_PORT), str(seconds), str(CONN_LIMIT)],
                              timeout=seconds * 3 + 30).stdout
                    counted = json.loads(out)
                    result.conns[name].append(counted["answered"] / counted["seconds"])
                    result.failed_conns += counted["failed"]
        except (LabError, OSError, KeyError, ValueError) as exc:
            result.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, LabError) else str(exc)
        finally:
            lab.down()
    return result


def services_table(r: ServiceResult, rounds: int, seconds: int) -> str:
    """The services figures as text: medians per target and the ClusterIP's ratio to the pod IP."""
    def med(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    def ratio(figures: dict[str, list[float]]) -> str:
        pod, vip = med(figures["pod"]), med(figures["vip"])
        return f"{vip / pod:.2f}" if pod and vip is not None else "-"
    lines = [f"{'target':<22} {'Gbit/s':>7} {'conn/s':>8}"]
    for name, what in (("pod", "pod IP directly"), ("vip", "ClusterIP (nft DNAT)")):
        lines.append(f"{what:<22} {_cell(med(r.gbits[name]), '.2f', 7)} {_cell(med(r.conns[name]), '.0f', 8)}")
    lines.append(f"{'x pod':<22} {ratio(r.gbits):>7} {ratio(r.conns):>8}")
    lines += ["", f"median of {rounds} rounds, targets alternating; TCP: iperf3 -t {seconds}, one stream; conn/s: "
              f"new TCP", f"connections one after another for {seconds} s, each an HTTP request and answer "
              f"(failed: {r.failed_conns}).", "Pod on node1 to pod on node2, overlayd kernel VXLAN; "
              f"{time.strftime('%Y-%m-%d %H:%M:%S %z')}, {os.cpu_count()} CPUs, load average {_loadavg()} after."]
    if r.error:
        lines.append(f"FAILED: {r.error}")
    return "\n".join(lines)


def ipv4_twin(name: str) -> str | None:
    """The IPv4 row an IPv6 row (``udp-c-v6``) is compared with (``udp-c``); None for an IPv4 row."""
    return name.removesuffix("-v6") if CONFIGS[name].version == 6 else None


def add_ratios(results: list[Result]) -> None:
    """Each result's TCP throughput as a multiple of each reference's and, for an IPv6 row, of its
    IPv4 twin's (key :data:`IPV4_TWIN`), where both were measured."""
    gbits = {r.name: r.gbits for r in results if r.gbits}
    for r in results:
        if r.gbits is not None:
            r.ratios = {ref: r.gbits / gbits[ref] for ref in REFERENCES if ref in gbits}
            if gbits.get(ipv4_twin(r.name)):
                r.ratios[IPV4_TWIN] = r.gbits / gbits[ipv4_twin(r.name)]


# -- output -----------------------------------------------------------------------

def _cell(value, fmt: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{fmt}}"


HEADER = (f"{'configuration':<15} {'Gbit/s':>7} {'x kvx':>6} {'x off':>6} {'x v4':>5} {'retr':>6} "
          f"{'CPU s/GB':>8} {'idle%':>6} {'eng%':>5} {'kpps 64B':>8} {'loss%':>6}")
RTT_HEADER = f"{'RTT µs':<15}" + "".join(f"{f'{r.rate}/s p50':>10} {'p99':>7}" for r in RTT_RATES)


def rtt_table(results: list[Result]) -> list[str]:
    """RTT p50 and p99 at each rate, a row per configuration that has them."""
    lines = [RTT_HEADER]
    for r in results:
        if r.rtt:
            lines.append(f"{r.name:<15}" + "".join(f"{x.p50_us:>10.0f} {x.p99_us:>7.0f}" for x in r.rtt))
    return lines


def table(results: list[Result]) -> str:
    """The human tables (about 90 columns): throughput, CPU and packets/s, then RTT by rate; a legend
    and the failures."""
    lines = [HEADER]
    for r in results:
        if r.gbits is None and r.error:
            lines.append(f"{r.name:<15} failed: {r.error}"[:100])
            continue
        lines.append(" ".join([
            f"{r.name:<15}", _cell(r.gbits, ".2f", 7),
            _cell(r.ratios.get(REFERENCES[0]), ".2f", 6), _cell(r.ratios.get(REFERENCES[1]), ".2f", 6),
            _cell(r.ratios.get(IPV4_TWIN), ".2f", 5),
            _cell(r.retransmits, "d", 6), _cell(r.cpu_s_per_gb, ".2f", 8), _cell(r.idle_cpu_pct, ".2f", 6),
            _cell(r.engine_idle_cpu_pct, ".2f", 5), _cell(None if r.udp_pps is None else r.udp_pps / 1000, ".1f", 8),
            _cell(r.udp_loss_pct, ".1f", 6)]))
    lines += ["", *rtt_table(results), ""]
    lines += [f"  {r.name:<15} {r.what}" for r in results]
    lines += [f"  ! {r.name}: {r.error}" for r in results if r.error and r.gbits is not None]
    return "\n".join(lines)


def meta(rounds: int, seconds: int, udp_rate: str, load_before: str) -> dict:
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "kernel": os.uname().release,
            "cpus": os.cpu_count(), "load_before": load_before, "load_after": _loadavg(),
            "rounds": rounds, "seconds": seconds, "rtt_rates": [r._asdict() for r in RTT_RATES],
            "idle_seconds": IDLE_SECONDS,
            "udp_payload": UDP_PAYLOAD, "udp_rate": udp_rate, "references": list(REFERENCES)}


def footer(m: dict) -> str:
    """What the columns are and where the figures come from (lines under 100 columns)."""
    return "\n".join([
        f"TCP: median of {m['rounds']} x iperf3 -t {m['seconds']}, one stream pod to pod; x kvx, x off: "
        f"to the hand-built",
        "kernel VXLAN with default offloads, with tx off; x v4: an IPv6 row (-v6) to its IPv4 twin.",
        "CPU: overlayd's utime+stime per GB received (- for kernel data paths); idle%, eng%: per daemon",
        f"over {m['idle_seconds']} s without traffic, the whole daemon and its C engine threads. "
        f"UDP: {m['udp_payload']}-byte payloads",
        f"at {m['udp_rate']}bit/s for {m['seconds']} s, received per second.",
        "RTT: " + ", ".join(f"{r['count']} pings at {r['rate']}/s" for r in m["rtt_rates"]) + " (p99: nearest rank).",
        f"{m['date']}, Linux {m['kernel']}, {m['cpus']} CPUs,",
        f"load average {m['load_before']} before, {m['load_after']} after.",
    ])


def _loadavg() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--rounds", type=click.IntRange(3, 20), default=3, show_default=True,
              help="TCP rounds per configuration (the median is reported).")
@click.option("--seconds", type=click.IntRange(1, 60), default=5, show_default=True,
              help="Duration of each iperf3 run.")
@click.option("--udp-rate", default="200M", show_default=True,
              help="iperf3 -b for the 64-byte UDP run (bit/s, bounded).")
@click.option("--only", multiple=True, type=click.Choice(list(CONFIGS)),
              help="Measure only these configurations (repeatable; the references are always measured).")
@click.option("--services", is_flag=True, help="Measure a ClusterIP against the pod IP directly (TCP throughput, "
                                               "connection rate) instead of the data planes.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def main(rounds, seconds, udp_rate, only, services, as_json):
    """Measure overlayd against the kernel's VXLAN and the bare underlay, side by side."""
    if not re.fullmatch(r"\d+[KMG]?", udp_rate):
        raise click.BadParameter("a rate as iperf3 takes it, e.g. 200M", param_hint="--udp-rate")
    names = list(dict.fromkeys([*REFERENCES, *only])) if only else list(CONFIGS)
    load_before = _loadavg()
    progress = lambda m: click.echo(f"  .. {m}", err=True)  # noqa: E731
    if services:
        found = measure_services(rounds, seconds, progress)
        click.echo(json.dumps(dataclasses.asdict(found), indent=2) if as_json
                   else "\n" + services_table(found, rounds, seconds))
        sys.exit(1 if found.error else 0)
    results = [measure(name, rounds, seconds, udp_rate, progress) for name in names]
    add_ratios(results)
    m = meta(rounds, seconds, udp_rate, load_before)
    if as_json:
        click.echo(json.dumps({"meta": m, "results": [dataclasses.asdict(r) for r in results]}, indent=2))
        return
    click.echo("\n" + table(results) + "\n\n" + footer(m))


if __name__ == "__main__":
    main()
