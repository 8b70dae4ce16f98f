"""The AF_XDP experiment (issue 20): the tunnel's underlay half through AF_XDP against UDP sockets.

Design note. The userspace backends' datagrams cross the underlay through a UDP socket
(``recvmmsg``/``sendmmsg`` in batches of 64, the C engine's way). AF_XDP hands a process raw
frames through rings it shares with the driver, past the kernel's UDP and IP stack: an XDP
program on the underlay interface (``scripts/afxdp/steer.bpf.c``) steers the tunnel's datagrams
to the socket, and frames to send are written whole (Ethernet, IP, UDP) into the TX ring. This
measures that half alone, one thread each way, between two network namespaces joined by a veth
pair (the lab's underlay is veths too, and veth has native XDP but no zero copy: copy mode): if
AF_XDP cannot move the underlay half markedly faster than the socket, it cannot make the whole
data path (which also reads and writes the tun) 1.3 times faster, and is not worth a second data
path in the engine. ``scripts/afxdp/probe.c`` does the four ways; it and the XDP program are
built here at run time with Debian's gcc, clang and libbpf (``scripts/install --afxdp``).

In the same run, a udp-c lab (the C engine, :mod:`overlayd.lab.bench`'s row) measures TCP
through the overlay and the engines' CPU per tunnel datagram, both nodes together. What AF_XDP
saves per datagram (its send and receive figures against the socket's, at 1400 bytes) bounds
what it could give the engine: at most ``E / (E - saved)`` times the throughput, were the
engine's CPU all that limits it (it is not: the pods' TCP stacks and the tun share the CPUs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import click

from . import bench
from .topology import Lab, LabError, run

SOURCES = Path(__file__).resolve().parents[2] / "scripts" / "afxdp"
PORT = 8472
A_IP, B_IP = "198.18.99.1", "198.18.99.2"  # a benchmark range, inside the two namespaces only


def build(into: str) -> tuple[str, str]:
    """Compile the probe and the XDP program into ``into``; their paths."""
    probe, obj = os.path.join(into, "probe"), os.path.join(into, "steer.bpf.o")
    arch = run(["gcc", "-dumpmachine"]).stdout.strip()
    run(["clang", "-O2", "-g", "-target", "bpf", f"-I/usr/include/{arch}", "-c", str(SOURCES / "steer.bpf.c"),
         "-o", obj])
    run(["gcc", "-O2", "-Wall", "-Werror", str(SOURCES / "probe.c"), "-o", probe, "-lbpf"])
    return probe, obj


class Pair:
    """Two network namespaces joined by a veth pair (``xa`` in A, ``xb`` in B), removed on exit."""

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.a, self.b = f"ovx-a-{tag}", f"ovx-b-{tag}"

    def __enter__(self) -> Pair:
        try:
            for ns in (self.a, self.b):
                run(["ip", "netns", "add", ns])
                run(["ip", "-n", ns, "link", "set", "lo", "up"])
            run(["ip", "-n", self.a, "link", "add", "xa", "type", "veth", "peer", "name", "xb", "netns", self.b])
            for ns, dev, ip in ((self.a, "xa", A_IP), (self.b, "xb", B_IP)):
                run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev])
                run(["ip", "-n", ns, "link", "set", dev, "up"])
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for ns in (self.a, self.b):
            run(["ip", "netns", "del", ns], check=False)

    def mac(self, ns: str, dev: str) -> str:
        return json.loads(run(["ip", "-n", ns, "-j", "link", "show", dev]).stdout)[0]["address"]


def measure(pair: Pair, probe: str, obj: str, way: str, size: int, seconds: float) -> dict:
    """One way (``recv-sock``, ``recv-xdp``: A sends to B's socket or AF_XDP socket;
    ``send-sock``, ``send-xdp``: B sends through its socket or AF_XDP to A's socket) for
    ``seconds``: packets per second sent and received, loss, Gbit/s of UDP payload received, and
    each side's CPU per packet in µs (its own process: the kernel's work on the veth's far side runs
    in the sender's context, so the receiver's figure is the part that changes with AF_XDP)."""
    receiver_ns, sender_ns = (pair.b, pair.a) if way.startswith("recv") else (pair.a, pair.b)
    receive = [probe, "xdp-recv", "xb", obj, str(seconds + 2)] if way == "recv-xdp" else \
        [probe, "sock-recv", str(PORT), str(seconds + 2)]
    if way == "send-xdp":
        send = [probe, "xdp-send", "xb", pair.mac(pair.b, "xb"), pair.mac(pair.a, "xa"), B_IP, A_IP, str(PORT),
                str(size), str(seconds)]
    else:
        send = [probe, "sock-send", A_IP if way.startswith("send") else B_IP, str(PORT), str(size), str(seconds)]
    receiver = subprocess.Popen(["ip", "netns", "exec", receiver_ns, *receive], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        if receiver.stdout.readline().strip() != "ready":  # it ends by itself after seconds + 2
            raise LabError(f"{way}: the receiver failed: {receiver.communicate(timeout=30)[1].strip()}")
        sent = json.loads(run(["ip", "netns", "exec", sender_ns, *send], timeout=seconds + 30).stdout)
        out, err = receiver.communicate(timeout=seconds + 30)
        if receiver.returncode != 0:
            raise LabError(f"{way}: the receiver failed: {err.strip()}")
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    got = json.loads(out)
    took = sent["seconds"]
    return {"way": way, "size": size, "sent_kpps": round(sent["packets"] / took / 1e3, 1),
            "received_kpps": round(got["packets"] / took / 1e3, 1),
            "loss_pct": round(100 * (1 - got["packets"] / sent["packets"]), 1) if sent["packets"] else None,
            "gbit_s": round(got["bytes"] * 8 / took / 1e9, 2),
            "send_us": round(1e6 * sent["cpu"] / sent["packets"], 2) if sent["packets"] else None,
            "recv_us": round(1e6 * got["cpu"] / got["packets"], 2) if got["packets"] else None,
            "mode": got["mode"] if way == "recv-xdp" else None}


WAYS = ("recv-sock", "recv-xdp", "send-sock", "send-xdp")
DATAGRAM = 1400  # bytes of inner packet per tunnel datagram under TCP at the lab's MTU, about


def engine_row(seconds: float) -> dict:
    """TCP through a udp-c lab: Gbit/s and the engines' CPU per tunnel datagram (µs, both nodes)."""
    result = bench.Result("udp-c", bench.CONFIGS["udp-c"].what)
    with tempfile.TemporaryDirectory(prefix="overlayd-afxdp-lab-") as tmp:
        lab = Lab(tmp + "/lab", f"ovx{os.getpid() % 100000}", backend="udp", progress=lambda m: None)
        try:
            bench.measure_tcp(bench.build(lab, bench.CONFIGS["udp-c"]), result, 1, max(1, int(seconds)))
        finally:
            lab.down()
    if result.cpu_s_per_gb is None:
        raise LabError("udp-c: no engine CPU measured")
    return {"gbit_s": round(result.gbits, 2), "engine_us": round(result.cpu_s_per_gb * DATAGRAM / 1e3, 2)}


def bound(rows: list[dict], engine: dict) -> dict:
    """What AF_XDP saves per datagram at ``DATAGRAM``-ish sizes (send + receive, µs) and the most
    it could speed up the engine's ``engine_us``."""
    at = {r["way"]: r for r in rows if r["size"] == max(r2["size"] for r2 in rows)}
    saved = (at["send-sock"]["send_us"] - at["send-xdp"]["send_us"]) + \
        (at["recv-sock"]["recv_us"] - at["recv-xdp"]["recv_us"])
    left = engine["engine_us"] - saved
    return {"saved_us": round(saved, 2), "at_most_x": round(engine["engine_us"] / left, 2) if left > 0 else None}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--seconds", type=click.FloatRange(1, 30), default=3.0, show_default=True,
              help="How long each way sends.")
@click.option("--sizes", default="64,1400", show_default=True,
              help="UDP payload sizes (the tunnelled packet), comma-separated.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def main(seconds, sizes, as_json):
    """Measure the tunnel's underlay half through AF_XDP against UDP sockets (see the module's note)."""
    try:
        sizes_ = [int(s) for s in sizes.split(",")]
    except ValueError:
        raise click.BadParameter(f"not a list of sizes: {sizes}", param_hint="--sizes") from None
    if any(not 16 <= s <= 1472 for s in sizes_):
        raise click.BadParameter("sizes go from 16 to 1472 bytes", param_hint="--sizes")
    for tool in ("clang", "gcc"):
        if shutil.which(tool) is None:
            raise click.ClickException(f"{tool} is missing: run scripts/install --afxdp")
    tmp = tempfile.mkdtemp(prefix="overlayd-afxdp-")
    rows = []
    try:
        probe, obj = build(tmp)
        with Pair() as pair:
            for size in sizes_:
                for way in WAYS:
                    click.echo(f"  .. {way}, {size}-byte datagrams, {seconds:g} s", err=True)
                    rows.append(measure(pair, probe, obj, way, size, seconds))
        click.echo(f"  .. udp-c: TCP through the overlay, {seconds:g} s", err=True)
        engine = engine_row(seconds)
    except LabError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    limit = bound(rows, engine)
    if as_json:
        click.echo(json.dumps({"ways": rows, "udp_c": engine, **limit}, indent=1))
        return
    click.echo(f"\n{'way':<10} {'size':>5} {'sent kpps':>10} {'recv kpps':>10} {'loss %':>7} {'Gbit/s':>7} "
               f"{'send us/pkt':>12} {'recv us/pkt':>12}")
    for r in rows:
        click.echo(f"{r['way']:<10} {r['size']:>5} {r['sent_kpps']:>10} {r['received_kpps']:>10} "
                   f"{r['loss_pct']:>7} {r['gbit_s']:>7} {r['send_us']:>12} {r['recv_us']:>12}"
                   f"{'  (' + r['mode'] + ')' if r['mode'] else ''}")
    click.echo(f"\nudp-c in the same run: {engine['gbit_s']} Gbit/s TCP, {engine['engine_us']} us of engine CPU per "
               f"~{DATAGRAM}-byte datagram (both nodes). AF_XDP saves {limit['saved_us']} us of it (send + receive "
               f"at {max(sizes_)} bytes): at most {limit['at_most_x']}x, were the engine's CPU all that limits it.")
    click.echo(f"\n(one thread each way, veth between two namespaces, AF_XDP in copy mode; "
               f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
