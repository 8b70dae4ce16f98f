"""``scripts/bench-control``: the control plane and per-peer kernel state at cluster scale.

For each size N (100, 300, 1000 by default) one lab is built: etcd and a few
real daemons (kernel VXLAN: one route, neighbour and FDB entry per peer, the
most kernel state any backend keeps), then N simulated nodes
(:mod:`overlayd.lab.simnodes`: the project's own lease code, no namespaces)
acquire leases concurrently. Measured, all in that one run:

* time until all N are acquired, etcd requests per acquisition (counted by
  etcd itself: ``grpc_server_msg_received_total``), lost races per node
  (mean, max), duplicate subnets (must be 0), leaked etcd leases (grants
  without a lease key; must be 0);
* one more node joins: seconds until every real daemon's peer table *and*
  kernel state (route + neighbour + FDB) include it; then its lease is
  revoked: seconds until it is gone everywhere;
* a real daemon restarted with its VXLAN device deleted: seconds from start
  until all N peers are programmed again;
* that daemon at idle with N peers: RSS and CPU (% of one core over
  ``--idle-seconds``), and etcd requests per node per hour in steady state.

Simulated PublicIPs are 198.19.x.y (benchmark range); nothing is sent to
them. Everything stays in the lab's namespaces and is removed at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import tempfile
import time

import click

from .bench import daemon_cpu
from .topology import Lab, LabError, Node, run

REAL_NODES = 2
SUBNET_LEN = 26  # 1023 subnets in 10.244.0.0/16: room for 1000 nodes and the real ones
VXLAN_DEV = "flannel.1"


@dataclasses.dataclass
class Row:
    nodes: int
    acquire_s: float | None = None
    requests_per_acquisition: float | None = None
    retries_mean: float | None = None
    retries_max: int | None = None
    duplicates: int | None = None
    leaked_leases: int | None = None
    propagate_s: float | None = None
    join_s: float | None = None
    revoke_s: float | None = None
    startup_s: float | None = None
    rss_mb: float | None = None
    idle_cpu_pct: float | None = None
    etcd_requests_per_node_hour: float | None = None
    error: str = ""


def _python_in(lab: Lab, netns: str, code: str, timeout: float = 30) -> str:
    return run(["ip", "netns", "exec", netns, sys.executable, "-c", code], timeout=timeout,
               env=dict(os.environ, **lab.etcd_env())).stdout


def etcd_requests(lab: Lab) -> int:
    """Requests etcd has received so far (its own counter, every gRPC method)."""
    text = _python_in(lab, lab.etcd_ns, "import urllib.request; print(urllib.request.urlopen("
                      f"'{lab.etcd_endpoint}/metrics', timeout=5).read().decode())")
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("grpc_server_msg_received_total")))


def etcd_grants(lab: Lab) -> int:
    """How many etcd leases (grants) exist."""
    return int(lab.etcdctl("lease", "list").stdout.split()[1])


def simnodes(lab: Lab, *args: str, timeout: float = 600) -> dict:
    """Run :mod:`overlayd.lab.simnodes` in etcd's namespace; its JSON result."""
    out = run(["ip", "netns", "exec", lab.etcd_ns, sys.executable, "-m", "overlayd.lab.simnodes",
               *args, "--endpoints", lab.etcd_endpoint], timeout=timeout).stdout
    return json.loads(out)


def kernel_peers(lab: Lab, node: Node) -> dict[str, int]:
    """Per-peer kernel state on ``node``: routes and FDB entries on the VXLAN device."""
    ns = node.netns
    routes = run(["ip", "-n", ns, "route", "show", "dev", VXLAN_DEV], check=False).stdout.splitlines()
    fdb = run(["bridge", "-n", ns, "fdb", "show", "dev", VXLAN_DEV], check=False).stdout.splitlines()
    return {"routes": sum(" via " in r for r in routes), "fdb": sum(" dst " in f for f in fdb)}


def has_peer(lab: Lab, node: Node, subnet: str) -> bool:
    """Whether ``node``'s peer table and kernel state include ``subnet``."""
    try:
        if subnet not in lab.node_status(node)["peers"]:
            return False
    except (OSError, ValueError, KeyError):
        return False
    gateway = subnet.split("/")[0]
    ns = node.netns
    return bool(run(["ip", "-n", ns, "route", "show", subnet, "dev", VXLAN_DEV], check=False).stdout.strip()
                and run(["ip", "-n", ns, "neigh", "show", gateway, "dev", VXLAN_DEV], check=False).stdout.strip())


def wait(predicate, timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        kb = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    return kb / 1024


def measure(n: int, idle_seconds: int, progress) -> Row:
    row = Row(n)
    with tempfile.TemporaryDirectory(prefix="overlayd-bench-control-") as tmp:
        lab = Lab(tmp + "/lab", "ovctlb", backend="vxlan", progress=lambda m: None)
        try:
            progress(f"{n} nodes: etcd and {REAL_NODES} real daemons (kernel VXLAN)")
            lab.up(nodes=0)
            config = {"Network": lab.network, "SubnetLen": SUBNET_LEN,
                      "Backend": {"Type": "vxlan", "Port": lab.port, "VNI": lab.vni}}
            lab.overlayctl("config", "set", "-", input=json.dumps(config))
            real = [lab.add_node(vxlan_impl="kernel") for _ in range(REAL_NODES)]

            progress(f"{n} nodes: {n} simulated nodes acquire leases at once")
            before = etcd_requests(lab)
            acquired = simnodes(lab, "acquire", "--first", "1", "--count", str(n))
            row.acquire_s = acquired["seconds"]
            row.requests_per_acquisition = round((etcd_requests(lab) - before) / n, 2)
            row.retries_mean, row.retries_max = acquired["retries_mean"], acquired["retries_max"]
            row.duplicates = acquired["duplicates"]
            row.leaked_leases = etcd_grants(lab) - (n + REAL_NODES)
            peers = n + REAL_NODES - 1
            t0 = time.monotonic()
            if not wait(lambda: all(kernel_peers(lab, node)["fdb"] >= peers for node in real), 120, 0.2):
                raise LabError(f"real daemons did not program {peers} peers in 120 s")
            row.propagate_s = round(time.monotonic() - t0 + 0.0, 2)

            progress(f"{n} nodes: one more joins, then leaves")
            joined = simnodes(lab, "acquire", "--first", str(n + 1), "--count", "1")
            subnet = joined["subnets"][0]
            if not wait(lambda: all(has_peer(lab, node, subnet) for node in real), 30):
                raise LabError(f"the joining node {subnet} did not reach every real daemon in 30 s")
            row.join_s = round(time.time() - joined["done_at"], 3)
            revoked = simnodes(lab, "revoke", "--first", str(n + 1), "--count", "1")
            if not wait(lambda: not any(has_peer(lab, node, subnet) for node in real), 30):
                raise LabError(f"the revoked lease {subnet} was not removed everywhere in 30 s")
            row.revoke_s = round(time.time() - revoked["done_at"], 3)

            progress(f"{n} nodes: restart a daemon with nothing programmed")
            node = real[0]
            lab.stop_node(node, signal.SIGKILL)
            run(["ip", "-n", node.netns, "link", "del", VXLAN_DEV])
            t0 = time.monotonic()
            lab.start_node(node, wait=False)
            if not wait(lambda: min(kernel_peers(lab, node).values()) >= peers, 120, 0.05):
                raise LabError(f"restarted daemon did not program {peers} peers in 120 s")
            row.startup_s = round(time.monotonic() - t0, 2)

            progress(f"{n} nodes: {idle_seconds}s at idle")
            time.sleep(2)
            cpu0, req0, t0 = daemon_cpu([node.pid]), etcd_requests(lab), time.monotonic()
            time.sleep(idle_seconds)
            cpu1, req1, t1 = daemon_cpu([node.pid]), etcd_requests(lab), time.monotonic()
            row.idle_cpu_pct = round(100 * (cpu1 - cpu0) / (t1 - t0), 2)
            row.rss_mb = round(rss_mb(node.pid), 1)
            row.etcd_requests_per_node_hour = round((req1 - req0) / REAL_NODES / (t1 - t0) * 3600)
        except (LabError, OSError, ValueError, KeyError) as exc:
            row.error = str(exc)
        finally:
            lab.down()
    return row


COLUMNS = [  # (field, header, format)
    ("nodes", "nodes", "{}"), ("acquire_s", "acquire s", "{:.2f}"),
    ("requests_per_acquisition", "req/acq", "{:.2f}"), ("retries_mean", "retries", "{:.2f}"),
    ("retries_max", "max", "{}"), ("duplicates", "dup", "{}"), ("leaked_leases", "leaked", "{}"),
    ("propagate_s", "all in s", "{:.2f}"), ("join_s", "join s", "{:.3f}"), ("revoke_s", "revoke s", "{:.3f}"),
    ("startup_s", "start s", "{:.2f}"), ("rss_mb", "RSS MB", "{:.1f}"), ("idle_cpu_pct", "idle %CPU", "{:.2f}"),
    ("etcd_requests_per_node_hour", "etcd req/h", "{:.0f}"),
]


def table(rows: list[Row]) -> str:
    cells = [[h for _, h, _ in COLUMNS]]
    for r in rows:
        cells.append(["-" if getattr(r, f) is None else fmt.format(getattr(r, f)) for f, _, fmt in COLUMNS])
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c[i].rjust(widths[i]) for i in range(len(COLUMNS))) for c in cells]
    lines += [f"nodes={r.nodes}: FAILED: {r.error}" for r in rows if r.error]
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--nodes", default="100,300,1000", show_default=True,
              help="Comma-separated cluster sizes (simulated nodes), at most 1000 each.")
@click.option("--idle-seconds", type=click.IntRange(5, 300), default=20, show_default=True,
              help="How long the idle CPU and steady-state etcd request rate are measured.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def main(nodes, idle_seconds, as_json):
    """Measure overlayd's control plane at 100, 300 and 1000 nodes, in one run."""
    try:
        sizes = [int(x) for x in nodes.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{nodes!r}: comma-separated numbers", param_hint="--nodes") from None
    if not sizes or not all(1 <= s <= 1000 for s in sizes):
        raise click.BadParameter("each size must be between 1 and 1000", param_hint="--nodes")
    progress = lambda m: click.echo(f"  .. {m}", err=True)  # noqa: E731
    rows = [measure(n, idle_seconds, progress) for n in sizes]
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    else:
        click.echo("\n" + table(rows))
        click.echo(f"\n({REAL_NODES} real kernel-VXLAN daemons + simulated lease holders, /{SUBNET_LEN} "
                   f"subnets; {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs)")
    sys.exit(1 if any(r.error for r in rows) else 0)


if __name__ == "__main__":
    main()
