"""overlayctl service/endpoint (issue 22): output, --json, -q, one-line errors. The store is a
stand-in with ServiceStore's contract (the real one is tested against etcd in
tests/integration/test_ctl_services.py)."""

from __future__ import annotations

import dataclasses
import ipaddress
import json

import pytest
from click.testing import CliRunner

from overlayd.cli import ctl as ctl_module  # noqa: F401  (first: it registers the service commands)
from overlayd.cli import services as services_module
from overlayd.cli.ctl import cli as ctl
from overlayd.errors import ServiceError
from overlayd.service.model import Endpoint

A = ipaddress.IPv4Address
NODE = ipaddress.IPv4Network("10.244.3.0/24")


class FakeServiceStore:
    """ServiceStore's contract in memory; every invocation 'connects' to the same instance."""

    def __init__(self):
        self.by_name, self.eps, self.next_ip = {}, [], 10

    def __call__(self, etcd):
        return self

    async def create(self, request):
        if request.name in self.by_name:
            raise ServiceError(f"service {request.name} already exists (delete it first)")
        ports = tuple(dataclasses.replace(p, node_port=30000 + i) if p.node_port == 0 else p
                      for i, p in enumerate(request.ports))
        self.next_ip += 1
        made = dataclasses.replace(request, cluster_ip=request.cluster_ip or A(f"10.96.0.{self.next_ip}"), ports=ports)
        self.by_name[made.name] = made
        return made

    async def services(self):
        return sorted(self.by_name.values(), key=lambda s: s.name), 1

    async def get(self, name):
        if name not in self.by_name:
            raise ServiceError(f"no service {name}")
        return self.by_name[name]

    async def endpoints(self, service=None):
        return [ep for ep in self.eps if service in (None, ep.service)]

    async def delete(self, name):
        svc = await self.get(name)
        del self.by_name[name]
        gone = [ep for ep in self.eps if ep.service == name]
        self.eps = [ep for ep in self.eps if ep.service != name]
        return svc, len(gone)

    async def add_endpoint(self, service, ip, port=None, ready=True):
        await self.get(service)
        ep = Endpoint(service, NODE, ip, port, ready, handle=7)
        self.eps.append(ep)
        return ep

    async def remove_endpoint(self, service, ip, port=None):
        for ep in self.eps:
            if (ep.service, ep.ip, ep.port) == (service, ip, port):
                self.eps.remove(ep)
                return ep
        raise ServiceError(f"service {service} has no endpoint {ip}")


class NoEtcd:
    def __init__(self, *args, **kwargs):
        pass

    async def close(self):
        pass


@pytest.fixture
def fake(monkeypatch):
    store = FakeServiceStore()
    monkeypatch.setattr(services_module, "ServiceStore", store)
    monkeypatch.setattr(ctl_module, "EtcdStore", NoEtcd)
    return store


def invoke(*args):
    return CliRunner().invoke(ctl, list(args), catch_exceptions=False)


def test_create_list_show_delete(fake):
    out = invoke("service", "create", "web", "--port", "80:8080/tcp", "--node-port", "auto", "--port", "53/udp")
    assert out.exit_code == 0 and out.stdout == (
        "created service web: ClusterIP 10.96.0.11, ports 80:8080/tcp@30000,53:53/udp\n")
    assert invoke("endpoint", "add", "web", "10.244.3.5").stdout == (
        "added endpoint 10.244.3.5 to service web (node 10.244.3.0/24)\n")
    invoke("endpoint", "add", "web", "10.244.3.6", "--not-ready")
    listing = invoke("service", "list").stdout.splitlines()
    assert listing[0].split() == ["NAME", "CLUSTER", "IP", "PORTS", "POLICY", "AFFINITY", "READY"]
    assert listing[1].split() == ["web", "10.96.0.11", "80:8080/tcp@30000,53:53/udp", "Cluster", "None", "1/2"]
    show = invoke("service", "show", "web").stdout.splitlines()
    assert show[:2] == ["service web: ClusterIP 10.96.0.11, ports 80:8080/tcp@30000,53:53/udp",
                        "externalTrafficPolicy Cluster, sessionAffinity None, health check TCP connect"]
    assert show[3].split() == ["10.244.3.5", "10.244.3.0/24", "yes", "yes"]
    assert show[4].split() == ["10.244.3.6", "10.244.3.0/24", "no", "yes"]
    assert invoke("endpoint", "remove", "web", "10.244.3.6").stdout == "removed endpoint 10.244.3.6 from service web\n"
    assert invoke("service", "delete", "web").stdout == "deleted service web (10.96.0.11) and its 1 endpoint\n"
    assert invoke("service", "list").stdout == "no services\n"


def test_json_records(fake):
    created = json.loads(invoke("service", "create", "web", "--port", "80:8080", "--node-port", "30080",
                                "--external-traffic-policy", "Local", "--session-affinity", "ClientIP",
                                "--session-affinity-timeout", "60", "--health-check-path", "/healthz",
                                "--json").stdout)
    assert created == {"schema": 1, "service": {
        "name": "web", "cluster_ip": "10.96.0.11",
        "ports": [{"port": 80, "target_port": 8080, "protocol": "TCP", "node_port": 30080}],
        "external_traffic_policy": "Local", "session_affinity": "ClientIP", "session_affinity_timeout": 60,
        "health_check_path": "/healthz", "endpoints": []}}
    added = json.loads(invoke("endpoint", "add", "web", "10.244.3.5:9090", "--json").stdout)
    assert added == {"schema": 1, "endpoint": {"service_name": "web", "address": "10.244.3.5:9090", "ip": "10.244.3.5",
                                               "port": 9090, "node": "10.244.3.0/24", "ready": True, "bound": True}}
    listed = json.loads(invoke("service", "list", "--json").stdout)
    assert listed["services"][0]["endpoints"] == [added["endpoint"]]
    assert json.loads(invoke("service", "show", "web", "--json").stdout)["service"] == listed["services"][0]


def test_quiet(fake):
    for args in (["service", "create", "web", "--port", "80", "-q"], ["endpoint", "add", "web", "10.244.3.5", "-q"],
                 ["endpoint", "remove", "web", "10.244.3.5", "-q"], ["service", "delete", "web", "-q"]):
        result = invoke(*args)
        assert result.exit_code == 0 and result.stdout == "" and result.stderr == "", args


@pytest.mark.parametrize("args, message", [
    (["service", "create", "Web", "--port", "80"], "service name 'Web': use lower-case letters"),
    (["service", "create", "web", "--port", "http"], "port 'http': expected PORT[:TARGETPORT]"),
    (["service", "create", "web", "--port", "80", "--node-port", "x"], "--node-port 'x': expected a port number"),
    (["service", "create", "web", "--port", "80", "--node-port", "1", "--node-port", "2"],
     "2 --node-port for 1 --port: one per port at most"),
    (["service", "create", "web", "--port", "80", "--cluster-ip", "nope"], "--cluster-ip 'nope' is not an IPv4"),
    (["service", "create", "web", "--port", "80", "--external-traffic-policy", "Local"],
     "service web: externalTrafficPolicy Local needs a NodePort"),
    (["service", "show", "nope"], "no service nope"),
    (["service", "delete", "nope"], "no service nope"),
    (["endpoint", "add", "nope", "10.244.3.5"], "no service nope"),
    (["endpoint", "add", "web", "10.244.3"], "endpoint '10.244.3': expected an IPv4 address"),
    (["endpoint", "remove", "web", "10.244.3.9"], "service web has no endpoint 10.244.3.9"),
])
def test_errors_are_one_line(fake, args, message):
    invoke("service", "create", "web", "--port", "80") if args[-1] != "Web" else None
    result = invoke(*args)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith(f"overlayctl: error: {message}"), result.stderr
    assert len(result.stderr.splitlines()) == 1
