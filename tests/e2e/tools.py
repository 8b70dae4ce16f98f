"""What end-to-end tests do inside a lab: TCP transfers, captures, waiting on node state."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from scapy.all import rdpcap  # (scapy.all: every link layer registered for dissection)

from overlayd.lab.topology import Lab, Pod, run

TCPCHECK = str(Path(__file__).with_name("tcpcheck.py"))


def tcp_transfer(lab: Lab, src: Pod, dst: Pod, tmp_path: Path, nbytes: int = 10 << 20,
                 version: int = 4) -> tuple[str, str]:
    """Send ``nbytes`` random bytes from ``src`` to ``dst``'s address of IP ``version`` over TCP;
    (sent sha256, received sha256)."""
    data = os.urandom(nbytes)
    path = tmp_path / f"payload-{src.name}-{dst.name}"
    path.write_bytes(data)
    port = "5201"
    server = subprocess.Popen(["ip", "netns", "exec", dst.netns, sys.executable, TCPCHECK, "recv", port, str(version)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "listening", server.stderr.read()
        run(["ip", "netns", "exec", src.netns, sys.executable, TCPCHECK, "send", dst.address(version), port,
             str(path)], timeout=120)
        out, err = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    received = out.split()
    assert len(received) == 2, err
    assert int(received[1]) == nbytes
    return hashlib.sha256(data).hexdigest(), received[0]


def free_subnet(lab: Lab) -> ipaddress.IPv4Network:
    """A /24 of the lab's Network that no lease holds."""
    leased = {l["subnet"] for l in json.loads(lab.overlayctl("subnets", "--json").stdout)["leases"]}
    for third in range(250, 1, -1):
        net = ipaddress.IPv4Network(f"10.244.{third}.0/24")
        if str(net) not in leased:
            return net
    raise AssertionError("no free subnet")


class Capture:
    """tcpdump in a namespace, as a context manager; ``packets`` are scapy packets afterwards."""

    def __init__(self, netns: str, iface: str, bpf: str, path: Path, count: int = 50):
        self.argv = ["ip", "netns", "exec", netns, "timeout", "30", "tcpdump", "-i", iface, "-n", "-U", "--immediate-mode",
                     "-c", str(count), "-w", str(path), bpf]
        self.path = path
        self.packets = []

    def __enter__(self) -> "Capture":
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()  # "tcpdump: listening on ..."
        assert "listening" in line, line + self.proc.stderr.read()
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.3)
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)
        self.packets = list(rdpcap(str(self.path))) if self.path.exists() and self.path.stat().st_size else []


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.2):
    """Poll ``predicate`` until it returns something truthy; that value, or the last one on timeout."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


def lab_diagnostics(lab: Lab) -> str:
    """The last lines of every node's log, for a failed test's output."""
    parts = []
    for node in lab.nodes:
        try:
            with open(lab.log_file(node), encoding="utf-8", errors="replace") as f:
                tail = f.readlines()[-15:]
        except OSError:
            tail = ["(no log)\n"]
        parts.append(f"--- {node.name} ({node.ip}) ---\n" + "".join(tail))
    return "\n".join(parts)


BEHIND = "198.19.0"  # a segment behind a router namespace: .1 the router, .2 the node


def ip(netns: str, *args: str) -> str:
    """``ip -n NETNS ARGS``' output."""
    return run(["ip", "-n", netns, *args]).stdout


def put_behind_router(lab: Lab, node, router, nat: bool = False) -> None:
    """Move ``node``'s underlay port from the lab's bridge into ``router`` (a lab host, forwarding), the
    node on BEHIND.2. Routed: the other nodes and etcd get a route to BEHIND.0/24 via the router. With
    ``nat``: none; the router masquerades the node's traffic and forwards UDP ``lab.port`` arriving on
    its own address to the node (a node behind NAT, reachable at ``router.ip``)."""
    port = f"n{lab.nodes.index(node) + 1}"
    ip(lab.underlay_ns, "link", "set", port, "nomaster")
    ip(lab.underlay_ns, "link", "set", port, "netns", router.netns)
    ip(router.netns, "addr", "add", f"{BEHIND}.1/24", "dev", port)
    ip(router.netns, "link", "set", port, "up")
    run(["ip", "netns", "exec", router.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
    ip(node.netns, "addr", "flush", "dev", "eth0")
    ip(node.netns, "addr", "add", f"{BEHIND}.2/24", "dev", "eth0")
    ip(node.netns, "route", "add", "default", "via", f"{BEHIND}.1")
    if nat:
        run(["ip", "netns", "exec", router.netns, "nft", "-f", "-"], input=f"""
table ip lab_nat {{
  chain pre {{
    type nat hook prerouting priority dstnat;
    iifname "eth0" udp dport {lab.port} dnat to {BEHIND}.2
  }}
  chain post {{
    type nat hook postrouting priority srcnat;
    oifname "eth0" ip saddr {BEHIND}.0/24 masquerade
  }}
}}
""")
        return
    for netns in [n.netns for n in lab.nodes if n is not node] + [lab.etcd_ns]:
        ip(netns, "route", "add", f"{BEHIND}.0/24", "via", router.ip)
