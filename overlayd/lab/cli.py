"""``scripts/lab``: bring up a multi-node overlayd cluster in network namespaces.

A thin click layer over :class:`overlayd.lab.topology.Lab`, the same code the
end-to-end tests use. The lab's state lives in ``--state-dir`` (default
``/run/overlayd-lab-<prefix>``), so every subcommand finds the lab ``up``
built, and two labs with different prefixes never touch each other.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import signal
import sys

import click

from ..backend import registry
from ..cli.common import one_line_errors
from ..errors import OverlayError
from . import demo
from .topology import IP_FAMILIES, NETWORK6, Lab, LabError

PROG = "lab"
STATE_ROOT = "/run/overlayd-lab"
PREFIX = "ovlab"


def lab_command(obj: dict, words: str) -> str:
    """``scripts/lab WORDS`` as the operator types it for this lab: with ``--state-dir`` and
    ``--prefix`` when they are not the defaults (the command would find another lab without)."""
    flags = []
    if obj["state_dir"] != f"{STATE_ROOT}-{obj['prefix']}":
        flags.append(f"--state-dir {shlex.quote(obj['state_dir'])}")
    if obj["prefix"] != PREFIX:
        flags.append(f"--prefix {obj['prefix']}")
    return " ".join(["scripts/lab", *flags, words])


def run_foreground(argv: list[str], env: dict) -> int:
    """Run ``argv`` and wait for it as a shell does: Ctrl-C (SIGINT to the terminal's process
    group) is the command's to handle, this process only waits; the exit status is the
    command's, 128+N when signal N ended it (130 for Ctrl-C)."""
    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)  # a handler, not SIG_IGN: exec resets it
    try:
        code = subprocess.call(argv, env=env)
    finally:
        signal.signal(signal.SIGINT, previous)
    return 128 - code if code < 0 else code


def _progress(message: str) -> None:
    click.echo(f"  .. {message}", err=True)


def _load(obj: dict) -> Lab:
    lab = Lab.load(obj["state_dir"], progress=_progress)
    if lab.prefix != obj["prefix"]:
        raise LabError(f"the lab in {obj['state_dir']} has prefix {lab.prefix!r}, not {obj['prefix']!r}")
    return lab


def _variants(nodes: int, vxlan_impl: str, **common) -> list[dict]:
    impls = [v.strip() for v in vxlan_impl.split(",")]
    bad = [v for v in impls if v not in ("user", "kernel")]
    if bad:
        raise click.BadParameter(f"{bad[0]!r}: each entry is user or kernel", param_hint="--vxlan-impl")
    return [{"vxlan_impl": impls[i % len(impls)], **common} for i in range(nodes)]


def _split_args(ctx, param, value: str) -> list[str]:
    try:
        return shlex.split(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def node_options(func):
    """The per-node daemon choices ``up`` and ``add-node`` share."""
    for option in reversed([
        click.option("--event-loop", type=click.Choice(["asyncio", "uvloop"]), default="asyncio", show_default=True),
        click.option("--ip-masq", is_flag=True, help="Run the nodes with --ip-masq."),
        click.option("--datapath", type=click.Choice(["python", "c"]),
                     help="The nodes' --datapath [default: the daemon's]."),
        click.option("--daemon-args", "extra_args", default="", callback=_split_args, metavar="'FLAGS'",
                     help="More overlayd flags for the nodes, e.g. '--resync-interval 1' (kept for restarts)."),
    ]):
        func = option(func)
    return func


def print_matrix(lab: Lab, tries: int = 5) -> bool:
    """Ping every pod from every pod, in each IP family of the lab, and print a matrix per family;
    True if all reached."""
    pods = lab.pods()
    if len(pods) < 2:
        click.echo("(fewer than two pods: nothing to ping)")
        return True
    ok = True
    for version in lab.versions:
        family = f"IPv{version} " if lab.versions != (4,) else ""  # an IPv4 lab's output as it always was
        click.echo(f"\npod-to-pod {family}reachability ({len(pods)} pods, ICMP{'v6' if version == 6 else ''} "
                   f"echo across the overlay):")
        result = lab.reachability(tries=tries, version=version)
        width = max(len(p.name) for p in pods) + 2
        click.echo(" " * width + "".join(p.name.ljust(width) for p in pods))
        for src in pods:
            cells = ["-" if src is dst else ("ok" if result[(src.name, dst.name)] else "FAIL") for dst in pods]
            click.echo(src.name.ljust(width) + "".join(c.ljust(width) for c in cells))
        ok = ok and all(result.values())
        click.echo(f"\n{sum(result.values())}/{len(result)} {family}pairs reachable")
    return ok


def _addresses(*ips: str) -> str:
    return " ".join(ip for ip in ips if ip) or "-"


def print_summary(lab: Lab, obj: dict) -> None:
    network = _addresses(lab.network if 4 in lab.versions else "", NETWORK6 if 6 in lab.versions else "")
    click.echo(f"\nlab {lab.prefix}: backend {lab.backend}, network {network}, etcd {lab.etcd_endpoints}"
               f"{' (client certificates in ' + lab.pki.directory + ')' if lab.pki else ''}")
    for node in lab.nodes:
        env_file = lab.subnet_file(node)
        subnet = "-"
        if os.path.exists(env_file):
            subnet = _addresses(*(l.split("=", 1)[1].strip() for l in open(env_file)
                                  if l.startswith(("FLANNEL_SUBNET=", "FLANNEL_IPV6_SUBNET="))))
        impl = f" ({node.vxlan_impl})" if lab.backend == "vxlan" else ""
        pid = f"machine pid {node.pid}" if lab.machines else f"pid {node.pid}"
        click.echo(f"  {node.name}{impl}: {_addresses(node.ip, node.ip6)}, pod subnet {subnet}, {pid}, "
                   f"pods {', '.join(f'{p.name}={_addresses(p.ip, p.ip6)}' for p in node.pods) or '-'}")
    if not any(lab.etcd_pids):
        click.echo(f"\netcd is stopped ('{lab_command(obj, 'start etcd')}')")
    elif lab.nodes:
        click.echo("\n" + lab.overlayctl("subnets", netns=lab.nodes[0].netns).stdout.rstrip())


def show_demo(lab: Lab, obj: dict) -> None:
    """Start what the demo service lacks and show the ClusterIP answering pods on every node
    (:func:`overlayd.lab.demo.show`); :class:`LabError` when a connection was not answered."""
    lines, ok, vip = demo.show(lab)
    click.echo("\n" + "\n".join(lines))
    if not ok:
        raise LabError(f"the demo service did not answer every connection; see the node logs in {lab.state_dir}")
    if vip is not None:
        click.echo("try: " + lab_command(obj, f"exec {lab.pods()[0].name} -- curl -s http://{vip}/"))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--state-dir", envvar="OVERLAYD_LAB_DIR", show_envvar=True,
              help=f"Where the lab keeps its state (etcd data, logs, subnet files) "
                   f"[default: {STATE_ROOT}-PREFIX].")
@click.option("--prefix", envvar="OVERLAYD_LAB_PREFIX", default=PREFIX, show_default=True,
              show_envvar=True, help="Namespace name prefix (8 characters at most), for a second lab.")
@click.pass_context
def cli(ctx, state_dir, prefix):
    """A multi-node overlayd lab in network namespaces on this machine (as root).

    Namespaces: an isolated underlay bridge (198.18.0.0/24, and 2001:db8::/64
    with --ip-family dual or ipv6; no link to the real network), etcd,
    node1..nodeN each running overlayd, and pods joined to their node's cni0
    by overlayd's CNI plugin.
    """
    if len(prefix) > 8 or not prefix.replace("-", "").isalnum():
        raise click.BadParameter("8 letters, digits or dashes at most", param_hint="--prefix")
    ctx.obj = {"state_dir": state_dir or f"{STATE_ROOT}-{prefix}", "prefix": prefix}


@cli.command()
@click.option("--nodes", type=click.IntRange(1, 50), default=3, show_default=True)
@click.option("--pods-per-node", type=click.IntRange(0, 20), default=1, show_default=True)
@click.option("--backend", type=click.Choice(registry.names()), default="udp", show_default=True)
@click.option("--vxlan-impl", default="user", show_default=True,
              help="user or kernel, or a comma list cycled over the nodes (e.g. user,kernel).")
@node_options
@click.option("--lease-ttl", type=click.IntRange(2), default=3600, show_default=True)
@click.option("--etcd-members", type=click.Choice(["1", "3"]), default="1", show_default=True,
              help="etcd cluster size: 3 members on 198.18.0.2-4, each in its own namespace.")
@click.option("--etcd-tls", is_flag=True, help="etcd client URLs over https with client certificates "
                                               "(a CA and certificates made in STATE_DIR/pki).")
@click.option("--ip-family", type=click.Choice(list(IP_FAMILIES)), default="ipv4", show_default=True,
              help=f"The pod network's IP families: dual and ipv6 add IPv6 underlay addresses "
                   f"(2001:db8::/64) and EnableIPv6 with pods in {NETWORK6} (ipv6: EnableIPv4 false); "
                   f"the ping matrix covers each family.")
@click.option("--demo-service/--no-demo-service", default=True, show_default=True,
              help=f"Every pod joins the service '{demo.SERVICE}' through CNI and runs a tiny HTTP server "
                   f"(port {demo.TARGET_PORT}, stopped by 'down'); the summary shows its ClusterIP reached "
                   f"from a pod on every node (networks with IPv4: services are IPv4).")
@click.option("--machines", is_flag=True,
              help="Each node a booted Debian 12 machine (systemd-nspawn) in its namespace, provisioned "
                   "by vagrant/provision-node.sh and running systemd/overlayd.service under its own "
                   "systemd ('exec NODE -- systemctl status overlayd', 'reboot NODE'). The node image is "
                   "built once and cached in /var/cache/overlayd/machines (about a minute).")
@click.pass_obj
@one_line_errors(PROG)
def up(obj, nodes, pods_per_node, backend, vxlan_impl, lease_ttl, etcd_members, etcd_tls, ip_family, demo_service,
       machines, **node):
    """Build the lab, then show the subnets, a pod-to-pod ping matrix and the demo service."""
    variants = _variants(nodes, vxlan_impl, **node)
    state_dir = obj["state_dir"]
    lab = Lab(state_dir, obj["prefix"], backend=backend, lease_ttl=lease_ttl, progress=_progress,
              etcd_members=int(etcd_members), etcd_tls=etcd_tls, ip_family=ip_family, machines=machines)
    family = "" if ip_family == "ipv4" else f", {ip_family}"
    kind = " machines" if machines else ""
    if demo_service:
        lab.pod_services = demo.pod_services(lab)
    click.echo(f"bringing up {nodes} nodes{kind} ({backend}{family}), {pods_per_node} pod(s) each", err=True)
    try:
        lab.up(nodes=nodes, pods_per_node=pods_per_node, variants=variants)
    except (OverlayError, KeyboardInterrupt):
        if os.path.exists(os.path.join(state_dir, "lab.json")) and lab.namespaces:
            click.echo("cleaning up the partial lab", err=True)
            lab.down()
        raise
    print_summary(lab, obj)
    if not print_matrix(lab):
        raise LabError("some pods cannot reach each other; see the node logs in " + state_dir)
    if lab.pod_services:
        show_demo(lab, obj)
    click.echo("\nnext: " + " | ".join(lab_command(obj, words) for words in (
        "exec node1 -- overlayctl subnets", "status", "down")))


@cli.command("add-node")
@click.option("--pods", type=click.IntRange(0, 20), default=1, show_default=True)
@click.option("--vxlan-impl", type=click.Choice(["user", "kernel"]), default="user", show_default=True)
@node_options
@click.pass_obj
@one_line_errors(PROG)
def add_node(obj, pods, vxlan_impl, **node):
    """Add a node (and its pods) to the running lab, then show the ping matrix."""
    lab = _load(obj)
    node = lab.add_node(vxlan_impl=vxlan_impl, pods=pods, **node)
    click.echo(f"added {node.name} ({node.ip})")
    if not print_matrix(lab):
        raise LabError("some pods cannot reach each other")
    if lab.pod_services:
        show_demo(lab, obj)


@cli.command()
@click.option("--json", "as_json", is_flag=True,
              help="The topology as JSON, for other tools (each node with its log, status and subnet files).")
@click.pass_obj
@one_line_errors(PROG)
def status(obj, as_json):
    """Show the lab: namespaces, node IPs, pod IPs, etcd endpoint, daemon PIDs."""
    lab = _load(obj)
    if as_json:
        click.echo(json.dumps(lab.to_dict(), indent=2))
        return
    print_summary(lab, obj)
    if lab.pod_services and any(lab.etcd_pids):
        click.echo("\n" + lab.overlayctl("service", "list").stdout.rstrip())


@cli.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("target")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
@one_line_errors(PROG)
def exec_(obj, target, command):
    """Run COMMAND inside TARGET's namespace (a node, a pod, or etcd: etcd, or etcd1..3 in a cluster).

    The OVERLAYD_ETCD_* variables point at the lab's etcd (with the client
    certificate in a TLS lab), so e.g. ``scripts/lab exec node1 -- overlayctl
    subnets`` works. On a node whose overlayd runs, COMMAND also runs in the daemon's
    mount namespace, whose /run/wireguard is the node's own (``scripts/lab exec node1 --
    wg show``). The exit status is COMMAND's (130 when Ctrl-C stopped it).
    """
    lab = _load(obj)
    names = {n.name: n.netns for n in lab.nodes}
    names.update({p.name: p.netns for p in lab.pods()})
    names.update({f"etcd{i + 1}": lab.etcd_member_ns(i) for i in range(len(lab.etcd_pids))})
    names["etcd"] = lab.etcd_ns
    if target not in names:
        raise LabError(f"no node or pod {target!r} (have: {', '.join(sorted(names))})")
    env = dict(os.environ, **lab.etcd_env())
    node = next((n for n in lab.nodes if n.name == target), None)
    if node is not None:  # in its daemon's mount namespace too: 'wg show' finds its wireguard-go
        env["OVERLAYD_STATUS_FILE"] = lab.status_file(node)
        sys.exit(run_foreground(lab.node_argv(node, list(command)), env))
    sys.exit(run_foreground(["ip", "netns", "exec", names[target], *command], env))


def _process_command(name: str, doc: str, on_node, on_etcd) -> None:
    """``scripts/lab NAME TARGET``: act on a node's overlayd or on etcd, by its recorded PID.

    TARGET ``etcd`` is every etcd member in a cluster lab; ``etcd1``..``etcd3`` is one.
    """
    @click.argument("target")
    @click.pass_obj
    @one_line_errors(PROG)
    def command(obj, target):
        lab = _load(obj)
        members = {f"etcd{i + 1}": i for i in range(len(lab.etcd_pids))}
        if target == "etcd":
            on_etcd(lab, None)
        elif target in members:
            on_etcd(lab, members[target])
        else:
            on_node(lab, lab.node(target))
        click.echo(f"{target}: {name} done", err=True)

    command.__doc__ = doc
    cli.command(name)(command)


_process_command("stop", "Stop TARGET (a node's overlayd, etcd, or etcd1..3) with SIGTERM; the lease stays.",
                 Lab.stop_node, lambda lab, m: lab.stop_etcd(member=m))
_process_command("start", "Start TARGET again (etcd: same port and data, so leases survive).",
                 Lab.start_node, lambda lab, m: lab.start_etcd(member=m))
_process_command("restart", "Stop and start TARGET (a node's overlayd keeps its flags).",
                 Lab.restart_node, Lab.restart_etcd)
_process_command("kill", "SIGKILL TARGET: its state stays as a crash leaves it.",
                 Lab.kill_node, lambda lab, m: lab.stop_etcd(signal.SIGKILL, member=m))
_process_command("pause", "Freeze TARGET (SIGSTOP): a hung process; 'resume' lets it run.",
                 Lab.pause_node, Lab.pause_etcd)
_process_command("resume", "Let a paused TARGET run again (SIGCONT).",
                 Lab.resume_node, Lab.resume_etcd)


@cli.command()
@click.argument("node")
@click.pass_obj
@one_line_errors(PROG)
def reboot(obj, node):
    """Reboot NODE's machine (a lab up with --machines); returns once its overlayd is ready again."""
    lab = _load(obj)
    lab.reboot_node(lab.node(node))
    click.echo(f"{node}: rebooted", err=True)


@cli.command()
@one_line_errors(PROG)
def image():
    """Build the machines lab's node image if the cache has none for its recipe; print its path."""
    from .machines import ensure_image, recipe_for

    if os.geteuid() != 0:
        raise LabError("the node image is built as root (mmdebstrap, /var/cache/overlayd)")
    click.echo(ensure_image(recipe_for(), progress=_progress))


@cli.command()
@click.pass_obj
@one_line_errors(PROG)
def down(obj):
    """Stop every process and delete every namespace and file the lab made."""
    if not os.path.exists(os.path.join(obj["state_dir"], "lab.json")):
        click.echo(f"no lab in {obj['state_dir']}: nothing to do", err=True)
        return
    _load(obj).down()
    click.echo("lab is down", err=True)


def main() -> None:
    cli(prog_name=PROG)


if __name__ == "__main__":
    main()
