"""``overlayctl``: the operator's view of the cluster network in etcd and of the local daemon.

Output conventions, for every command:

* human output fits :data:`WIDTH` (80) columns: tables shrink their widest
  column and cut its long cells with ``~``; non-printable characters show as ``?``;
* ``--json`` prints JSON on stdout: queries print their data (``subnets`` and
  ``peers`` a list of records, ``status`` the daemon's status file, ``config
  get`` the stored and the effective config); the ``lease`` commands print the
  record of the lease they acted on (the same keys as ``subnets --json``),
  ``config set`` the effective config it stored; ``subnets --watch --json``
  prints one object per line (JSON Lines);
* errors are one line, ``overlayctl: error: ...``, with exit status 1 (2 for
  a bad flag, as click does).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import sys
import time

import click

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


def lease_record(lease: Lease, now: float, mine: set[ipaddress.IPv4Address],
                 problems: list[str] | None = None) -> dict:
    """One lease as ``subnets --json`` and the ``lease`` commands print it; ``problems``:
    what :func:`overlayd.lease.audit.audit` says about it (the daemons' rule)."""
    data = lease.attrs.backend_data or {}
    left = lease.time_left(now)
    return {
        "subnet": str(lease.subnet),
        "public_ip": str(lease.public_ip),
        "backend": lease.attrs.backend_type,
        "vtep_mac": data.get("VtepMAC"),
        "vni": data.get("VNI"),
        "ttl_seconds": None if left is None else int(left),
        "reserved": lease.handle == 0,
        "local": lease.public_ip in mine,
        "problems": problems or [],
    }


def _echo_json(value: object) -> None:
    click.echo(json.dumps(value, indent=2))


def json_option(help_text: str = "Print JSON for scripts (see 'overlayctl --help')."):
    """The ``--json`` flag every command has (the command receives ``as_json``)."""
    return click.option("--json", "as_json", is_flag=True, help=help_text)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@etcd_options
@click.option("--timeout", type=click.FloatRange(0.1, 300), default=5.0, show_default=True,
              help="Seconds to wait for etcd before giving up.")
@click.pass_context
def cli(ctx, etcd_endpoints, etcd_prefix, etcd_credentials, timeout):
    """Inspect and configure an overlayd cluster network.

    Reads the same etcd flags (and OVERLAYD_ETCD_* environment variables)
    as the daemon; 'status' and 'peers' read the local daemon's status file
    instead. Human output fits 80 columns; every command takes --json;
    errors are one line with exit status 1.
    """
    ctx.obj = {"endpoints": etcd_endpoints, "prefix": etcd_prefix, "credentials": etcd_credentials,
               "timeout": timeout}


SUBNET_HEADERS = ["SUBNET", "NODE IP", "BACKEND", "VTEP MAC", "TTL LEFT", "LOCAL", "!"]


def _subnet_row(r: dict) -> list[str]:
    return [r["subnet"], r["public_ip"], r["backend"], r["vtep_mac"] or "-",
            "reserved" if r["reserved"] else fmt_duration(r["ttl_seconds"]), "*" if r["local"] else "",
            "!" if r["problems"] else ""]


def watch_line(event: str, record: dict, when: float) -> str:
    """One human line of ``subnets --watch``: local time, event, subnet, node, backend, MAC."""
    stamp = time.strftime("%H:%M:%S", time.localtime(when))
    line = (f"{stamp} {event:<7} {record['subnet']:<18} {record['public_ip']:<15} "
            f"{_printable(record['backend'])} {_printable(record['vtep_mac'] or '')}")
    return fit(line.rstrip(), WIDTH)


def _records(leases, now: float, mine, config: NetworkConfig | None = None) -> list[dict]:
    """The leases as ``subnets`` records, by subnet, each with what :func:`audit` says about it
    under ``config`` (nothing without one)."""
    notes = audit(leases, config) if config is not None else {}
    return [lease_record(l, now, mine, notes.get(l.subnet)) for l in sorted(leases, key=lambda l: l.subnet)]


def _subnets_text(records: list[dict]) -> str:
    """The human ``subnets`` listing of ``records``: the table, then one line per problem
    (for the rows marked ``!``)."""
    if not records:
        return "no subnet leases"
    lines = [render_table([_subnet_row(r) for r in records], SUBNET_HEADERS)]
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
            click.echo(json.dumps({"time": now, "event": "listed", **r}))
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
            click.echo(json.dumps({"time": when, "event": event, **record}) if as_json
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
@json_option("Print a JSON list of records (with --watch: one JSON object per line).")
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
        _echo_json(records)
    else:
        click.echo(_subnets_text(records))


EXIT_NOT_RUNNING = 3  # overlayctl status: the daemon stopped (cleanly or on an error)
EXIT_STALE = 4  # overlayctl status: the file says running but was not refreshed (killed, crashed, hung)
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
    if state != "running":
        raise OverlayError(f"unknown state {state!r} in the status file")
    if now - updated > STALE_INTERVALS * interval:
        return (f"overlayd NOT RESPONDING: status last updated {age} (it is refreshed every "
                f"{interval}s): killed, crashed or hung; the figures below are from then"), EXIT_STALE
    return f"overlayd running, updated {age}", 0


def read_status(status_file: str) -> tuple[dict, str, int]:
    """The daemon's status file: its data, the verdict line and the exit status
    (see :func:`status_verdict`); :class:`OverlayError` when it cannot be used."""
    try:
        with open(status_file, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise OverlayError(f"{status_file} does not exist: is overlayd running on this node?") from None
    except (OSError, ValueError) as exc:
        raise OverlayError(f"cannot read {status_file}: {exc}") from None
    if not isinstance(data, dict) or not {"subnet", "public_ip", "backend", "mtu", "peers"} <= data.keys() \
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
                        envvar="OVERLAYD_STATUS_FILE", type=click.Path(dir_okay=False),
                        help="The status file of the local overlayd (its --status-file).")(func)


@cli.command()
@status_file_option
@json_option("Print the status file as it is.")
@one_line_errors(PROG)
def status(status_file, as_json):
    """Show the local node's lease, reachable peers and data-plane counters.

    Exit status: 0 running; 1 no readable status file; 3 overlayd stopped
    (cleanly or on an error, which is shown); 4 the file says running but
    has not been refreshed for 5 of its intervals (killed, crashed or hung).
    With --json the exit status is the same.
    """
    data, verdict, code = read_status(status_file)
    if as_json:
        _echo_json(data)
    else:
        click.echo(fit(verdict, WIDTH))
        click.echo(fit(f"subnet {data['subnet']} on {data['public_ip']}, backend {data['backend']} "
                       f"({data.get('device') or 'kernel'}, MTU {data['mtu']})", WIDTH))
        click.echo(fit(f"peers ({len(data['peers'])}): {', '.join(data['peers']) or '-'}", WIDTH))
        for name, value in sorted(data.get("stats", {}).items()):
            click.echo(fit(f"  {name:<28} {value}", WIDTH))
    sys.exit(code)


PEER_HEADERS = ["SUBNET", "NODE IP", "BACKEND", "VTEP MAC", "SINCE", "ROUTED"]


@cli.command()
@status_file_option
@json_option("Print the peer table as a JSON list (subnet, public_ip, backend, vtep_mac, "
             "since in epoch seconds, routed).")
@one_line_errors(PROG)
def peers(status_file, as_json):
    """Show the local daemon's peer table (from its status file).

    Per peer: subnet, node IP, backend, VTEP MAC, for how long the daemon has
    seen that node on that subnet, and whether it routes it (host-gw skips
    peers off its segment).

    Read from the daemon's status file; exit status as for 'status' (3 or 4
    with the verdict on stderr when the daemon is not running).
    """
    data, verdict, code = read_status(status_file)
    table = data.get("peer_table")
    if not isinstance(table, list):
        raise OverlayError(f"{status_file} has no peer table: the daemon predates 'overlayctl peers'")
    if code:
        click.echo(fit(verdict, WIDTH), err=True)
    if as_json:
        _echo_json(table)
    elif not table:
        click.echo("no peers")
    else:
        now = time.time()
        try:
            rows = [[p["subnet"], p["public_ip"], p["backend"], p["vtep_mac"] or "-",
                     fmt_duration(now - p["since"]), "yes" if p["routed"] else "no"] for p in table]
        except (KeyError, TypeError) as exc:
            raise OverlayError(f"{status_file}: malformed peer table ({type(exc).__name__}: {exc})") from None
        click.echo(render_table(rows, PEER_HEADERS))
    sys.exit(code)


@cli.group()
def config():
    """Read or write the cluster network config (PREFIX/config)."""


@config.command("get")
@json_option("Print {\"stored\": the stored config, \"effective\": with flannel's defaults filled "
             "in (null if invalid), \"notes\": fields without effect, \"error\": why invalid}.")
@click.pass_obj
@one_line_errors(PROG)
def config_get(obj, as_json):
    """Print the stored config as JSON (fields accepted without effect are noted on stderr)."""
    raw = _run(lambda s: s.get_config(), obj)
    if raw is None:
        raise ConfigError(f"no network config at {obj['prefix']}/config (write one with 'overlayctl config set FILE')")
    try:
        stored = json.loads(raw)
    except (ValueError, RecursionError):
        stored = raw.decode(errors="replace")
    try:
        cfg, error = parse_config(raw), None
    except ConfigError as exc:
        cfg, error = None, str(exc)
    if as_json:
        _echo_json({"stored": stored, "effective": cfg and cfg.to_json(),
                    "notes": list(cfg.notes) if cfg else [], "error": error})
        return
    click.echo(json.dumps(stored, indent=2) if not isinstance(stored, str) else stored)
    for note in (cfg.notes if cfg else [f"invalid: {error}"]):
        click.echo(f"{PROG}: note: {note}", err=True)


@config.command("set")
@click.argument("source", type=click.File("rb"))
@json_option("Print the effective config stored (flannel's defaults filled in) and its notes.")
@click.pass_obj
@one_line_errors(PROG)
def config_set(obj, source, as_json):
    """Validate SOURCE (a file, or - for stdin) and store it as the config.

    flannel's net-conf.json is accepted as it ships; fields accepted without
    effect (EnableNFTables: false, Windows-only settings, ...) are noted.
    """
    raw = source.read()
    if len(raw) > MAX_CONFIG_BYTES:  # before connecting: etcd would refuse it after
        raise ConfigError(f"config is {len(raw)} bytes, more than the {MAX_CONFIG_BYTES} etcd "
                          "accepts in one request (with its default --max-request-bytes, 1.5 MiB)")
    cfg = parse_config(raw)  # refuse to store what the daemons would reject
    _run(lambda s: s.put_config(raw), obj)
    if as_json:
        _echo_json({"stored": True, "effective": cfg.to_json(), "notes": list(cfg.notes)})
        return
    click.echo(f"config stored: Network {cfg.network}, /{cfg.subnet_len} subnets "
               f"{cfg.subnet_min} - {cfg.subnet_max}, backend {cfg.backend.type}", err=True)
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
    With --json each command prints the record of the lease it acted on
    (the keys of 'overlayctl subnets --json').
    """


def _report(lease_: Lease, as_json: bool, message: str) -> None:
    """What a ``lease`` command prints: the lease's record (--json) or ``message`` on stderr."""
    if as_json:
        _echo_json(lease_record(lease_, time.time(), local_addresses()))
    else:
        click.echo(message, err=True)


@lease.command("reserve")
@click.argument("subnet", callback=_subnet)
@click.option("--public-ip", required=True, metavar="IP", callback=_address,
              help="The public IP of the node the subnet is reserved for.")
@json_option("Print the reserved lease's record.")
@click.pass_obj
@one_line_errors(PROG)
def lease_reserve(obj, subnet, public_ip, as_json):
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
    _report(reserved, as_json, f"reserved {subnet} for {public_ip} (no TTL)")


@lease.command("release")
@click.argument("subnet", callback=_subnet)
@click.option("--ttl", type=click.IntRange(2, 7 * 24 * 3600), default=24 * 3600, show_default=True,
              help="Seconds the lease lives on unless its node renews it.")
@json_option("Print the released lease's record.")
@click.pass_obj
@one_line_errors(PROG)
def lease_release(obj, subnet, ttl, as_json):
    """Turn the reservation of SUBNET back into an ordinary lease with a TTL.

    A running node takes it over and renews it; if the node is gone, the
    subnet becomes free when the TTL runs out.
    """
    released = _run(lambda s: s.release(subnet, ttl), obj)
    _report(released, as_json, f"released {subnet} ({released.public_ip}): an ordinary lease again, TTL {ttl}s")


@lease.command("delete")
@click.argument("subnet", callback=_subnet)
@click.option("--yes", is_flag=True, help="Confirm: without it nothing is deleted.")
@json_option("Print the deleted lease's record (as it was).")
@click.pass_obj
@one_line_errors(PROG)
def lease_delete(obj, subnet, yes, as_json):
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
    _report(deleted, as_json, f"deleted the lease of {subnet} ({deleted.public_ip})")


def main() -> None:
    cli(prog_name=PROG)


if __name__ == "__main__":
    sys.exit(main())
