"""``scripts/bench-control``: the control plane and per-peer kernel state at cluster scale.

For each size N (100, 300, 1000 by default, up to 5000: Kubernetes' largest) one lab is built: etcd and a few
real daemons (kernel VXLAN: one route, neighbour and FDB entry per peer, the
most kernel state any backend keeps), then N simulated nodes
(:mod:`overlayd.lab.simnodes`: the project's own lease code, no namespaces)
acquire leases concurrently, in waves of ``--wave`` (1000) nodes at once, the next wave
when the previous one holds its leases: up to 1000 nodes that is all at once, as the
earlier runs; beyond, a cluster does not start thousands of daemons in one second and
one process standing for them all cannot either (see :mod:`overlayd.lab.simnodes`;
``--wave 5000`` tries). Measured, all in that one run:

* time until all N are acquired, and each node's time from its wave's start (p99), etcd
  requests per acquisition (counted by etcd itself:
  ``grpc_server_msg_received_total``) and etcd's CPU per acquisition, lost races per node
  (mean, max), etcd calls retried (timed out or busy, retried as the daemon does),
  duplicate subnets (must be 0), etcd leases (grants) without a lease key: those of interrupted
  creates the nodes still look for when the simulation stops ("looked for") and the others
  ("leaked", must be 0);
* one more node joins: seconds until every real daemon's peer table *and*
  kernel state (route + neighbour + FDB) include it; then its lease is
  revoked: seconds until it is gone everywhere;
* a real daemon restarted with its VXLAN device deleted: seconds from start
  until all N peers are programmed again;
* that daemon at idle with N peers: RSS and CPU (% of one core over
  ``--idle-seconds``), and etcd requests per node per hour in steady state.
  Idle starts after its first drift-repair pass since the restart
  (:data:`SETTLED`): that pass checks every peer's entries once (~0.1 s of
  CPU at 5000 peers), later ones only see that the listings did not change.

With ``--services SxE`` (e.g. ``1000x10``, issue 22) it measures services instead
(:func:`measure_services`): S services of E endpoints each, owned by simulated nodes
(:mod:`overlayd.lab.simservices`), against real daemons that program them in their nft
table: how long until every daemon's kernel has the whole load once etcd has it; one
endpoint added or removed: seconds from the etcd write being issued until it is in (out of)
every daemon's kernel (seen with ``nft monitor`` in each node's namespace; a daemon often has
it before the writer has etcd's acknowledgement); a daemon restarted with its table deleted: seconds
until its table is created, and the ``nft -f`` time it logs; a daemon's RSS without services
and with them.

Simulated PublicIPs are 198.19.x.y (benchmark range); nothing is sent to
them. Everything stays in the lab's namespaces and is removed at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import click

from .bench import daemon_cpu
from .simnodes import SETTLE_SECONDS
from .topology import Lab, LabError, Node, run

REAL_NODES = 2
MAX_NODES = 5000  # Kubernetes' largest supported cluster
WAVE = 1000  # simulated nodes acquiring at once (see the module note)
SETTLED = 12.0  # seconds after a restart before idle is measured: the daemons' first drift-repair pass (every 10 s)


def subnet_len(nodes: int) -> int:
    """The SubnetLen giving ``nodes`` simulated nodes, the real ones and a joiner room in the lab's /16:
    /26 (1023 subnets) up to 1000 nodes, as the earlier runs, longer beyond (/29 for 5000)."""
    length = 26
    while (1 << (length - 16)) - 1 < nodes + REAL_NODES + 1:
        length += 1
    return length

VXLAN_DEV = "flannel.1"


@dataclasses.dataclass
class Row:
    nodes: int
    wave: int = WAVE
    acquire_s: float | None = None
    acquire_p99_s: float | None = None
    requests_per_acquisition: float | None = None
    etcd_ms_per_acquisition: float | None = None
    retries_mean: float | None = None
    retries_max: int | None = None
    busy_retries: int | None = None
    simulator_cpu_s: float | None = None
    duplicates: int | None = None
    leaked_leases: int | None = None  # grants without a key that no node looks for any more
    unsettled_grants: int | None = None  # grants without a key, of creates still being settled
    propagate_s: float | None = None
    join_s: float | None = None
    revoke_s: float | None = None
    startup_s: float | None = None
    rss_mb: float | None = None
    idle_cpu_pct: float | None = None
    idle_child_cpu_pct: float | None = None
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


def etcd_grants(lab: Lab) -> set[int]:
    """The IDs of the etcd leases (grants) that exist."""
    return {int(word, 16) for word in lab.etcdctl("lease", "list").stdout.split()[3:]}


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


def child_cpu(pid: int) -> float:
    """CPU seconds of the child processes ``pid`` has waited for (cutime + cstime: its iproute2 runs)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        kb = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    return kb / 1024


def measure(n: int, idle_seconds: int, progress, wave: int = WAVE) -> Row:
    row = Row(n, min(wave, n))
    with tempfile.TemporaryDirectory(prefix="overlayd-bench-control-") as tmp:
        lab = Lab(tmp + "/lab", "ovctlb", backend="vxlan", progress=lambda m: None)
        try:
            progress(f"{n} nodes: etcd and {REAL_NODES} real daemons (kernel VXLAN)")
            lab.up(nodes=0)
            config = {"Network": lab.network, "SubnetLen": subnet_len(n),
                      "Backend": {"Type": "vxlan", "Port": lab.port, "VNI": lab.vni}}
            lab.overlayctl("config", "set", "-", input=json.dumps(config))
            real = [lab.add_node(vxlan_impl="kernel") for _ in range(REAL_NODES)]

            progress(f"{n} nodes: {n} simulated nodes acquire leases, {row.wave} at once")
            before, etcd_cpu = etcd_requests(lab), daemon_cpu([lab.etcd_pid])
            acquired = simnodes(lab, "acquire", "--first", "1", "--count", str(n), "--wave", str(row.wave))
            row.etcd_ms_per_acquisition = round(1000 * (daemon_cpu([lab.etcd_pid]) - etcd_cpu) / n, 2)
            row.acquire_s, row.acquire_p99_s = acquired["seconds"], acquired["node_seconds"]["p99"]
            row.requests_per_acquisition = round((etcd_requests(lab) - before) / n, 2)
            row.retries_mean, row.retries_max = acquired["retries_mean"], acquired["retries_max"]
            row.busy_retries, row.simulator_cpu_s = acquired["busy_retries"], acquired["cpu_seconds"]
            row.duplicates = acquired["duplicates"]
            # grants without a key: those the simulated nodes still look for, and the others (leaked)
            grants = etcd_grants(lab)
            row.unsettled_grants = len(grants & set(acquired["unsettled"]))
            row.leaked_leases = len(grants) - (n + REAL_NODES) - row.unsettled_grants
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
            time.sleep(SETTLED)
            cpu0, kids0, req0, t0 = daemon_cpu([node.pid]), child_cpu(node.pid), etcd_requests(lab), time.monotonic()
            time.sleep(idle_seconds)
            cpu1, kids1, req1, t1 = daemon_cpu([node.pid]), child_cpu(node.pid), etcd_requests(lab), time.monotonic()
            row.idle_cpu_pct = round(100 * (cpu1 - cpu0) / (t1 - t0), 2)
            row.idle_child_cpu_pct = round(100 * (kids1 - kids0) / (t1 - t0), 2)
            row.rss_mb = round(rss_mb(node.pid), 1)
            row.etcd_requests_per_node_hour = round((req1 - req0) / REAL_NODES / (t1 - t0) * 3600)
        except (LabError, OSError, ValueError, KeyError) as exc:
            row.error = str(exc)
        finally:
            lab.down()
    return row


COLUMNS = [  # (field, header, format)
    ("nodes", "nodes", "{}"), ("wave", "wave", "{}"), ("acquire_s", "acquire s", "{:.2f}"),
    ("acquire_p99_s", "p99 s", "{:.2f}"), ("requests_per_acquisition", "req/acq", "{:.2f}"),
    ("etcd_ms_per_acquisition", "etcd ms", "{:.1f}"), ("retries_mean", "retries", "{:.2f}"),
    ("retries_max", "max", "{}"), ("busy_retries", "busy", "{}"), ("duplicates", "dup", "{}"),
    ("leaked_leases", "leaked", "{}"), ("unsettled_grants", "looked for", "{}"),
    ("propagate_s", "all in s", "{:.2f}"), ("join_s", "join s", "{:.3f}"), ("revoke_s", "revoke s", "{:.3f}"),
    ("startup_s", "start s", "{:.2f}"), ("rss_mb", "RSS MB", "{:.1f}"), ("idle_cpu_pct", "idle %CPU", "{:.2f}"),
    ("idle_child_cpu_pct", "+child", "{:.2f}"),
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


SERVICE_OWNERS = 50  # simulated nodes the endpoints belong to (200 pods each for 10,000)
CHANGES = 5  # single-endpoint adds and removes timed, one at a time
NFT_CREATED = re.compile(r"nft table ip overlayd-svc created in (\d+) ms: (\d+) services, (\d+) ready endpoints")


@dataclasses.dataclass
class ServiceRow:
    services: int
    endpoints: int
    write_s: float | None = None  # etcd: all services and endpoints written (simservices)
    all_in_s: float | None = None  # from the last write until every real daemon's kernel has all
    add_s: list[float] = dataclasses.field(default_factory=list)  # one endpoint in every kernel, from its write
    remove_s: list[float] = dataclasses.field(default_factory=list)  # ... and out of every kernel
    startup_s: float | None = None  # a restarted daemon: start until its table is created
    nft_apply_ms: int | None = None  # ... of which its one 'nft -f' (its log line)
    rss_mb_idle: float | None = None  # a daemon with no service
    rss_mb: float | None = None  # the same daemon with all of them
    error: str = ""


def parse_services_spec(spec: str) -> tuple[int, int]:
    """``SxE`` -> (S, E); click's BadParameter when it is not that. Pure."""
    match = re.fullmatch(r"(\d+)x(\d+)", spec.strip())
    if not match or not 1 <= int(match[1]) <= 5000 or not 1 <= int(match[2]) <= 100:
        raise click.BadParameter(f"{spec!r}: SERVICESxENDPOINTS, e.g. 1000x10 (at most 5000x100)",
                                 param_hint="--services")
    return int(match[1]), int(match[2])


class NftMonitor:
    """``nft monitor`` in a namespace: when each line arrived (wall clock), read in a thread.
    Bounded: :meth:`stop` kills it (by PID), and it runs at most ``limit`` seconds."""

    def __init__(self, netns: str, limit: float = 600):
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(["timeout", str(int(limit)), "ip", "netns", "exec", netns, "nft", "monitor"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append((time.time(), line.rstrip("\n")))

    def first(self, needle: str, since: float) -> float | None:
        """When the first line after ``since`` that contains ``needle`` arrived, or None."""
        with self._lock:
            return next((t for t, line in self.lines if t >= since and needle in line), None)

    def nth(self, needle: str, n: int) -> float | None:
        """When the ``n``-th line (1-based) that contains ``needle`` arrived, or None."""
        with self._lock:
            times = [t for t, line in self.lines if needle in line]
        return times[n - 1] if len(times) >= n else None

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._reader.join(10)


def simservices(lab: Lab, *args: str, timeout: float = 900) -> dict:
    """Run :mod:`overlayd.lab.simservices` in etcd's namespace; its JSON result."""
    out = run(["ip", "netns", "exec", lab.etcd_ns, sys.executable, "-m", "overlayd.lab.simservices",
               *args, "--endpoints", lab.etcd_endpoint], timeout=timeout).stdout
    return json.loads(out)


def _everywhere(monitors: list[NftMonitor], needle: str, since: float, timeout: float) -> float:
    """Seconds from ``since`` until every monitor has seen ``needle``; LabError after ``timeout``."""
    if not wait(lambda: all(m.first(needle, since) for m in monitors), timeout, 0.01):
        raise LabError(f"'{needle}' did not reach every node's kernel in {timeout:.0f} s")
    return round(max(m.first(needle, since) for m in monitors) - since, 3)


def measure_services(services: int, per_service: int, progress) -> ServiceRow:
    """The services row (see the module note): one lab, :data:`REAL_NODES` real daemons."""
    row = ServiceRow(services, services * per_service)
    with tempfile.TemporaryDirectory(prefix="overlayd-bench-services-") as tmp:
        lab = Lab(tmp + "/lab", "ovsvcb", backend="vxlan", progress=lambda m: None)
        monitors: list[NftMonitor] = []
        try:
            progress(f"services: etcd, {REAL_NODES} real daemons, {SERVICE_OWNERS} simulated endpoint owners")
            lab.up(nodes=0)
            real = [lab.add_node(vxlan_impl="kernel") for _ in range(REAL_NODES)]
            simnodes(lab, "acquire", "--first", "1", "--count", str(SERVICE_OWNERS))
            time.sleep(2)
            row.rss_mb_idle = round(rss_mb(real[1].pid), 1)
            monitors = [NftMonitor(node.netns) for node in real]

            progress(f"services: writing {services} services x {per_service} endpoints")
            written = simservices(lab, "create", "--services", str(services), "--per-service", str(per_service),
                                  "--owners", str(SERVICE_OWNERS))
            row.write_s = round(written["create_s"] + written["endpoints_s"], 2)
            needle = "add chain ip overlayd-svc ep-"
            if not wait(lambda: all(m.nth(needle, row.endpoints) for m in monitors), 300, 0.2):
                raise LabError(f"the real daemons did not program {row.endpoints} endpoints in 300 s")
            row.all_in_s = round(max(m.nth(needle, row.endpoints) for m in monitors) - written["done_at"], 2)
            row.rss_mb = round(rss_mb(real[1].pid), 1)

            progress(f"services: {CHANGES} endpoints added and removed, one at a time")
            leases = json.loads(lab.overlayctl("subnets", "--json").stdout)["leases"]
            owner = next(l["subnet"] for l in leases if l["public_ip"].startswith("198.19."))
            base = owner.split("/")[0].rsplit(".", 1)[0]
            for i in range(CHANGES):
                service, ip = f"svc-{1 + i * services // CHANGES}", f"{base}.{250 - i}"
                chain = f"ep-{service}-tcp-80-{ip}-8080"
                added = simservices(lab, "add", "--service", service, "--ip", ip)
                row.add_s.append(_everywhere(monitors, f"add chain ip overlayd-svc {chain}", added["started_at"], 30))
                removed = simservices(lab, "remove", "--service", service, "--ip", ip)
                row.remove_s.append(_everywhere(monitors, f"delete chain ip overlayd-svc {chain}",
                                                removed["started_at"], 30))

            progress("services: a daemon restarted with its table deleted")
            node = real[0]
            lab.stop_node(node, signal.SIGKILL)
            run(["ip", "netns", "exec", node.netns, "nft", "delete", "table", "ip", "overlayd-svc"])
            log_size = os.path.getsize(lab.log_file(node))
            t0 = time.monotonic()
            lab.start_node(node, wait=False)

            def created() -> re.Match | None:
                with open(lab.log_file(node), encoding="utf-8", errors="replace") as f:
                    f.seek(log_size)
                    return NFT_CREATED.search(f.read())
            if not wait(created, 300, 0.05):
                raise LabError("the restarted daemon did not create its services table in 300 s")
            row.startup_s = round(time.monotonic() - t0, 2)
            match = created()
            row.nft_apply_ms = int(match[1])
            if (int(match[2]), int(match[3])) != (services, row.endpoints):
                raise LabError(f"the restarted daemon's table has {match[2]} services, {match[3]} endpoints")
        except (LabError, OSError, ValueError, KeyError, StopIteration) as exc:
            row.error = str(exc) or type(exc).__name__
        finally:
            for monitor in monitors:
                monitor.stop()
            lab.down()
    return row


def services_table(row: ServiceRow) -> str:
    """The services row as text lines."""
    def spread(values: list[float]) -> str:
        return f"median {statistics.median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms" if values else "-"
    show = lambda v, fmt="{}": "-" if v is None else fmt.format(v)  # noqa: E731
    lines = [f"services: {row.services} x {row.endpoints // row.services} endpoints ({row.endpoints}), "
             f"{REAL_NODES} real daemons",
             f"  written to etcd in {show(row.write_s)} s; in every daemon's kernel {show(row.all_in_s)} s after the "
             f"last write",
             f"  one endpoint added, in every kernel: {spread(row.add_s)} ({len(row.add_s)} changes)",
             f"  one endpoint removed, out of every kernel: {spread(row.remove_s)} ({len(row.remove_s)} changes)",
             f"  a daemon restarted with no table: its table created {show(row.startup_s)} s after its start "
             f"('nft -f' {show(row.nft_apply_ms)} ms of it)",
             f"  daemon RSS: {show(row.rss_mb_idle)} MB without services, {show(row.rss_mb)} MB with them"]
    if row.error:
        lines.append(f"FAILED: {row.error}")
    return "\n".join(lines)


def services_main(spec: str, as_json: bool, progress) -> None:
    """``--services SxE``: measure, print, exit (1 if the run failed)."""
    row = measure_services(*parse_services_spec(spec), progress)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(row), indent=2))
    else:
        click.echo("\n" + services_table(row))
        click.echo(f"\n({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, load average "
                   f"{os.getloadavg()[0]:.1f} at the end)")
    sys.exit(1 if row.error else 0)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--nodes", default="100,300,1000", show_default=True,
              help=f"Comma-separated cluster sizes (simulated nodes), at most {MAX_NODES} each.")
@click.option("--idle-seconds", type=click.IntRange(5, 300), default=20, show_default=True,
              help="How long the idle CPU and steady-state etcd request rate are measured.")
@click.option("--wave", type=click.IntRange(1, MAX_NODES), default=WAVE, show_default=True,
              help="Simulated nodes acquiring at once; the next wave starts when they hold their leases.")
@click.option("--services", metavar="SxE", help="Measure S services of E endpoints each (e.g. 1000x10) "
                                                "instead of the cluster sizes.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def main(nodes, idle_seconds, wave, services, as_json):
    """Measure overlayd's control plane at 100, 300 and 1000 nodes (or the sizes given), in one run."""
    try:
        sizes = [int(x) for x in nodes.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{nodes!r}: comma-separated numbers", param_hint="--nodes") from None
    if not sizes or not all(1 <= s <= MAX_NODES for s in sizes):
        raise click.BadParameter(f"each size must be between 1 and {MAX_NODES}", param_hint="--nodes")
    progress = lambda m: click.echo(f"  .. {m}", err=True)  # noqa: E731
    if services:
        services_main(services, as_json, progress)
    rows = [measure(n, idle_seconds, progress, wave) for n in sizes]
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    else:
        click.echo("\n" + table(rows))
        lengths = "/".join(f"/{subnet_len(r.nodes)}" for r in rows)
        click.echo(f"\n({REAL_NODES} real kernel-VXLAN daemons + simulated lease holders, {lengths} "
                   f"subnets; {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, load average "
                   f"{os.getloadavg()[0]:.1f} at the end)")
        click.echo(f"Simulated nodes acquire in waves of up to {wave} at once, the next wave when the previous "
                   f"one holds its leases (a cluster does not start thousands of daemons in one second; one "
                   f"process standing for them cannot). p99 s: a node's time from its wave's start to its "
                   f"lease; etcd ms: etcd's CPU per acquisition; busy: etcd calls retried as the daemon "
                   f"retries them. leaked: etcd grants with no lease key that no node looks for; looked for: grants of "
                   f"creates whose call was cut short, that the simulated nodes still look for after "
                   f"{SETTLE_SECONDS:g} s (a daemon looks for an hour and revokes what it finds). +child: the idle "
                   f"daemon's child processes (iproute2 listings for drift repair). The simulator's own CPU: "
                   + ", ".join(f"{r.simulator_cpu_s:g} s at {r.nodes}" for r in rows if r.simulator_cpu_s is not None))
    sys.exit(1 if any(r.error for r in rows) else 0)


if __name__ == "__main__":
    main()
