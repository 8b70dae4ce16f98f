"""Which UDP flows a node cuts when its table stops using an endpoint (issue 22): vectors."""

import ipaddress

from overlayd.service.conntrack import Backend, stale, udp_backends
from overlayd.service.model import Endpoint, Service, ServicePort

A = ipaddress.IPv4Address
HERE = ipaddress.IPv4Network("10.244.1.0/24")
VIP = A("10.96.0.53")


def test_udp_backends_are_ready_endpoints_of_udp_ports_at_the_cluster_ip_and_node_port():
    dns = Service("dns", VIP, (ServicePort(53, 5353, "UDP", 30053), ServicePort(80, 8080)))
    web = Service("web", A("10.96.0.80"), (ServicePort(80, 8080),))
    one = Service("one", A("10.96.0.1"), (ServicePort(500, 500, "UDP"),))
    endpoints = [Endpoint("dns", HERE, A("10.244.1.5")), Endpoint("dns", HERE, A("10.244.1.6"), ready=False),
                 Endpoint("web", HERE, A("10.244.1.7")), Endpoint("one", HERE, A("10.244.1.8"), 4500),
                 Endpoint("gone", HERE, A("10.244.1.9"))]
    assert udp_backends([dns, web, one], endpoints) == {
        Backend(53, A("10.244.1.5"), 5353, VIP), Backend(30053, A("10.244.1.5"), 5353),
        Backend(500, A("10.244.1.8"), 4500, A("10.96.0.1"))}


def test_stale_is_what_the_table_stopped_using_in_order():
    a, b = Backend(53, A("10.244.1.5"), 5353, VIP), Backend(30053, A("10.244.1.5"), 5353)
    c = Backend(53, A("10.244.1.6"), 5353, VIP)
    assert stale(frozenset({b, a, c}), frozenset({c})) == [a, b]
    assert stale(frozenset(), frozenset({a})) == [] and stale(frozenset({a}), frozenset({a})) == []
    assert str(a) == "10.96.0.53:53 -> 10.244.1.5:5353" and str(b) == "NodePort:30053 -> 10.244.1.5:5353"
