"""``scripts/bench``: overlayd's data planes side by side with the kernel's VXLAN and the bare underlay.

Every figure comes from one run on this machine, measured the same way:
a two-node lab per configuration, iperf3 TCP from a pod on node1 to a pod
on node2 (``--seconds`` each, bounded) and the average RTT of 20 pings.
"bare underlay" is iperf3 between the two node namespaces' eth0 addresses,
with no overlay at all: the ceiling every overlay is measured against.
Figures depend on the machine; compare rows, not absolute numbers.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import tempfile
import time

import click

from .topology import Lab, LabError, run

CONFIGS = {
    # name: (Backend.Type, node options, what it measures)
    "bare": ("udp", {}, "bare underlay (veth + bridge, no overlay)"),
    "kernel-vxlan": ("vxlan", {"vxlan_impl": "kernel"}, "Linux kernel VXLAN (flannel's default)"),
    "udp": ("udp", {"datapath": "python"}, "overlayd UDP backend, Python data path, asyncio"),
    "udp-uvloop": ("udp", {"datapath": "python", "event_loop": "uvloop"},
                   "overlayd UDP backend, Python data path, uvloop thread"),
    "udp-c": ("udp", {"datapath": "c"}, "overlayd UDP backend, C engine threads, tun superpackets"),
    "vxlan-user": ("vxlan", {"vxlan_impl": "user"}, "overlayd userspace VXLAN, Python data path"),
}


@dataclasses.dataclass
class Result:
    name: str
    description: str
    gbits: float | None
    retransmits: int | None
    rtt_ms: float | None
    error: str = ""


def fast_path_built() -> bool:
    """Whether the C extension imports (``scripts/install`` builds it)."""
    try:
        import overlayd._fastpath  # noqa: F401
    except ImportError:
        return False
    return True


def iperf(src_ns: str, dst_ns: str, dst_ip: str, seconds: int) -> tuple[float, int]:
    """TCP throughput (Gbit/s) and retransmits from ``src_ns`` to ``dst_ns``."""
    server = subprocess.Popen(["ip", "netns", "exec", dst_ns, "iperf3", "-s", "-1", "-B", dst_ip],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        res = run(["ip", "netns", "exec", src_ns, "iperf3", "-c", dst_ip, "-t", str(seconds), "-J"],
                  timeout=seconds + 30)
        data = json.loads(res.stdout)
        end = data["end"]
        return end["sum_received"]["bits_per_second"] / 1e9, end["sum_sent"].get("retransmits", 0)
    finally:
        if server.poll() is None:
            server.terminate()
        server.wait(10)


def rtt(src_ns: str, dst_ip: str) -> float:
    """Average RTT in ms over 20 pings."""
    out = run(["ip", "netns", "exec", src_ns, "ping", "-c20", "-i0.01", "-q", "-n", dst_ip], timeout=30).stdout
    match = re.search(r"= [\d.]+/([\d.]+)/", out)
    if not match:
        raise LabError(f"no RTT in ping output: {out!r}")
    return float(match.group(1))


def measure(name: str, seconds: int, progress) -> Result:
    btype, options, description = CONFIGS[name]
    if options.get("datapath") == "c" and not fast_path_built():
        return Result(name, description, None, None, None, "the C fast path is not built")
    with tempfile.TemporaryDirectory(prefix="overlayd-bench-") as tmp:
        lab = Lab(tmp + "/lab", "ovbench", backend=btype, progress=lambda m: None)
        try:
            progress(f"{name}: building a 2-node lab")
            lab.up(nodes=2, pods_per_node=1, variants=[options, options])
            n1, n2 = lab.nodes
            if name == "bare":
                src, dst, ip = n1.netns, n2.netns, n2.ip
            else:
                if not lab.ping(n1.pods[0], n2.pods[0].ip):
                    raise LabError("pods cannot reach each other")
                src, dst, ip = n1.pods[0].netns, n2.pods[0].netns, n2.pods[0].ip
            progress(f"{name}: iperf3 for {seconds}s")
            gbits, retrans = iperf(src, dst, ip, seconds)
            return Result(name, description, gbits, retrans, rtt(src, ip))
        except LabError as exc:
            return Result(name, description, None, None, None, str(exc))
        finally:
            lab.down()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--seconds", type=click.IntRange(1, 60), default=5, show_default=True,
              help="iperf3 duration per configuration.")
@click.option("--only", multiple=True, type=click.Choice(list(CONFIGS)),
              help="Measure only these configurations (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def main(seconds, only, as_json):
    """Measure overlayd against the kernel's VXLAN and the bare underlay, side by side."""
    names = list(only) or list(CONFIGS)
    progress = lambda m: click.echo(f"  .. {m}", err=True)  # noqa: E731
    results = [measure(name, seconds, progress) for name in names]
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(r) for r in results], indent=2))
        return
    bare = next((r.gbits for r in results if r.name == "bare" and r.gbits), None)
    click.echo(f"\n{'configuration':<14} {'TCP Gbit/s':>10} {'of bare':>8} {'retrans':>8} {'RTT ms':>7}  what")
    for r in results:
        if r.gbits is None:
            click.echo(f"{r.name:<14} {'failed':>10} {'':>8} {'':>8} {'':>7}  {r.description}: {r.error}")
            continue
        share = f"{100 * r.gbits / bare:.0f}%" if bare else "-"
        click.echo(f"{r.name:<14} {r.gbits:>10.2f} {share:>8} {r.retransmits:>8} {r.rtt_ms:>7.3f}  {r.description}")
    click.echo(f"\n(iperf3 -t {seconds}, one TCP stream pod -> pod on a 2-node netns lab; "
               f"{time.strftime('%Y-%m-%d')}, {sys.platform}, {run(['nproc']).stdout.strip()} CPUs)")


if __name__ == "__main__":
    main()
