"""Endpoint health (issue 22): what is probed, the thresholds, and the probes themselves on loopback."""

import asyncio
import ipaddress

import pytest

from overlayd.service.health import Check, HealthSettings, Verdicts, check_for, probe
from overlayd.service.model import Endpoint, Service, ServicePort

A = ipaddress.IPv4Address
NODE = ipaddress.IPv4Network("10.244.3.0/24")


@pytest.mark.parametrize("ports, path, ep_port, check", [
    ((ServicePort(80, 8080),), None, None, Check("10.244.3.5", 8080)),
    ((ServicePort(53, 53, "UDP"), ServicePort(80, 8080)), "/healthz", None, Check("10.244.3.5", 8080, "/healthz")),
    ((ServicePort(80, 8080),), None, 9090, Check("10.244.3.5", 9090)),
    ((ServicePort(53, 53, "UDP"),), None, None, None),  # UDP only: not checked
])
def test_what_is_probed(ports, path, ep_port, check):
    service = Service("web", A("10.96.0.10"), ports, health_path=path)
    assert check_for(service, Endpoint("web", NODE, A("10.244.3.5"), ep_port)) == check


@pytest.mark.parametrize("settings, ready, results, changes", [
    (HealthSettings(), True, [True, False, False, True], [None, False, False, None]),  # against the published state
    (HealthSettings(failures=3), True, [False, False, True, False, False, False], [None, None, None, None, None, False]),
    (HealthSettings(successes=2), False, [True, False, True, True], [None, None, None, True]),
])
def test_thresholds(settings, ready, results, changes):
    verdicts = Verdicts(settings)
    assert [verdicts.judge("k", ready, passed) for passed in results] == changes


async def test_tcp_and_http_probes():
    async def http(reader, writer):
        request = await reader.readline()
        status = b"200 OK" if b" /ok " in request else b"503 Unavailable"
        writer.write(b"HTTP/1.0 " + status + b"\r\n\r\n")
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await probe(Check("127.0.0.1", port), 1.0)
        assert await probe(Check("127.0.0.1", port, "/ok"), 1.0)
        assert not await probe(Check("127.0.0.1", port, "/down"), 1.0)
    finally:
        server.close()
        await server.wait_closed()
    assert not await probe(Check("127.0.0.1", port), 1.0)  # refused
