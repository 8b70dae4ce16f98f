"""``overlayd``: the node daemon's command line (click -> DaemonOptions -> Daemon)."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import sys

import click

from .. import __version__
from ..backend.base import NodeOptions
from ..errors import ConfigError
from .common import ENV_PREFIX, LOG_LEVELS, check_etcd_flags, etcd_options, setup_logging

PROG = "overlayd"
log = logging.getLogger(__name__)


def _address(parse, kind: str):
    """A click callback: the value as ``parse`` reads it (canonical text), or a one-line BadParameter."""
    def callback(ctx, param, value):
        if value is None:
            return None
        try:
            return str(parse(value))
        except ValueError:
            raise click.BadParameter(f"{value!r} is not {kind}") from None
    return callback


_ipv4 = _address(ipaddress.IPv4Address, "an IPv4 address")
_ipv6 = _address(ipaddress.IPv6Address, "an IPv6 address")
_ip = _address(ipaddress.ip_address, "an IP address")


def _regexes(ctx, param, values):
    for value in values:
        try:
            re.compile(value)
        except re.error as exc:
            raise click.BadParameter(f"{value!r} is not a regular expression: {exc}") from None
    return values


def _datapath(ctx, param, value):
    from ..dataplane import fast  # the extension, if built; cheap to import

    if value is None:
        return "c" if fast.available() else "python"
    if value == "c" and not fast.available():
        raise click.BadParameter("the C fast path is not built (reinstall with a C compiler and "
                                 "Python headers: scripts/install)")
    return value


def _healthz_addr(ctx, param, value):
    if value is None:
        return None
    from ..health import parse_addr  # prometheus-client: not needed for --help

    try:
        return parse_addr(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


SECRET_FLAGS = frozenset({"etcd_password"})  # shown as "(set)" in the startup line, never their value
NOT_SHOWN = frozenset({"verbose", "log_level"})  # not flags of the node's setup


def effective_flags(params: list[tuple[str, object]]) -> str:
    """The startup line's flags: ``[(parameter name, value in effect)]`` -> ``--name=value ...``
    (on/off flags by name when on, repeatable ones comma-joined, unset ones left out, secrets
    as ``(set)``; file paths are shown, never file contents). Pure."""
    shown = []
    for name, value in params:
        flag = "--" + name.replace("_", "-")
        if name in NOT_SHOWN or value is None or value is False or value == ():
            continue
        if value is True:
            shown.append(flag)
            continue
        if name in SECRET_FLAGS:
            value = "(set)"
        elif isinstance(value, tuple) and name == "healthz_addr":
            value = "%s:%d" % value
        elif isinstance(value, (tuple, list)):
            value = ",".join(map(str, value))
        shown.append(f"{flag}={value}")
    return " ".join(shown)


def startup_line(pid: int, datapath: str, healthz: tuple[str, int] | None, flags: str) -> str:
    """The daemon's first log line. Pure."""
    health = f"http://{healthz[0]}:{healthz[1]}" if healthz else "off"
    return f"overlayd {__version__} starting: pid {pid}, data path {datapath}, health {health}; {flags}"


def _event_loop(ctx, param, value):
    if value == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            raise click.BadParameter("uvloop is not installed (pip install 'overlayd[uvloop]')") from None
    return value


@click.command(context_settings={"auto_envvar_prefix": ENV_PREFIX, "help_option_names": ["-h", "--help"],
                                 "show_default": True})
@etcd_options
@click.option("--iface", metavar="NAME|IP", multiple=True, show_envvar=True,
              help="Underlay interface peers reach this node on, by name or by one of its IPv4 or "
                   "IPv6 addresses; repeatable: the first that exists (with an address of each family "
                   "the network config enables) wins. Tried before --iface-regex and --iface-can-reach. "
                   "Default (none of the three): the interface holding --public-ip, else "
                   "--public-ipv6, else the default route's (dual stack: the IPv4 and IPv6 default "
                   "routes' one interface).")
@click.option("--iface-regex", metavar="REGEX", multiple=True, callback=_regexes, show_envvar=True,
              help="Repeatable, tried in order after --iface: the first interface with an address "
                   "matching REGEX (dual stack: an IPv4 and an IPv6 one), else the first whose name "
                   "matches (unanchored).")
@click.option("--iface-can-reach", metavar="IP", callback=_ip, show_envvar=True,
              help="Tried last: the interface (and source address) of this node's route to IP, "
                   "as 'ip route get IP' shows it.")
@click.option("--public-ip", metavar="IP", callback=_ipv4, show_envvar=True,
              help="This node's address published in its lease, if not the interface's (behind "
                   "NAT: the address peers reach it at). Default: the chosen interface address.")
@click.option("--public-ipv6", metavar="IPV6", callback=_ipv6, show_envvar=True,
              help="This node's IPv6 address published in its lease (PublicIPv6) when the network "
                   "config enables IPv6, if not the interface's. Default: the chosen interface's "
                   "first global or ULA IPv6 address.")
@click.option("--subnet-file", default="/run/flannel/subnet.env", show_envvar=True,
              type=click.Path(dir_okay=False), help="Where to write flannel's subnet.env.")
@click.option("--status-file", default="/run/overlayd/status.json", show_envvar=True,
              type=click.Path(dir_okay=False),
              help="Where to keep this node's status (peers, packet counters) for 'overlayctl status'.")
@click.option("--state-dir", default="/var/lib/overlayd", show_envvar=True,
              type=click.Path(file_okay=False),
              help="Where this node keeps what must outlive restarts and reboots: the wireguard backend's "
                   "private key (STATE_DIR/wireguard/private.key, mode 0600; delete it to rotate the key).")
@click.option("--lease-ttl", type=click.IntRange(2, 7 * 24 * 3600), default=24 * 3600,
              show_envvar=True, help="Subnet lease TTL in seconds; renewed min(1h, TTL/3) before expiry.")
@click.option("--ip-masq", is_flag=True, show_envvar=True,
              help="Masquerade pod traffic leaving the pod network (nftables; subnet.env says "
                   "FLANNEL_IPMASQ=true so the CNI bridge does not masquerade too).")
@click.option("--vxlan-impl", type=click.Choice(["user", "kernel"]), default="user", show_envvar=True,
              help="For Backend.Type vxlan: overlayd's own data plane over a tap, or a kernel "
                   "VXLAN device. Both publish BackendType vxlan and interoperate.")
@click.option("--event-loop", type=click.Choice(["asyncio", "uvloop"]), default="asyncio",
              callback=_event_loop, show_envvar=True, help="Event loop for the userspace data plane (uvloop runs it in "
                                      "its own thread; netlink and etcd stay on asyncio).")
@click.option("--datapath", type=click.Choice(["python", "c"]), callback=_datapath, show_envvar=True,
              help="Data path of the userspace backends (udp, vxlan --vxlan-impl user): the pure "
                   "Python loop, or the C engine (forwarding threads, batched syscalls, TSO "
                   "superpackets on tun0). Default: c when it was built, else python.")
@click.option("--udp-checksum", is_flag=True, show_envvar=True,
              help="Send the userspace backends' datagrams with UDP checksums instead of checksum 0, so the "
                   "C engine can hand the kernel whole superpackets (UDP GSO; much faster). Receivers accept "
                   "both forms whatever this flag, so nodes may differ.")
@click.option("--resync-interval", type=click.FloatRange(0.1, 3600), default=10.0, show_envvar=True,
              metavar="SECONDS", help="How often the kernel state overlayd owns (routes, devices, peers' "
                                      "entries, cni0, nft table) is checked and repaired if changed, when the "
                                      "kernel reported a change to it (see --full-resync-interval).")
@click.option("--full-resync-interval", type=click.FloatRange(1, 86400), default=60.0, show_envvar=True,
              metavar="SECONDS", help="Between resyncs the check runs only if the kernel reported a change to "
                                      "that state (a route, device, address, neighbour, FDB entry or nft table); "
                                      "this is the longest time without a check all the same (it finds what no "
                                      "change notice covers: sysctls, WireGuard peers edited by hand).")
@click.option("--cleanup-on-exit", is_flag=True, show_envvar=True,
              help="Decommission on a clean stop (SIGTERM/SIGINT): revoke the lease so peers drop this "
                   "node at once, and remove every device, route, neighbour, FDB entry, cni0, the nft "
                   "table, the sysctl values overlayd changed and SUBNET_FILE. Not on SIGKILL or a crash.")
@click.option("--healthz-addr", metavar="IP:PORT", callback=_healthz_addr, show_envvar=True,
              help="Serve /healthz, /readyz and /metrics (Prometheus) over HTTP on this address, "
                   "e.g. 127.0.0.1:10256 or [::1]:10256. Default: off.")
@click.option("--log-level", type=click.Choice(list(LOG_LEVELS), case_sensitive=False), default="info",
              show_envvar=True, help="Log this level and above. Under systemd each line carries its "
                                     "priority (journalctl -p warning); elsewhere it is prefixed with the time.")
@click.option("-v", "--verbose", count=True,
              help="Deprecated: -v is --log-level debug (-vv: also etcd's and netlink's debug lines).")
@click.version_option(__version__, "--version", prog_name=PROG, message="%(prog)s %(version)s")
def cli(etcd_endpoints, etcd_prefix, etcd_credentials, iface, iface_regex, iface_can_reach, public_ip, public_ipv6,
        subnet_file, status_file, state_dir, lease_ttl, ip_masq, vxlan_impl,
        event_loop, datapath, udp_checksum, resync_interval, full_resync_interval, cleanup_on_exit, healthz_addr,
        log_level, verbose):
    """Run the overlay on this node.

    Leases a pod subnet from etcd, sets up the overlay device, the cni0 bridge
    and the route to the pod network, writes SUBNET_FILE, and forwards pod
    traffic to the other nodes until stopped. Every flag can also be given as
    an OVERLAYD_* environment variable (e.g. OVERLAYD_ETCD_ENDPOINTS).

    Signals: SIGTERM or SIGINT stops cleanly (exit status 0; the lease is
    kept for the next start, unless --cleanup-on-exit); a second one while
    stopping exits at once (status 143 or 130); SIGHUP is logged and
    ignored. Exit status 1: a fatal error, logged as one line.
    """
    check_etcd_flags(etcd_endpoints, etcd_credentials)
    from ..daemon import DaemonOptions, run  # netlink and friends: not needed for --help
    from ..dataplane import fast

    setup_logging(verbose, PROG, log_level.lower())
    ctx = click.get_current_context()
    if verbose:
        log.warning("-v is deprecated: use --log-level debug (or OVERLAYD_LOG_LEVEL=debug)")
    log.info("%s", startup_line(os.getpid(), datapath, healthz_addr, effective_flags(
        [(p.name, ctx.params[p.name]) for p in ctx.command.params if p.name in ctx.params])))
    if not fast.available() and ctx.get_parameter_source("datapath") \
            is click.core.ParameterSource.DEFAULT:
        log.warning("the C engine (overlayd._fastpath) does not load (%s): the userspace backends fall back to "
                    "the slower Python data path (reinstall with a C compiler and Python headers: "
                    "scripts/install)", fast.IMPORT_ERROR)
    options = DaemonOptions(
        etcd_endpoints=etcd_endpoints, etcd_prefix=etcd_prefix, etcd_credentials=etcd_credentials, iface=iface,
        iface_regex=iface_regex, iface_can_reach=iface_can_reach, public_ip=public_ip, public_ip6=public_ipv6,
        subnet_file=subnet_file, status_file=status_file, lease_ttl=lease_ttl, ip_masq=ip_masq,
        resync_interval=resync_interval, full_resync_interval=full_resync_interval,
        cleanup_on_exit=cleanup_on_exit, healthz_addr=healthz_addr,
        node=NodeOptions(vxlan_impl=vxlan_impl, use_uvloop=event_loop == "uvloop", datapath=datapath,
                         udp_checksum=udp_checksum, state_dir=os.path.abspath(state_dir)),
    )
    sys.exit(run(options))


def main() -> None:
    cli(prog_name=PROG)


if __name__ == "__main__":
    main()
