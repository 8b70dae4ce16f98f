"""overlayctl service/endpoint against a real etcd (issue 22): the commands an operator runs."""

from __future__ import annotations

import asyncio
import ipaddress
import json

import pytest
from click.testing import CliRunner

from overlayd.cli.ctl import cli as ctl
from overlayd.lease.etcd import EtcdStore
from overlayd.lease.model import LeaseAttrs

pytestmark = pytest.mark.etcd


def test_services_from_the_command_line(etcd_server, etcd_prefix):
    def run(*args, input=None):
        result = CliRunner().invoke(ctl, ["--etcd-endpoints", etcd_server.endpoint, "--etcd-prefix", etcd_prefix,
                                          *args], input=input, catch_exceptions=False)
        return result

    no_network = run("service", "create", "web", "--port", "80")
    assert no_network.exit_code == 1 and "no network config" in no_network.stderr
    assert run("config", "set", "-", input=json.dumps({"Network": "10.244.0.0/16", "ServiceNetwork": "10.96.0.0/28",
                                                       "NodePortRange": "30080-30080"})).exit_code == 0

    async def lease():
        store = EtcdStore(etcd_server.endpoint, etcd_prefix)
        try:
            return await store.create_lease(ipaddress.IPv4Network("10.244.3.0/24"),
                                            LeaseAttrs(ipaddress.IPv4Address("198.18.0.11"), "udp"), 60)
        finally:
            await store.close()
    node = asyncio.run(lease())

    web = json.loads(run("service", "create", "web", "--port", "80:8080", "--node-port", "auto", "--json").stdout)
    assert web["service"]["ports"][0]["node_port"] == 30080
    assert ipaddress.IPv4Address(web["service"]["cluster_ip"]) in ipaddress.IPv4Network("10.96.0.0/28")
    full = run("service", "create", "api", "--port", "80", "--node-port", "auto")
    assert full.exit_code == 1 and full.stderr == "overlayctl: error: NodePortRange 30080-30080 is full for TCP\n"
    assert run("endpoint", "add", "web", "10.244.3.5", "-q").exit_code == 0
    stray = run("endpoint", "add", "web", "10.244.9.5")
    assert stray.exit_code == 1 and "no node's subnet holds it" in stray.stderr
    shown = json.loads(run("service", "show", "web", "--json").stdout)["service"]
    assert [(e["address"], e["node"], e["ready"], e["bound"]) for e in shown["endpoints"]] == [
        ("10.244.3.5", "10.244.3.0/24", True, True)]

    async def node_dies():
        store = EtcdStore(etcd_server.endpoint, etcd_prefix)
        try:
            await store.revoke_lease(node)
        finally:
            await store.close()
    asyncio.run(node_dies())
    assert json.loads(run("service", "list", "--json").stdout)["services"][0]["endpoints"] == []
    assert run("service", "delete", "web").stdout == "deleted service web (" + web["service"]["cluster_ip"] + \
        ") and its 0 endpoints\n"
