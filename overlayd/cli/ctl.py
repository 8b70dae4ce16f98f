"""``overlayctl``: the operator's view of the cluster network in etcd and of the local daemon.

Output conventions, for every command:

* human output fits :data:`WIDTH` (80) columns: tables shrink their widest
  column and cut its long cells with ``~``; non-printable characters show as
  ``?``; the ``status`` verdict is wrapped, never cut;
* a command that changes etcd (``config set``, ``lease ...``) confirms it in
  one line on stdout; ``-q``/``--quiet`` leaves that out (notes still go to stderr);
* ``--json`` prints one JSON object on stdout, ``{"schema": JSON_SCHEMA, ...}``,
  and a key has one type wherever it appears (or null): ``subnets`` gives
  ``leases`` (a list of lease records), the ``lease`` commands ``lease`` (the
  record of the lease they acted on), ``peers`` ``peer_table``, ``status`` the
  daemon's status file (every data-plane counter in ``stats``, 0 until
  counted), ``config get`` and ``config set`` both ``stored`` (the config as a
  JSON object, null when it is not one), ``effective``, ``notes`` and
  ``error``; ``subnets --watch --json`` prints one such object per line
  (JSON Lines: ``time``, ``event``, ``lease``);
* errors are one line on stderr, ``overlayctl: error: ...``, with exit status
  1 (a file that cannot be read too; 2 for a bad flag, as click does).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import sys
import textwrap
import time

import click

from .. import __version__
from ..encap.drops import Drop
from ..errors import ConfigError, LeaseError, OverlayError
from ..lease.audit import audit
from ..lease.connectivity import Connectivity
from ..lease.etcd import EtcdStore
from ..lease.manager import follow_peers
from ..lease.model import Lease, LeaseAttrs
from ..lease.watcher import Batch, LeaseWatcher
from ..netconf import NetworkConfig, parse_config
from .common import etcd_options, one_line_errors, setup_logging

PROG = "overlayctl"
WIDTH = 80  # columns of human output
CUT = "~"  # ends a cell cut to fit WIDTH
JSON_SCHEMA = 1  # the "schema" of every --json output: raised when a key changes its meaning or type

# The userspace data plane's counters (overlayd.encap.drops.Counters): 'status --json' gives each
# of them, 0 until it is counted (kernel backends forward in the kernel: theirs stay 0).
DATAPLANE_COUNTERS = (*(f"{way}_{unit}" for way in ("rx", "tx", "dev_rx", "dev_tx") for unit in ("packets", "bytes")),
                      *(f"drop_{reason.value}" for reason in Drop))

# The largest config 'config set' stores. etcd refuses a request over --max-request-bytes
# (default 1.5 MiB = 1572864) with "request is too large", and only once connected. A put
# costs the key and ~24 bytes of framing besides the value (etcd 3.4 stored 1572814 bytes
# under a 26-byte key, not one more): 4 KiB of room covers any sane --etcd-prefix.
MAX_CONFIG_BYTES = 1572864 - 4096


def _run(coro_fn, obj):
    async def main():
        store = EtcdStore(obj["endpoints"], obj["prefix"], timeout=obj["timeout"],
                          credentials=obj["credentials"])
        try:
            return await coro_fn(store)
        finally:
            await store.close()
    return asyncio.run(main())


def local_addresses() -> set[ipaddress.IPv4Address]:
    """The IPv4 addresses of this host (this network namespace)."""
    from pyroute2 import IPRoute  # netlink: only needed for this one column
    try:
        with IPRoute() as ipr:
            return {ipaddress.IPv4Address(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(family=2)}
    except OSError:
        return set()


def fmt_duration(seconds: float | None) -> str:
    """``3d04h``, ``2h03m``, ``5m02s`` (``-`` for None): at most 6 characters below 100 days."""
    if seconds is None:
        return "-"
    seconds = max(int(seconds), 0)
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return f"{d}d{h:02d}h" if d else f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def fmt_bytes(count: int) -> str:
    """``348 B``, ``1.2 KiB``, ``3.0 GiB``: at most 9 characters below 1,000 PiB."""
    value, unit = float(count), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            break
        value /= 1024
    return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"


def _printable(value: object) -> str:
    return "".join(c if c.isprintable() else "?" for c in str(value))


def fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ending in ``~`` when cut."""
    return text if len(text) <= width else text[:max(width - 1, 0)] + CUT


def render_table(rows: list[list[object]], headers: list[str], width: int = WIDTH) -> str:
    """Left-aligned columns two spaces apart, no line longer than ``width``.

    Columns are given their width narrowest first, each at most an equal
    share of what is left (never less than its header): short columns such as
    addresses stay whole, and only outsized values (a garbled backend name or
    MAC from etcd) are cut, ending in ``~``.
    """
    cells = [[_printable(v) for v in row] for row in [headers, *rows]]
    widths = [max(len(c) for c in col) for col in zip(*cells)]
    left = width - 2 * (len(widths) - 1)
    for done, i in enumerate(sorted(range(len(widths)), key=widths.__getitem__)):
        widths[i] = min(widths[i], max(left // (len(widths) - done), len(headers[i])))
        left -= widths[i]
    return "\n".join("  ".join(fit(c, w).ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _str_or_none(value) -> str | None:
    return None if value is None else str(value)


def lease_record(lease: Lease, now: float, mine: set[ipaddress.IPv4Address],
                 problems: list[str] | None = None) -> dict:
    """One lease as ``subnets --json`` and the ``lease`` commands print it; ``problems``:
    what :func:`overlayd.lease.audit.audit` says about it (the daemons' rule)."""
    data = lease.attrs.backend_data or {}
    left = lease.time_left(now)
    return {
        "subnet": str(lease.subnet),
        "subnet6": _str_or_none(lease.subnet6),
        "public_ip": _str_or_none(lease.public_ip),
        "public_ipv6": _str_or_none(lease.attrs.public_ip6),
        "backend": lease.attrs.backend_type,
        "vtep_mac": data.get("VtepMAC"),
        "vni": data.get("VNI"),
        "public_key": data.get("PublicKey"),  # wireguard's
        "ttl_seconds": None if left is None else int(left),
        "reserved": lease.handle == 0,
        "local": lease.public_ip in mine,
        "problems": problems or [],
    }


def json_document(**fields) -> dict:
    """A --json output: ``fields`` after the ``schema`` version."""
    return {"schema": JSON_SCHEMA, **fields}


def _echo_json(**fields) -> None:
    click.echo(json.dumps(json_document(**fields), indent=2))


def json_option(help_text: str = "Print JSON for scripts (see 'overlayctl --help')."):
    """The ``--json`` flag every command has (the command receives ``as_json``)."""
    return click.option("--json", "as_json", is_flag=True, help=help_text)


def quiet_option(func):
    """``-q``/``--quiet`` of the commands that change etcd (the command receives ``quiet``)."""
    return click.option("-q", "--quiet", is_flag=True,
                         help="Print no confirmation (errors and notes still go to stderr).")(func)


def wrap(text: str, width: int = WIDTH) -> str:
    """``text`` (made printable) wrapped to ``width`` columns, continuation lines indented."""
    return textwrap.fill(_printable(text), width, subsequent_indent="  ", break_on_hyphens=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name=PROG, message="%(prog)s %(version)s")
@etcd_options
@click.option("--timeout", type=click.FloatRange(0.1, 300), default=5.0, show_default=True,
              help="Seconds to wait for etcd before giving up.")
@click.pass_context
def cli(ctx, etcd_endpoints, etcd_prefix, etcd_credentials, timeout):
    """Inspect and configure an overlayd cluster network.

    Reads the same etcd flags (and OVERLAYD_ETCD_* environment variables)
    as the daemon; 'status' and 'peers' read the local daemon's status file
    instead. Human output fits 80 columns; every command takes --json (one
    object with a "schema" version); errors are one line on stderr with exit
    status 1; changes are confirmed on stdout (-q: not).
    """
    ctx.obj = {"endpoints": etcd_endpoints, "prefix": etcd_prefix, "credentials": etcd_credentials,
               "timeout": timeout}


SUBNET_HEADERS = ["SUBNET", "NODE IP", "BACKEND", "VTEP MAC", "TTL LEFT", "LOCAL", "!"]


def _both(record: dict, v4: str, v6: str) -> str:
    """A record's IPv4 and IPv6 values of one kind, as one string (a dual-stack lease has two)."""
    return ",".join(dict.fromkeys(v for v in (record.get(v4), record.get(v6)) if v)) or "-"


def _subnet_rows(r: dict) -> list[list[str]]:
    """A record's table rows: a dual-stack lease's IPv6 subnet and address on a second row."""
    rows = [[r["subnet"], r.get("public_ip") or r.get("public_ipv6") or "-", r["backend"], r["vtep_mac"] or "-",
             "reserved" if r["reserved"] else fmt_duration(r["ttl_seconds"]), "*" if r["local"] else "",
             "!" if r["problems"] else ""]]
    if r.get("subnet6") and r["subnet6"] != r["subnet"]:
        rows.append([f"  {r['subnet6']}", r.get("public_ipv6") or "-", "", "", "", "", ""])
    return rows


def _peer_rows(p: dict, now: float) -> list[list[str]]:
    """A peer's rows in ``overlayctl peers``: a dual-stack peer's IPv6 subnet and address on a second row."""
    rows = [[p["subnet"], p.get("public_ip") or p.get("public_ipv6") or "-", p["backend"], p["vtep_mac"] or "-",
             fmt_duration(now - p["since"]), "yes" if p["routed"] else "no"]]
    if p.get("subnet6") and p["subnet6"] != p["subnet"]:
        rows.append([f"  {p['subnet6']}", p.get("public_ipv6") or "-", "", "", "", ""])
    return rows


def with_sessions(table: list[dict], peer_stats: list[dict]) -> list[dict]:
    """The status file's ``peer_table`` with each peer's sessions from its ``peer_stats`` (wireguard: one per
    device, ``Backend.peer_stats``) as ``sessions``: device, public key, endpoint, subnets, latest handshake
    (epoch seconds, 0: never), stalled, rx and tx bytes. Peers without any have no ``sessions``. Pure."""
    sessions: dict[str, list[dict]] = {}
    for row in peer_stats:
        sessions.setdefault(row["subnet"], []).append(
            {k: v for k, v in row.items() if k not in ("subnet", "handshake_age")})
    return [{**p, "sessions": sessions[p["subnet"]]} if p["subnet"] in sessions else p for p in table]


def session_lines(table: list[dict], now: float) -> list[str]:
    """``overlayctl peers``' lines for the peers' sessions (:func:`with_sessions`): the peer's subnet and
    public key, then device, endpoint, last handshake and bytes received and sent; none without sessions."""
    lines = []
    for p in table:
        for s in p.get("sessions", ()):
            seen = f"{fmt_duration(now - s['latest_handshake'])} ago" if s["latest_handshake"] else "never"
            lines.append(fit(f"{_printable(p['subnet']):<18}  {_printable(s['public_key'])}", WIDTH))
            lines.append(fit(f"  {s['device']}  {_printable(s['endpoint'] or '-')}  handshake {seen}  "
                             f"rx {fmt_bytes(s['rx_bytes'])}  tx {fmt_bytes(s['tx_bytes'])}"
                             f"{'  STALLED' if s['stalled'] else ''}", WIDTH))
    return ["", "sessions (public key; device, endpoint, last handshake, bytes rx/tx):", *lines] \
        if lines else []


def watch_line(event: str, record: dict, when: float) -> str:
    """One human line of ``subnets --watch``: local time, event, subnet, node, backend, MAC."""
    stamp = time.strftime("%H:%M:%S", time.localtime(when))
    line = (f"{stamp} {event:<7} {_both(record, 'subnet', 'subnet6'):<18} "
            f"{_both(record, 'public_ip', 'public_ipv6'):<15} "
            f"{_printable(record['backend'])} {_printable(record['vtep_mac'] or '')}")
    return fit(line.rstrip(), WIDTH)


def _records(leases, now: float, mine, config: NetworkConfig | None = None) -> list[dict]:
    """The leases as ``subnets`` records, by subnet, each with what :func:`audit` says about it
    under ``config`` (nothing without one)."""
    notes = audit(leases, config) if config is not None else {}
    return [lease_record(l, now, mine, notes.get(l.subnet)) for l in sorted(leases, key=lambda l: (l.subnet.version, l.subnet))]


def _subnets_text(records: list[dict]) -> str:
    """The human ``subnets`` listing of ``records``: the table, then one line per problem
    (for the rows marked ``!``)."""
    if not records:
        return "no subnet leases"
    lines = [render_table([row for r in records for row in _subnet_rows(r)], SUBNET_HEADERS)]
    lines += [fit(f"! {r['subnet']}: {'; '.join(r['problems'])}", WIDTH) for r in records if r["problems"]]
    return "\n".join(lines)


async def _listing(store) -> tuple[list[Lease], int, NetworkConfig | None]:
    """The leases (with their TTLs), the listing's revision and the network config they are
    judged by (None when there is none or it is invalid: then nothing is marked)."""
    leases, revision = await store.list_leases(with_ttl=True)
    raw = await store.get_config()
    try:
        return leases, revision, parse_config(raw) if raw is not None else None
    except ConfigError:
        return leases, revision, None


async def _watch(store, as_json: bool) -> None:
    """List the leases, then print every change the etcd watch reports, until cancelled."""
    mine = await asyncio.to_thread(local_addresses)  # pyroute2's IPRoute runs a loop of its own
    leases, revision, config = await _listing(store)
    now = time.time()
    records = _records(leases, now, mine, config)
    if as_json:
        for r in records:
            click.echo(json.dumps(json_document(time=now, event="listed", lease=r)))
    else:
        click.echo(_subnets_text(records))
        click.echo("watching for changes (Ctrl-C to stop)", err=True)
    watcher = LeaseWatcher()
    watcher.reset(leases, revision)
    known = {l.subnet for l in leases}

    def changed(batch: Batch) -> None:
        when = time.time()
        events = [("removed", l) for l in batch.removed]
        events += [("changed" if l.subnet in known else "added", l) for l in batch.added]
        for event, lease in events:
            (known.discard if event == "removed" else known.add)(lease.subnet)
            record = lease_record(lease, when, mine)
            click.echo(json.dumps(json_document(time=when, event=event, lease=record)) if as_json
                       else watch_line(event, record, when))

    connectivity = Connectivity(store.probe)
    probe = asyncio.create_task(connectivity.run())  # follow_peers waits on it while etcd is away
    try:
        await follow_peers(store, watcher, changed, connectivity)
    finally:
        probe.cancel()
        await asyncio.gather(probe, return_exceptions=True)


@cli.command()
@click.option("--watch", is_flag=True,
              help="After the list, print one line per change (added, changed, removed) with its "
                   "time, until Ctrl-C (exit 0). With --json: one JSON object per line.")
@json_option("Print {\"leases\": a list of lease records} (with --watch: one JSON object per line, "
             "{\"time\", \"event\", \"lease\": a record}).")
@click.pass_obj
@one_line_errors(PROG)
def subnets(obj, watch, as_json):
    """List the subnet leases: subnet, node IP, backend, time left, and the local node.

    A reserved lease (overlayctl lease reserve) shows 'reserved' instead of a
    time left. A row marked '!' is explained below the table (in 'problems'
    with --json): a key the daemons ignore (outside the Network, not of
    SubnetLen, overlapping valid leases) or a node IP that holds more than one
    valid lease (every peer routes all of them to that node). With --watch the list is followed by the changes etcd reports;
    if etcd goes away the watch waits for it and resumes without losing or
    repeating a change.
    """
    if watch:
        setup_logging(0, PROG)  # 'etcd unreachable' / 'etcd back' lines, with their time
        try:
            _run(lambda s: _watch(s, as_json), obj)
        except KeyboardInterrupt:
            pass
        return
    leases, _, config = _run(_listing, obj)
    records = _records(leases, time.time(), local_addresses(), config)
    if as_json:
        _echo_json(leases=records)
    else:
        click.echo(_subnets_text(records))


EXIT_NOT_RUNNING = 3  # overlayctl status: the daemon stopped (cleanly or on an error)
EXIT_STALE = 4  # overlayctl status: the file says running but was not refreshed (killed, crashed, hung)
EXIT_STARTING = 5  # overlayctl status: overlayd runs but is not set up yet (its "phase" says what it waits for)
STALE_INTERVALS = 5  # a running daemon's status older than this many refresh intervals is stale


def status_verdict(data: dict, now: float) -> tuple[str, int]:
    """The first line of ``overlayctl status`` for a status file's ``data``, and the exit status."""
    updated, interval = data.get("updated"), data.get("interval", 2.0)
    if not all(isinstance(x, (int, float)) and math.isfinite(x) and x >= 0 for x in (updated, interval)):
        raise OverlayError("no valid 'updated' time or refresh 'interval'")
    if updated > now + STALE_INTERVALS * interval:  # a file from the future is never judged stale
        raise OverlayError(f"'updated' is {updated - now:.0f}s in the future (was the clock set back?)")
    age = f"{max(now - updated, 0):.0f}s ago"
    state = data.get("state", "running")  # files from before "state" existed were written while running
    if state == "stopped":
        return f"overlayd STOPPED {age} (clean stop); the figures below are from then", EXIT_NOT_RUNNING
    if state == "failed":
        return f"overlayd FAILED {age}: {data.get('error', '?')}", EXIT_NOT_RUNNING
    if state not in ("running", "starting"):
        raise OverlayError(f"unknown state {state!r} in the status file")
    if now - updated > STALE_INTERVALS * interval:
        return (f"overlayd NOT RESPONDING: status last updated {age} (it is refreshed every "
                f"{interval}s): killed, crashed or hung; the figures below are from then"), EXIT_STALE
    if state == "starting":  # since issue 21: the phase it is in (since when), and why it waits
        since = data.get("since")
        since = f" for {max(now - since, 0):.0f}s" if isinstance(since, (int, float)) else ""
        detail = f": {data['detail']}" if data.get("detail") else ""
        return f"overlayd STARTING: {data.get('phase', 'starting')}{since}{detail}", EXIT_STARTING
    return f"overlayd running, updated {age}", 0


def read_status(status_file: str) -> tuple[dict, str, int]:
    """The daemon's status file: its data, the verdict line and the exit status
    (see :func:`status_verdict`); :class:`OverlayError` when it cannot be used."""
    try:
        with open(status_file, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise OverlayError(f"{status_file} does not exist: is overlayd running on this node?") from None
    except OSError as exc:
        raise OverlayError(f"cannot read {status_file}: {exc.strerror}") from None
    except ValueError as exc:
        raise OverlayError(f"cannot read {status_file}: {exc}") from None
    # a file with a "phase" (issue 21) has the lease fields only once a lease is held
    lease_keys = set() if isinstance(data, dict) and "phase" in data else {"subnet", "public_ip", "backend", "mtu"}
    if not isinstance(data, dict) or not {"peers", *lease_keys} <= data.keys() \
            or not isinstance(data["peers"], list) or not all(isinstance(p, str) for p in data["peers"]) \
            or not isinstance(data.get("stats", {}), dict):
        raise OverlayError(f"{status_file} is not an overlayd status file")
    try:
        verdict, code = status_verdict(data, time.time())
    except OverlayError as exc:
        raise OverlayError(f"{status_file}: {exc}") from None
    return data, verdict, code


def status_file_option(func):
    """``--status-file``, shared by ``status`` and ``peers``."""
    return click.option("--status-file", default="/run/overlayd/status.json", show_default=True,
                        envvar="OVERLAYD_STATUS_FILE", metavar="FILE",
                        help="The status file of the local overlayd (its --status-file).")(func)


@cli.command()
@status_file_option
@json_option("Print the status file (every data-plane counter in \"stats\", 0 until counted).")
@one_line_errors(PROG)
def status(status_file, as_json):
    """Show the local node's lease, reachable peers and data-plane counters.

    Exit status: 0 running; 1 no readable status file; 3 overlayd stopped
    (cleanly or on an error, which is shown); 4 the file says running but
    has not been refreshed for 5 of its intervals (killed, crashed or hung);
    5 overlayd is starting: not set up yet (waiting for etcd, for its
    network config, ...; the phase and what it waits for are shown).
    With --json the exit status is the same.
    """
    data, verdict, code = read_status(status_file)
    if as_json:
        _echo_json(**{**data, "stats": {**dict.fromkeys(DATAPLANE_COUNTERS, 0), **data.get("stats", {})}})
    else:
        click.echo(wrap(verdict))
        if "subnet" in data:  # no lease yet while starting
            click.echo(fit(f"subnet {data['subnet']} on {data.get('public_ip') or data.get('public_ipv6')}, "
                           f"backend {data['backend']} "
                           f"({data.get('device') or 'kernel'}, MTU {data['mtu']})", WIDTH))
            if data.get("subnet6") and data["subnet6"] != data["subnet"]:  # dual stack: IPv6 on a line of its own
                click.echo(fit(f"subnet {data['subnet6']} on {data.get('public_ipv6') or '-'}", WIDTH))
        click.echo(fit(f"peers ({peer_count(data)}): {', '.join(data['peers']) or '-'}", WIDTH))
        for name, value in sorted(data.get("stats", {}).items()):
            click.echo(fit(f"  {name:<28} {value}", WIDTH))
    sys.exit(code)


def peer_count(data: dict) -> str:
    """How many peers ``data`` (a status file) routes to: nodes, and their subnets where those differ
    (dual stack: two per node). A status file without ``peer_table`` counts subnets."""
    subnets = len(data["peers"])
    table = data.get("peer_table")
    if table is None:
        return str(subnets)
    nodes = sum(1 for row in table if row.get("routed"))
    return str(subnets) if nodes == subnets else f"{nodes} node{'s' * (nodes != 1)}, {subnets} subnets"


PEER_HEADERS = ["SUBNET", "NODE IP", "BACKEND", "VTEP MAC", "SINCE", "ROUTED"]


@cli.command()
@status_file_option
@json_option("Print {\"peer_table\": a list of {subnet, subnet6, public_ip, public_ipv6, backend, vtep_mac, "
             "since in epoch seconds, routed, and for a wireguard peer its sessions: a list of {device, "
             "public_key, endpoint, subnets, latest_handshake in epoch seconds (0: never), stalled, rx_bytes, "
             "tx_bytes}}}.")
@one_line_errors(PROG)
def peers(status_file, as_json):
    """Show the local daemon's peer table (from its status file).

    Per peer: subnet, node IP, backend, VTEP MAC, for how long the daemon has
    seen that node on that subnet, and whether it routes it (host-gw skips
    peers off its segment). A wireguard peer's sessions follow the table:
    its public key, endpoint, last handshake and bytes received and sent
    (STALLED: sending without a session, so unreachable, or its key or
    PSK differs), as the daemon last read them (every 5 s).

    Read from the daemon's status file; exit status as for 'status' (3 or 4
    with the verdict on stderr when the daemon is not running).
    """
    data, verdict, code = read_status(status_file)
    table = data.get("peer_table")
    if not isinstance(table, list):
        raise OverlayError(f"{status_file} has no peer table: the daemon predates 'overlayctl peers'")
    if code:
        click.echo(wrap(verdict), err=True)
    try:
        table = with_sessions(table, data.get("peer_stats") or [])
    except (KeyError, TypeError, AttributeError) as exc:
        raise OverlayError(f"{status_file}: malformed peer_stats ({type(exc).__name__}: {exc})") from None
    if as_json:
        _echo_json(peer_table=table)
    elif not table:
        click.echo("no peers")
    else:
        now = time.time()
        try:
            rows = [row for p in table for row in _peer_rows(p, now)]
            sessions = session_lines(table, now)
        except (KeyError, TypeError) as exc:
            raise OverlayError(f"{status_file}: malformed peer table ({type(exc).__name__}: {exc})") from None
        click.echo(render_table(rows, PEER_HEADERS))
        for line in sessions:
            click.echo(line)
    sys.exit(code)


@cli.group()
def config():
    """Read or write the cluster network config (PREFIX/config)."""


def config_fields(raw: bytes) -> dict:
    """What ``config get --json`` and ``config set --json`` print about the config ``raw``:
    ``stored`` (the config as a JSON object, null when it is not one), ``effective`` (with
    flannel's defaults filled in, null when invalid), ``notes`` (fields without effect) and
    ``error`` (why it is invalid, else null)."""
    try:
        stored = json.loads(raw)
    except (ValueError, RecursionError):
        stored = None
    try:
        cfg, error = parse_config(raw), None
    except ConfigError as exc:
        cfg, error = None, str(exc)
    return {"stored": stored if isinstance(stored, dict) else None, "effective": cfg and cfg.to_json(),
            "notes": list(cfg.notes) if cfg else [], "error": error}


CONFIG_JSON_HELP = ("Print {\"stored\": the config, \"effective\": with flannel's defaults filled in "
                    "(null if invalid), \"notes\": fields without effect, \"error\": why invalid}.")


@config.command("get")
@json_option(CONFIG_JSON_HELP)
@click.pass_obj
@one_line_errors(PROG)
def config_get(obj, as_json):
    """Print the stored config as JSON (fields accepted without effect are noted on stderr)."""
    raw = _run(lambda s: s.get_config(), obj)
    if raw is None:
        raise ConfigError(f"no network config at {obj['prefix']}/config (write one with 'overlayctl config set FILE')")
    fields = config_fields(raw)
    if as_json:
        _echo_json(**fields)
        return
    stored = fields["stored"]
    click.echo(json.dumps(stored, indent=2) if stored is not None else raw.decode(errors="replace"))
    for note in (fields["notes"] if fields["error"] is None else [f"invalid: {fields['error']}"]):
        click.echo(f"{PROG}: note: {note}", err=True)


def read_file(path: str) -> bytes:
    """The content of the file ``path`` (``-``: stdin); :class:`ConfigError` when it cannot be read."""
    try:
        with click.open_file(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


@config.command("set")
@click.argument("source", metavar="FILE")
@quiet_option
@json_option(CONFIG_JSON_HELP)
@click.pass_obj
@one_line_errors(PROG)
def config_set(obj, source, quiet, as_json):
    """Validate FILE (or - for stdin) and store it as the config.

    flannel's net-conf.json is accepted as it ships; fields accepted without
    effect (EnableNFTables: false, Windows-only settings, ...) are noted on
    stderr. A file that cannot be read is one line with exit status 1.
    """
    raw = read_file(source)
    if len(raw) > MAX_CONFIG_BYTES:  # before connecting: etcd would refuse it after
        raise ConfigError(f"config is {len(raw)} bytes, more than the {MAX_CONFIG_BYTES} etcd "
                          "accepts in one request (with its default --max-request-bytes, 1.5 MiB)")
    cfg = parse_config(raw)  # refuse to store what the daemons would reject
    _run(lambda s: s.put_config(raw), obj)
    if as_json:
        _echo_json(**config_fields(raw))
        return
    if not quiet:
        click.echo(f"config stored: Network {cfg.network}, /{cfg.subnet_len} subnets "
                   f"{cfg.subnet_min} - {cfg.subnet_max}, backend {cfg.backend.type}")
    for note in cfg.notes:
        click.echo(f"{PROG}: note: {note}", err=True)


def _subnet(ctx, param, value):
    try:
        return ipaddress.IPv4Network(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: {exc}") from None


def _address(ctx, param, value):
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an IPv4 address") from None


@cli.group()
def lease():
    """Reserve, release or delete subnet leases.

    A reservation is a lease without a TTL: the subnet stays with the node
    whose public IP it names (that node reuses it on every start, without a
    TTL), and no other node is ever given it, even while that node is down.
    Each command confirms what it did on stdout (-q: not); with --json it
    prints {"lease": the record of the lease it acted on} (the records of
    'overlayctl subnets --json').
    """


def _report(lease_: Lease, as_json: bool, quiet: bool, message: str) -> None:
    """What a ``lease`` command prints: the lease's record (--json), else ``message`` unless ``quiet``."""
    if as_json:
        _echo_json(lease=lease_record(lease_, time.time(), local_addresses()))
    elif not quiet:
        click.echo(message)


@lease.command("reserve")
@click.argument("subnet", callback=_subnet)
@click.option("--public-ip", required=True, metavar="IP", callback=_address,
              help="The public IP of the node the subnet is reserved for.")
@quiet_option
@json_option("Print the reserved lease's record.")
@click.pass_obj
@one_line_errors(PROG)
def lease_reserve(obj, subnet, public_ip, quiet, as_json):
    """Reserve SUBNET for the node with --public-ip.

    SUBNET is one the network config hands out, like 10.244.3.0/24. A live
    lease of that node is converted in place (the node keeps running); a
    subnet leased by another node is refused.
    """
    async def reserve(store):
        raw = await store.get_config()
        if raw is None:
            raise ConfigError(f"no network config at {obj['prefix']}/config (write one first)")
        cfg = parse_config(raw)
        if not cfg.contains_subnet(subnet):
            raise ConfigError(f"{subnet} is not a /{cfg.subnet_len} between SubnetMin {cfg.subnet_min} "
                              f"and SubnetMax {cfg.subnet_max}")
        return await store.reserve(subnet, LeaseAttrs(public_ip, cfg.backend.type))
    reserved = _run(reserve, obj)
    _report(reserved, as_json, quiet, f"reserved {subnet} for {public_ip} (no TTL)")


@lease.command("release")
@click.argument("subnet", callback=_subnet)
@click.option("--ttl", type=click.IntRange(2, 7 * 24 * 3600), default=24 * 3600, show_default=True,
              help="Seconds the lease lives on unless its node renews it.")
@quiet_option
@json_option("Print the released lease's record.")
@click.pass_obj
@one_line_errors(PROG)
def lease_release(obj, subnet, ttl, quiet, as_json):
    """Turn the reservation of SUBNET back into an ordinary lease with a TTL.

    A running node takes it over and renews it; if the node is gone, the
    subnet becomes free when the TTL runs out.
    """
    released = _run(lambda s: s.release(subnet, ttl), obj)
    _report(released, as_json, quiet, f"released {subnet} ({released.public_ip}): an ordinary lease again, TTL {ttl}s")


@lease.command("delete")
@click.argument("subnet", callback=_subnet)
@click.option("--yes", is_flag=True, help="Confirm: without it nothing is deleted.")
@quiet_option
@json_option("Print the deleted lease's record (as it was).")
@click.pass_obj
@one_line_errors(PROG)
def lease_delete(obj, subnet, yes, quiet, as_json):
    """Delete the lease (or reservation) of SUBNET, e.g. a node that is gone for good.

    Peers drop the node's routes at once and the subnet is free again. A
    node still running takes its subnet back within moments: stop it first
    (or stop it with overlayd --cleanup-on-exit, which revokes its lease).
    Needs --yes (nothing asks interactively).
    """
    if not yes:
        raise OverlayError(f"lease delete removes the lease of {subnet} for good: add --yes to confirm")

    async def delete(store):
        leases, _ = await store.list_leases(with_ttl=True)
        current = next((l for l in leases if l.subnet == subnet), None)
        if current is None or not await store.delete_lease(subnet):
            raise LeaseError(f"{subnet} has no lease")
        return current
    deleted = _run(delete, obj)
    _report(deleted, as_json, quiet, f"deleted the lease of {subnet} ({deleted.public_ip})")


def main() -> None:
    cli(prog_name=PROG)


if __name__ == "__main__":  # run the importable module: it has every command (see below)
    from overlayd.cli.ctl import main as _main

    sys.exit(_main())
else:  # 'service' and 'endpoint' (issue 22) live in their own module, built on this one's helpers
    from .services import endpoint, service

    cli.add_command(service)
    cli.add_command(endpoint)
