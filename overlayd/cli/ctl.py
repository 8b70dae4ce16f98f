"""``overlayctl``: the operator's view of the cluster network in etcd."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sys
import time

import click

from ..errors import ConfigError, OverlayError
from ..lease.etcd import EtcdStore
from ..lease.model import LeaseAttrs
from ..netconf import parse_config
from .common import etcd_options, one_line_errors

PROG = "overlayctl"


def _run(coro_fn, obj):
    async def main():
        store = EtcdStore(obj["endpoints"], obj["prefix"], timeout=obj["timeout"])
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


def _fmt_ttl(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def render_table(rows: list[list[str]], headers: list[str]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in [headers, *rows]]
    return "\n".join(lines)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@etcd_options
@click.option("--timeout", type=click.FloatRange(0.1, 300), default=5.0, show_default=True,
              help="Seconds to wait for etcd before giving up.")
@click.pass_context
def cli(ctx, etcd_endpoints, etcd_prefix, timeout):
    """Inspect and configure an overlayd cluster network.

    Reads the same etcd flags (and OVERLAYD_ETCD_* environment variables)
    as the daemon.
    """
    ctx.obj = {"endpoints": etcd_endpoints, "prefix": etcd_prefix, "timeout": timeout}


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_obj
@one_line_errors(PROG)
def subnets(obj, as_json):
    """List the subnet leases: subnet, node IP, backend, time left, and the local node."""
    leases, _ = _run(lambda s: s.list_leases(with_ttl=True), obj)
    mine = local_addresses()
    now = time.time()
    records = []
    for lease in sorted(leases, key=lambda l: l.subnet):
        data = lease.attrs.backend_data or {}
        records.append({
            "subnet": str(lease.subnet),
            "public_ip": str(lease.public_ip),
            "backend": lease.attrs.backend_type,
            "vtep_mac": data.get("VtepMAC"),
            "vni": data.get("VNI"),
            "ttl_seconds": None if lease.expiration is None else int(lease.time_left(now)),
            "reserved": lease.handle == 0,
            "local": lease.public_ip in mine,
        })
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    if not records:
        click.echo("no subnet leases")
        return
    rows = [[r["subnet"], r["public_ip"], r["backend"], r["vtep_mac"] or "-",
             "reserved" if r["reserved"] else _fmt_ttl(r["ttl_seconds"]), "*" if r["local"] else ""]
            for r in records]
    click.echo(render_table(rows, ["SUBNET", "NODE IP", "BACKEND", "VTEP MAC", "TTL LEFT", "LOCAL"]))


EXIT_NOT_RUNNING = 3  # overlayctl status: the daemon stopped (cleanly or on an error)
EXIT_STALE = 4  # overlayctl status: the file says running but was not refreshed (killed, crashed, hung)
STALE_INTERVALS = 5  # a running daemon's status older than this many refresh intervals is stale


def status_verdict(data: dict, now: float) -> tuple[str, int]:
    """The first line of ``overlayctl status`` for a status file's ``data``, and the exit status."""
    updated, interval = data.get("updated"), data.get("interval", 2.0)
    if not all(isinstance(x, (int, float)) and x >= 0 for x in (updated, interval)):
        raise OverlayError("no valid 'updated' time or refresh 'interval'")
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


@cli.command()
@click.option("--status-file", default="/run/overlayd/status.json", show_default=True,
              envvar="OVERLAYD_STATUS_FILE", type=click.Path(dir_okay=False),
              help="The status file of the local overlayd (its --status-file).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@one_line_errors(PROG)
def status(status_file, as_json):
    """Show the local node's lease, reachable peers and data-plane counters.

    Exit status: 0 running; 1 no readable status file; 3 overlayd stopped
    (cleanly or on an error, which is shown); 4 the file says running but
    has not been refreshed for 5 of its intervals (killed, crashed or hung).
    With --json the exit status is the same.
    """
    try:
        with open(status_file, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise OverlayError(f"{status_file} does not exist: is overlayd running on this node?") from None
    except (OSError, ValueError) as exc:
        raise OverlayError(f"cannot read {status_file}: {exc}") from None
    if not isinstance(data, dict) or not {"subnet", "public_ip", "backend", "mtu", "peers"} <= data.keys():
        raise OverlayError(f"{status_file} is not an overlayd status file")
    try:
        verdict, code = status_verdict(data, time.time())
    except OverlayError as exc:
        raise OverlayError(f"{status_file}: {exc}") from None
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(verdict)
        click.echo(f"subnet {data['subnet']} on {data['public_ip']}, backend {data['backend']} "
                   f"({data.get('device') or 'kernel'}, MTU {data['mtu']})")
        click.echo(f"peers ({len(data['peers'])}): {', '.join(data['peers']) or '-'}")
        for name, value in sorted(data.get("stats", {}).items()):
            click.echo(f"  {name:<28} {value}")
    sys.exit(code)


@cli.group()
def config():
    """Read or write the cluster network config (PREFIX/config)."""


@config.command("get")
@click.pass_obj
@one_line_errors(PROG)
def config_get(obj):
    """Print the stored config as JSON."""
    raw = _run(lambda s: s.get_config(), obj)
    if raw is None:
        raise ConfigError(f"no network config at {obj['prefix']}/config (write one with 'overlayctl config set FILE')")
    try:
        click.echo(json.dumps(json.loads(raw), indent=2))
    except ValueError:
        click.echo(raw.decode(errors="replace"))


@config.command("set")
@click.argument("source", type=click.File("rb"))
@click.pass_obj
@one_line_errors(PROG)
def config_set(obj, source):
    """Validate SOURCE (a file, or - for stdin) and store it as the config."""
    raw = source.read()
    cfg = parse_config(raw)  # refuse to store what the daemons would reject
    _run(lambda s: s.put_config(raw), obj)
    click.echo(f"config stored: Network {cfg.network}, /{cfg.subnet_len} subnets "
               f"{cfg.subnet_min} - {cfg.subnet_max}, backend {cfg.backend.type}", err=True)


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
    """Reserve or release subnet leases.

    A reservation is a lease without a TTL: the subnet stays with the node
    whose public IP it names (that node reuses it on every start, without a
    TTL), and no other node is ever given it, even while that node is down.
    """


@lease.command("reserve")
@click.argument("subnet", callback=_subnet)
@click.option("--public-ip", required=True, metavar="IP", callback=_address,
              help="The public IP of the node the subnet is reserved for.")
@click.pass_obj
@one_line_errors(PROG)
def lease_reserve(obj, subnet, public_ip):
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
    _run(reserve, obj)
    click.echo(f"reserved {subnet} for {public_ip} (no TTL)", err=True)


@lease.command("release")
@click.argument("subnet", callback=_subnet)
@click.option("--ttl", type=click.IntRange(2, 7 * 24 * 3600), default=24 * 3600, show_default=True,
              help="Seconds the lease lives on unless its node renews it.")
@click.pass_obj
@one_line_errors(PROG)
def lease_release(obj, subnet, ttl):
    """Turn the reservation of SUBNET back into an ordinary lease with a TTL.

    A running node takes it over and renews it; if the node is gone, the
    subnet becomes free when the TTL runs out.
    """
    released = _run(lambda s: s.release(subnet, ttl), obj)
    click.echo(f"released {subnet} ({released.public_ip}): an ordinary lease again, TTL {ttl}s", err=True)


def main() -> None:
    cli(prog_name=PROG)


if __name__ == "__main__":
    sys.exit(main())
