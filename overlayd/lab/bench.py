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
* RTT: ``PINGS`` echoes at a short interval; median and 99th percentile.
* CPU: utime + stime of both nodes' overlayd processes (``/proc/<pid>/stat``)
  across the TCP rounds, per GB received. Kernel data paths do their work in
  softirq context, charged to whichever process the CPU was interrupting:
  not attributable, shown as ``-``.
* Packets/s: iperf3 UDP with 64-byte payloads at ``--udp-rate`` (bounded),
  for ``--seconds``: what the receiver got per second, and the loss.

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

from .topology import Lab, LabError, run


class Config(NamedTuple):
    """One row of the bench.

    ``backend``: the lab's Backend.Type with overlayd on two nodes, or
    ``None`` for a row without overlayd (``HAND_BUILT``). ``node``: the
    nodes' options (:meth:`.topology.Lab.add_node` keywords). ``tx_offload``:
    ``"on"``/``"off"`` forces transmit checksum offload on the hand-built
    VXLAN device, ``None`` leaves the kernel's default (on). overlayd's kernel
    backend leaves it at that default too, so ``kernel-vxlan`` compares with
    ``kvx-default`` like for like.
    """

    backend: str | None
    node: dict
    what: str
    tx_offload: str | None = None


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
    "vxlan-user": Config("vxlan", {"vxlan_impl": "user", "datapath": "python"},
                         "overlayd userspace VXLAN, Python data path, asyncio"),
    "vxlan-user-c": Config("vxlan", {"vxlan_impl": "user", "datapath": "c"},
                           "overlayd userspace VXLAN, C engine threads, tap superpackets"),
}
REFERENCES = ("kvx-default", "kvx-tx-off")
PINGS = 200
PING_INTERVAL = "0.005"
UDP_PAYLOAD = 64
SERVER_GRACE = 20  # seconds an iperf3 server may outlive its client's planned run


@dataclasses.dataclass
class Result:
    name: str
    what: str
    gbits: float | None = None
    rounds: list[float] = dataclasses.field(default_factory=list)
    retransmits: int | None = None
    rtt_median_us: float | None = None
    rtt_p99_us: float | None = None
    cpu_s_per_gb: float | None = None  # None: not attributable (kernel data path) or not measured
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


def udp_result(report: dict) -> tuple[float, float]:
    """(received packets/s, loss %) from an iperf3 UDP client's JSON report."""
    total = report["end"]["sum"]
    received = total["packets"] - total["lost_packets"]
    return received / total["seconds"], float(total["lost_percent"])


# -- measuring ------------------------------------------------------------------

def daemon_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system, all threads) the processes ``pids`` have used so far."""
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            total += cpu_seconds(f.read())
    return total


def _iperf(ep: Endpoints, seconds: int, client_args: list[str]) -> dict:
    """One bounded iperf3 run from ``ep.src`` to ``ep.dst``; the client's JSON report."""
    server = subprocess.Popen(["ip", "netns", "exec", ep.dst, "timeout", str(seconds + SERVER_GRACE),
                               "iperf3", "-s", "-1", "-B", ep.dst_ip],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        res = run(["ip", "netns", "exec", ep.src, "iperf3", "-c", ep.dst_ip, "-t", str(seconds), "-J",
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


def measure_rtt(ep: Endpoints, result: Result) -> None:
    out = run(["ip", "netns", "exec", ep.src, "ping", "-c", str(PINGS), "-i", PING_INTERVAL, "-W", "1",
               "-w", "20", "-n", ep.dst_ip], check=False, timeout=30).stdout
    times = ping_times_us(out)
    if len(times) < PINGS // 2:
        raise LabError(f"ping: {len(times)} of {PINGS} echoes answered")
    result.rtt_median_us = statistics.median(times)
    result.rtt_p99_us = percentile(times, 0.99)


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
    if not lab.ping(n1.pods[0], n2.pods[0].ip):
        raise LabError("pods cannot reach each other")
    daemons = [] if kernel or config.backend == "host-gw" else [n.pid for n in lab.nodes]
    return Endpoints(n1.pods[0].netns, n2.pods[0].netns, n2.pods[0].ip, daemons)


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
        lab = Lab(tmp + "/lab", f"ovb{os.getpid() % 100000}", backend=config.backend or "udp")
        try:
            progress(f"{name}: building the lab")
            ep = build(lab, config)
            progress(f"{name}: TCP, {rounds} x {seconds}s")
            measure_tcp(ep, result, rounds, seconds)
            progress(f"{name}: {PINGS} pings")
            measure_rtt(ep, result)
            progress(f"{name}: UDP {UDP_PAYLOAD} B at {udp_rate} for {seconds}s")
            measure_udp(ep, result, seconds, udp_rate)
        except (LabError, OSError, KeyError) as exc:
            result.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, LabError) else str(exc)
        finally:
            lab.down()
    return result


def add_ratios(results: list[Result]) -> None:
    """Each result's TCP throughput as a multiple of each reference's, where both were measured."""
    refs = {r.name: r.gbits for r in results if r.name in REFERENCES and r.gbits}
    for r in results:
        if r.gbits is not None:
            r.ratios = {ref: r.gbits / gbits for ref, gbits in refs.items()}


# -- output -----------------------------------------------------------------------

def _cell(value, fmt: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{fmt}}"


HEADER = (f"{'configuration':<14} {'Gbit/s':>7} {'x kvx':>6} {'x off':>6} {'retr':>6} "
          f"{'RTT µs':>7} {'p99 µs':>7} {'CPU s/GB':>8} {'kpps 64B':>8} {'loss%':>6}")


def table(results: list[Result]) -> str:
    """The human table (about 90 columns), a legend and the failures."""
    lines = [HEADER]
    for r in results:
        if r.gbits is None and r.error:
            lines.append(f"{r.name:<14} failed: {r.error}"[:100])
            continue
        lines.append(" ".join([
            f"{r.name:<14}", _cell(r.gbits, ".2f", 7),
            _cell(r.ratios.get(REFERENCES[0]), ".2f", 6), _cell(r.ratios.get(REFERENCES[1]), ".2f", 6),
            _cell(r.retransmits, "d", 6), _cell(r.rtt_median_us, ".0f", 7), _cell(r.rtt_p99_us, ".0f", 7),
            _cell(r.cpu_s_per_gb, ".2f", 8), _cell(None if r.udp_pps is None else r.udp_pps / 1000, ".1f", 8),
            _cell(r.udp_loss_pct, ".1f", 6)]))
    lines.append("")
    lines += [f"  {r.name:<14} {r.what}" for r in results]
    lines += [f"  ! {r.name}: {r.error}" for r in results if r.error and r.gbits is not None]
    return "\n".join(lines)


def meta(rounds: int, seconds: int, udp_rate: str, load_before: str) -> dict:
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "kernel": os.uname().release,
            "cpus": os.cpu_count(), "load_before": load_before, "load_after": _loadavg(),
            "rounds": rounds, "seconds": seconds, "pings": PINGS, "ping_interval_s": float(PING_INTERVAL),
            "udp_payload": UDP_PAYLOAD, "udp_rate": udp_rate, "references": list(REFERENCES)}


def footer(m: dict) -> str:
    """What the columns are and where the figures come from (lines under 100 columns)."""
    return "\n".join([
        f"TCP: median of {m['rounds']} x iperf3 -t {m['seconds']}, one stream pod to pod; x kvx, x off: "
        f"to the hand-built",
        f"kernel VXLAN with default offloads, with tx off. RTT: {m['pings']} pings "
        f"{m['ping_interval_s'] * 1000:g} ms apart. CPU: overlayd's",
        f"utime+stime per GB received (- for kernel data paths). UDP: {m['udp_payload']}-byte payloads "
        f"at {m['udp_rate']}bit/s",
        f"for {m['seconds']} s, received per second. {m['date']}, Linux {m['kernel']}, {m['cpus']} CPUs,",
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
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def main(rounds, seconds, udp_rate, only, as_json):
    """Measure overlayd against the kernel's VXLAN and the bare underlay, side by side."""
    if not re.fullmatch(r"\d+[KMG]?", udp_rate):
        raise click.BadParameter("a rate as iperf3 takes it, e.g. 200M", param_hint="--udp-rate")
    names = list(dict.fromkeys([*REFERENCES, *only])) if only else list(CONFIGS)
    load_before = _loadavg()
    progress = lambda m: click.echo(f"  .. {m}", err=True)  # noqa: E731
    results = [measure(name, rounds, seconds, udp_rate, progress) for name in names]
    add_ratios(results)
    m = meta(rounds, seconds, udp_rate, load_before)
    if as_json:
        click.echo(json.dumps({"meta": m, "results": [dataclasses.asdict(r) for r in results]}, indent=2))
        return
    click.echo("\n" + table(results) + "\n\n" + footer(m))


if __name__ == "__main__":
    main()
