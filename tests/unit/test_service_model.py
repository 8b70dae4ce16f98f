"""The service model (issue 22): validation, codec, keys, allocation. Tables of vectors."""

import ipaddress
import random

import pytest

from overlayd.errors import ServiceError, ServiceRangeFull
from overlayd.netconf import ServiceRange
from overlayd.service import model
from overlayd.service.allocator import allocate, free_number
from overlayd.service.model import Endpoint, Service, ServicePort, parse_address, parse_port

A = ipaddress.IPv4Address
N = ipaddress.IPv4Network
P = "/coreos.com/network"
NODE = N("10.244.3.0/24")


def svc(name="web", ip="10.96.0.10", ports=(ServicePort(80, 8080),), **kw):
    return Service(name, A(ip) if ip else None, tuple(ports), **kw)


@pytest.mark.parametrize("spec, port", [
    ("80", ServicePort(80, 80, "TCP")),
    ("80:8080", ServicePort(80, 8080, "TCP")),
    ("80:8080/tcp", ServicePort(80, 8080, "TCP")),
    ("53/udp", ServicePort(53, 53, "UDP")),
    ("53:5353/UDP", ServicePort(53, 5353, "UDP")),
    (" 443:8443/tcp ", ServicePort(443, 8443, "TCP")),
])
def test_port_specs(spec, port):
    assert parse_port(spec) == port
    assert parse_port(port.spec()) == port


@pytest.mark.parametrize("spec, message", [
    ("", "port '': expected PORT[:TARGETPORT][/tcp|/udp]"),
    ("http", "port 'http': expected"),
    ("80:", "port '80:': expected"),
    ("80/sctp", "port 80: protocol must be TCP or UDP, got 'SCTP'"),
    ("0", "port must be a port number 1-65535, got 0"),
    ("80:70000", "port 80: targetPort must be a port number 1-65535, got 70000"),
    ("80:8080/tcp/x", "port '80:8080/tcp/x': expected"),
])
def test_bad_port_specs(spec, message):
    with pytest.raises(ServiceError) as err:
        parse_port(spec)
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize("text, ip, port", [
    ("10.244.3.5", "10.244.3.5", None),
    ("10.244.3.5:8080", "10.244.3.5", 8080),
])
def test_endpoint_addresses(text, ip, port):
    assert parse_address(text) == (A(ip), port)


@pytest.mark.parametrize("text, message", [
    ("10.244.3", "endpoint '10.244.3': expected an IPv4 address"),
    ("pod:80", "endpoint 'pod:80': expected an IPv4 address"),
    ("10.244.3.5:", "endpoint '10.244.3.5:': the port must be a number"),
    ("10.244.3.5:x", "endpoint '10.244.3.5:x': the port must be a number"),
    ("10.244.3.5:0", "endpoint 10.244.3.5:0: port must be a port number 1-65535, got 0"),
    ("fd00::1", "endpoint 'fd00::1': expected an IPv4 address"),
])
def test_bad_endpoint_addresses(text, message):
    with pytest.raises(ServiceError) as err:
        parse_address(text)
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "Web"}, "service name 'Web': use lower-case letters"),
    ({"name": "1web"}, "service name '1web'"),
    ({"name": "web-"}, "service name 'web-'"),
    ({"name": "a" * 64}, "service name 'aaaa"),
    ({"name": "we/b"}, "service name 'we/b'"),
    ({"ports": ()}, "service web: needs at least one port"),
    ({"ports": (ServicePort(80, 1), ServicePort(80, 2))}, "service web: port 80/tcp given twice"),
    ({"ports": (ServicePort(80, 1, "TCP", 30001), ServicePort(81, 2, "TCP", 30001))},
     "service web: nodePort 30001/tcp given twice"),
    ({"external_traffic_policy": "local"}, "service web: externalTrafficPolicy must be Cluster or Local"),
    ({"external_traffic_policy": "Local"}, "service web: externalTrafficPolicy Local needs a NodePort"),
    ({"session_affinity": "Cookie"}, "service web: sessionAffinity must be None or ClientIP"),
    ({"affinity_timeout": 0}, "service web: sessionAffinityTimeout must be 1-86400 seconds, got 0"),
    ({"affinity_timeout": 86401}, "service web: sessionAffinityTimeout must be 1-86400"),
    ({"health_path": "healthz"}, "service web: health check path must start with '/'"),
    ({"health_path": "/a b"}, "service web: health check path must start with '/'"),
])
def test_invalid_services(kwargs, message):
    args = {"name": "web", "ip": "10.96.0.10", "ports": (ServicePort(80, 8080),), **kwargs}
    with pytest.raises(ServiceError) as err:
        svc(**args)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_same_port_number_for_tcp_and_udp():
    s = svc(ports=(ServicePort(53, 53, "TCP", 30053), ServicePort(53, 53, "UDP", 30053)))
    assert [p.proto for p in s.ports] == ["tcp", "udp"]


@pytest.mark.parametrize("service", [
    svc(),
    svc(ports=(ServicePort(80, 8080, "TCP", 30080), ServicePort(53, 5353, "UDP"))),
    svc(ports=(ServicePort(80, 8080, "TCP", 30080),), external_traffic_policy="Local"),
    svc(session_affinity="ClientIP", affinity_timeout=60, health_path="/healthz"),
])
def test_service_codec_round_trip(service):
    raw = service.encode()
    assert Service.decode(service.name, raw, 7) == service
    assert Service.decode(service.name, raw, 7).revision == 7


def test_service_value_is_flannel_style_json():
    s = svc(ports=(ServicePort(80, 8080, "TCP", 30080),), session_affinity="ClientIP")
    assert s.to_json() == {"ClusterIP": "10.96.0.10", "Ports": [{"Port": 80, "TargetPort": 8080,
                           "Protocol": "TCP", "NodePort": 30080}], "ExternalTrafficPolicy": "Cluster",
                           "SessionAffinity": "ClientIP", "SessionAffinityTimeout": 10800}


@pytest.mark.parametrize("raw, message", [
    (b"{", "service web: malformed value"),
    (b"[]", "service web: malformed value (not a JSON object)"),
    (b'{"ClusterIP": 5, "Ports": []}', "service web: malformed value (ClusterIP must be a string)"),
    (b'{"ClusterIP": "10.96.0.10", "Ports": {}}', "service web: malformed value (Ports must be a list"),
    (b'{"ClusterIP": "10.96.0.300", "Ports": [{"Port": 80}]}', "service web: malformed value"),
    (b'{"ClusterIP": "10.96.0.10", "Ports": [{"Port": "80"}]}', "port must be a port number"),
    (b'{"ClusterIP": "10.96.0.10", "Ports": []}', "service web: needs at least one port"),
])
def test_malformed_service_values(raw, message):
    with pytest.raises(ServiceError) as err:
        Service.decode("web", raw)
    assert str(err.value).startswith(message), str(err.value)


def test_unallocated_service_is_not_encoded():
    with pytest.raises(ValueError):
        svc(ip=None).encode()
    with pytest.raises(ValueError):
        svc(ports=(ServicePort(80, 80, "TCP", 0),)).encode()


@pytest.mark.parametrize("kwargs, message", [
    ({"ip": A("10.244.4.5")}, "endpoint 10.244.4.5 is not in its node's subnet 10.244.3.0/24"),
    ({"port": 0}, "endpoint 10.244.3.5: port must be a port number"),
    ({"service": "Web"}, "service name 'Web'"),
    ({"ready": "yes"}, "endpoint 10.244.3.5: Ready must be true or false"),
])
def test_invalid_endpoints(kwargs, message):
    args = {"service": "web", "node": NODE, "ip": A("10.244.3.5"), **kwargs}
    with pytest.raises(ServiceError) as err:
        Endpoint(**args)
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize("ep, key", [
    (Endpoint("web", NODE, A("10.244.3.5")), f"{P}/endpoints/web/10.244.3.0-24/10.244.3.5"),
    (Endpoint("web", NODE, A("10.244.3.5"), 8080, False), f"{P}/endpoints/web/10.244.3.0-24/10.244.3.5:8080"),
])
def test_endpoint_keys_round_trip(ep, key):
    assert model.endpoint_key(P, ep) == key
    change = model.decode(P, key.encode(), ep.encode(), 9, handle=42)
    assert change == model.Change(key, ep, 9)
    assert change.value.handle == 42 and change.value.revision == 9
    assert model.decode(P, key, None, 10) == model.Change(key, None, 10)  # a deletion


def test_endpoint_target_port():
    http = ServicePort(80, 8080)
    assert Endpoint("web", NODE, A("10.244.3.5")).target(http) == 8080
    assert Endpoint("web", NODE, A("10.244.3.5"), 9090).target(http) == 9090


@pytest.mark.parametrize("key, value, error", [
    (f"{P}/endpoints/web/10.244.3.0-24", b'{"Ready": true}', "not an endpoint key"),
    (f"{P}/endpoints/web/10.244.3.1-24/10.244.3.5", b'{"Ready": true}', "'10.244.3.1-24' is not a node's subnet"),
    (f"{P}/endpoints/web/node-a/10.244.3.5", b'{"Ready": true}', "'node-a' is not a node's subnet"),
    (f"{P}/endpoints/web/10.244.3.0-24/10.244.9.5", b'{"Ready": true}', "not in its node's subnet"),
    (f"{P}/endpoints/web/10.244.3.0-24/10.244.3.5", b'nope', "malformed value"),
    (f"{P}/endpoints/Web/10.244.3.0-24/10.244.3.5", b'{"Ready": true}', "service name 'Web'"),
    (f"{P}/services/Web", svc().encode(), "service name 'Web'"),
    (f"{P}/services/web", b"{}", "service web: malformed value"),
])
def test_garbled_keys_decode_as_deletions_with_a_reason(key, value, error):
    change = model.decode(P, key, value, 3)
    assert change.value is None and change.revision == 3
    assert error in change.error


def test_keys_outside_both_subtrees_are_ignored():
    start, end = model.watch_range(P)
    assert (start, end) == (f"{P}/endpoints/", f"{P}/services0")
    assert f"{P}/nodeports/x" > start and f"{P}/nodeports/x" < end  # inside the range, yet...
    assert model.decode(P, f"{P}/nodeports/x", b"{}", 1) is None  # ...neither kind: ignored
    assert f"{P}/subnets/10.244.3.0-24" >= end and f"{P}/config" < start


@pytest.mark.parametrize("lo, hi, taken, expect", [
    (1, 1, [], {1}),
    (1, 3, [1, 3], {2}),
    (1, 3, [1, 2, 3], None),
    (10, 12, [9, 13, 10], {11, 12}),
    (1, 5, [2, 2, 4], {1, 3, 5}),
])
def test_free_number(lo, hi, taken, expect):
    picks = {free_number(lo, hi, taken, random.Random(seed)) for seed in range(40)}
    assert picks == ({None} if expect is None else expect)


def test_free_number_on_a_huge_range_costs_only_the_taken():
    taken = range(1, 1 << 20, 2)  # every odd number of a /12's worth
    assert free_number(1, 1 << 20, taken, random.Random(1)) % 2 == 0


SR = ServiceRange(N("10.96.0.0/29"), 30000, 30002)


def test_allocate_fills_cluster_ip_and_node_ports():
    existing = [svc("a", "10.96.0.1", (ServicePort(80, 80, "TCP", 30000),))]
    s = allocate(svc(ip=None, ports=(ServicePort(80, 80, "TCP", 0), ServicePort(53, 53, "UDP", 0),
                                     ServicePort(81, 81))), existing, SR, random.Random(3))
    assert s.cluster_ip in {A(f"10.96.0.{i}") for i in range(2, 7)}
    assert s.ports[0].node_port in (30001, 30002)
    assert s.ports[1].node_port in (30000, 30001, 30002)  # UDP ports are another space
    assert s.ports[2].node_port is None
    s.encode()  # fully allocated


@pytest.mark.parametrize("request_, existing, error, message", [
    (svc(ip="10.96.0.7"), [], ServiceError, "service web: ClusterIP 10.96.0.7 is not a host address of "
                                            "ServiceNetwork 10.96.0.0/29"),
    (svc(ip="10.96.0.1"), [svc("a", "10.96.0.1")], ServiceError, "ClusterIP 10.96.0.1 is taken by service a"),
    (svc(ip=None, ports=(ServicePort(80, 80, "TCP", 31000),)), [], ServiceError,
     "service web: nodePort 31000 is outside NodePortRange 30000-30002"),
    (svc(ip=None, ports=(ServicePort(80, 80, "TCP", 30000),)), [svc("a", "10.96.0.2", (ServicePort(1, 1, "TCP", 30000),))],
     ServiceError, "nodePort 30000/tcp is taken"),
    (svc(ip=None), [svc(chr(97 + i), f"10.96.0.{i + 1}") for i in range(6)], ServiceRangeFull,
     "ServiceNetwork 10.96.0.0/29 is full"),
    (svc(ip=None, ports=(ServicePort(80, 80, "UDP", 0),)),
     [svc(chr(97 + i), f"10.96.0.{i + 1}", (ServicePort(1, 1, "UDP", 30000 + i),)) for i in range(3)],
     ServiceRangeFull, "NodePortRange 30000-30002 is full for UDP"),
])
def test_allocation_refusals(request_, existing, error, message):
    with pytest.raises(error) as err:
        allocate(request_, existing, SR, random.Random(0))
    assert str(err.value).startswith(message), str(err.value)
