"""``overlayctl service ...`` and ``overlayctl endpoint ...``: services in etcd (issue 22).

The conventions of every overlayctl command (see :mod:`overlayd.cli.ctl`): changes confirmed
in one line on stdout (``-q``: not), errors one line on stderr with exit status 1, ``--json``
one object with the ``schema`` version: ``service`` (a service record, with its
``endpoints``), ``services`` (a list of them), ``endpoint`` (an endpoint record).
"""

from __future__ import annotations

import ipaddress

import click

from ..errors import ServiceError
from ..service.etcd import ServiceStore
from ..service.model import (CLIENT_IP, CLUSTER, DEFAULT_AFFINITY_TIMEOUT, LOCAL, NO_AFFINITY, Endpoint, Service,
                             parse_address, parse_port)
from .common import one_line_errors
from .ctl import PROG, WIDTH, _echo_json, _run, fit, json_option, quiet_option, render_table


def _with_services(coro_fn, obj):
    """``coro_fn(ServiceStore)`` on the etcd the global flags name."""
    return _run(lambda etcd: coro_fn(ServiceStore(etcd)), obj)


def endpoint_record(ep: Endpoint) -> dict:
    """One endpoint as --json prints it."""
    return {"service_name": ep.service, "address": ep.address, "ip": str(ep.ip), "port": ep.port,
            "node": str(ep.node), "ready": ep.ready, "bound": ep.handle != 0}


def service_record(s: Service, endpoints: list[Endpoint]) -> dict:
    """One service as --json prints it, with ``endpoints`` (its endpoint records)."""
    return {"name": s.name, "cluster_ip": str(s.cluster_ip) if s.cluster_ip else None,
            "ports": [{"port": p.port, "target_port": p.target_port, "protocol": p.protocol,
                       "node_port": p.node_port} for p in s.ports],
            "external_traffic_policy": s.external_traffic_policy, "session_affinity": s.session_affinity,
            "session_affinity_timeout": s.affinity_timeout if s.affinity else None,
            "health_check_path": s.health_path,
            "endpoints": [endpoint_record(ep) for ep in endpoints if ep.service == s.name]}


def _ports_text(s: Service) -> str:
    return ",".join(p.spec() + (f"@{p.node_port}" if p.node_port else "") for p in s.ports)


def _ready_text(s: Service, endpoints: list[Endpoint]) -> str:
    mine = [ep for ep in endpoints if ep.service == s.name]
    return f"{sum(ep.ready for ep in mine)}/{len(mine)}"


@click.group()
def service():
    """Create, list, show or delete services: stable virtual IPs (ClusterIPs, and NodePorts
    on every node) in front of endpoints, load-balanced by every node's kernel.

    Needs a ServiceNetwork in the network config ('overlayctl config set'). PORTS show as
    PORT:TARGETPORT/PROTO, with @NODEPORT when the port has one.
    """


@service.command("create")
@click.argument("name")
@click.option("--port", "ports", multiple=True, required=True, metavar="PORT[:TARGET][/tcp|udp]",
              help="A port of the service (repeatable), e.g. 80:8080/tcp; the target port is the "
                   "endpoints' (default: PORT), the protocol tcp by default.")
@click.option("--node-port", "node_ports", multiple=True, metavar="PORT|auto",
              help="A NodePort for the --port in the same position (repeatable); 'auto' picks a "
                   "free one from the NodePortRange.")
@click.option("--cluster-ip", metavar="IP", help="The ClusterIP (default: a free one from the ServiceNetwork).")
@click.option("--external-traffic-policy", type=click.Choice([CLUSTER, LOCAL]), default=CLUSTER,
              show_default=True, help="Local: NodePort traffic goes to this node's endpoints only and keeps "
                                      "the client's address.")
@click.option("--session-affinity", type=click.Choice([NO_AFFINITY, CLIENT_IP]), default=NO_AFFINITY,
              show_default=True, help="ClientIP: a client's new connections go to the endpoint it used last.")
@click.option("--session-affinity-timeout", type=int, default=DEFAULT_AFFINITY_TIMEOUT, show_default=True,
              metavar="SECONDS", help="How long a client sticks to its endpoint (1-86400).")
@click.option("--health-check-path", metavar="PATH",
              help="Check endpoints with an HTTP GET of PATH (2xx/3xx: ready) instead of a TCP connect.")
@quiet_option
@json_option("Print {\"service\": the created service's record}.")
@click.pass_obj
@one_line_errors(PROG)
def service_create(obj, name, ports, node_ports, cluster_ip, external_traffic_policy, session_affinity,
                   session_affinity_timeout, health_check_path, quiet, as_json):
    """Create the service NAME with a ClusterIP (and NodePorts) allocated atomically.

    NAME is a DNS label (lower-case letters, digits, '-'). Endpoints are added with
    'overlayctl endpoint add' or by the CNI plugin ('services' in its config).
    """
    if len(node_ports) > len(ports):
        raise ServiceError(f"{len(node_ports)} --node-port for {len(ports)} --port: one per port at most")
    wanted = [None if np is None else _node_port(np) for np in (*node_ports, *[None] * (len(ports) - len(node_ports)))]
    request = Service(name, _cluster_ip(cluster_ip), tuple(parse_port(spec, np) for spec, np in zip(ports, wanted)),
                      external_traffic_policy, session_affinity, session_affinity_timeout, health_check_path)
    created = _with_services(lambda s: s.create(request), obj)
    if as_json:
        _echo_json(service=service_record(created, []))
    elif not quiet:
        click.echo(fit(f"created service {name}: ClusterIP {created.cluster_ip}, ports {_ports_text(created)}", WIDTH))


def _node_port(text: str) -> int:
    if text == "auto":
        return 0
    if not text.isdecimal():
        raise ServiceError(f"--node-port {text!r}: expected a port number or 'auto'")
    return int(text)


def _cluster_ip(text: str | None) -> ipaddress.IPv4Address | None:
    if text is None:
        return None
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise ServiceError(f"--cluster-ip {text!r} is not an IPv4 address") from None


SERVICE_HEADERS = ["NAME", "CLUSTER IP", "PORTS", "POLICY", "AFFINITY", "READY"]


@service.command("list")
@json_option("Print {\"services\": a list of service records, each with its endpoints}.")
@click.pass_obj
@one_line_errors(PROG)
def service_list(obj, as_json):
    """List the services: ClusterIP, ports, traffic policy, affinity, ready/all endpoints."""
    async def listing(store):
        services, _ = await store.services()
        return services, await store.endpoints()
    services, endpoints = _with_services(listing, obj)
    if as_json:
        _echo_json(services=[service_record(s, endpoints) for s in services])
    elif not services:
        click.echo("no services")
    else:
        click.echo(render_table([[s.name, s.cluster_ip, _ports_text(s), s.external_traffic_policy, s.session_affinity,
                                  _ready_text(s, endpoints)] for s in services], SERVICE_HEADERS))


ENDPOINT_HEADERS = ["ENDPOINT", "NODE", "READY", "BOUND"]


@service.command("show")
@click.argument("name")
@json_option("Print {\"service\": the service's record, with its endpoints}.")
@click.pass_obj
@one_line_errors(PROG)
def service_show(obj, name, as_json):
    """Show the service NAME and its endpoints (BOUND: the key lives as long as its node's lease)."""
    async def show(store):
        return await store.get(name), await store.endpoints(name)
    svc, endpoints = _with_services(show, obj)
    if as_json:
        _echo_json(service=service_record(svc, endpoints))
        return
    lines = [f"service {svc.name}: ClusterIP {svc.cluster_ip}, ports {_ports_text(svc)}",
             f"externalTrafficPolicy {svc.external_traffic_policy}, sessionAffinity {svc.session_affinity}"
             + (f" ({svc.affinity_timeout}s)" if svc.affinity else "")
             + f", health check {'HTTP GET ' + svc.health_path if svc.health_path else 'TCP connect'}"]
    click.echo("\n".join(fit(line, WIDTH) for line in lines))
    if endpoints:
        click.echo(render_table([[ep.address, ep.node, "yes" if ep.ready else "no", "yes" if ep.handle else "no"]
                                 for ep in endpoints], ENDPOINT_HEADERS))
    else:
        click.echo("no endpoints")


@service.command("delete")
@click.argument("name")
@quiet_option
@json_option("Print {\"service\": the deleted service's record, with the endpoints deleted with it}.")
@click.pass_obj
@one_line_errors(PROG)
def service_delete(obj, name, quiet, as_json):
    """Delete the service NAME and its endpoints; every node drops it from its kernel at once."""
    async def delete(store):
        endpoints = await store.endpoints(name)
        deleted, count = await store.delete(name)
        return deleted, endpoints, count
    deleted, endpoints, count = _with_services(delete, obj)
    if as_json:
        _echo_json(service=service_record(deleted, endpoints))
    elif not quiet:
        click.echo(f"deleted service {name} ({deleted.cluster_ip}) and its {count} endpoint{'s' * (count != 1)}")


@click.group()
def endpoint():
    """Add or remove a service's endpoints (pods) by hand.

    An endpoint is bound to the etcd lease of the node whose subnet holds its IP, so it goes
    when that node's lease goes. Without a port it serves each service port at its target port.
    """


@endpoint.command("add")
@click.argument("service_name", metavar="SERVICE")
@click.argument("address", metavar="IP[:PORT]")
@click.option("--not-ready", is_flag=True, help="Add it not ready (its node's health check decides from then on).")
@quiet_option
@json_option("Print {\"endpoint\": the added endpoint's record}.")
@click.pass_obj
@one_line_errors(PROG)
def endpoint_add(obj, service_name, address, not_ready, quiet, as_json):
    """Add the endpoint IP[:PORT] (a pod) to SERVICE."""
    ip, port = parse_address(address)
    added = _with_services(lambda s: s.add_endpoint(service_name, ip, port, ready=not not_ready), obj)
    if as_json:
        _echo_json(endpoint=endpoint_record(added))
    elif not quiet:
        click.echo(f"added endpoint {added.address} to service {service_name} (node {added.node}"
                   f"{'' if added.handle else ', reserved: no TTL'})")


@endpoint.command("remove")
@click.argument("service_name", metavar="SERVICE")
@click.argument("address", metavar="IP[:PORT]")
@quiet_option
@json_option("Print {\"endpoint\": the removed endpoint's record (as it was)}.")
@click.pass_obj
@one_line_errors(PROG)
def endpoint_remove(obj, service_name, address, quiet, as_json):
    """Remove the endpoint IP[:PORT] from SERVICE."""
    ip, port = parse_address(address)
    removed = _with_services(lambda s: s.remove_endpoint(service_name, ip, port), obj)
    if as_json:
        _echo_json(endpoint=endpoint_record(removed))
    elif not quiet:
        click.echo(f"removed endpoint {removed.address} from service {service_name}")

