"""The services renderer and its nft scripts (issue 22): vectors, no root."""

import ipaddress

import pytest

from overlayd.service.model import Endpoint, Service, ServicePort
from overlayd.service.render import (NodeView, full_script, nft_duration, parse_listing, render, same,
                                     table_text, update_script)

A = ipaddress.IPv4Address
N = ipaddress.IPv4Network
NET = N("10.244.0.0/16")
HERE, THERE = N("10.244.1.0/24"), N("10.244.2.0/24")
NODE = NodeView(NET, HERE, (A("198.18.0.11"),))
WEB = Service("web", A("10.96.0.10"), (ServicePort(80, 8080),))


def ep(ip, ready=True, port=None, service="web"):
    ip = A(ip)
    return Endpoint(service, HERE if ip in HERE else THERE, ip, port, ready)


def test_no_services_leaves_the_skeleton():
    rs = render([], [], NODE)
    assert rs.sets["node-addresses"].elements == {"198.18.0.11"}
    assert all(not rs.sets[m].elements for m in ("service-ips", "service-nodeports", "no-endpoints"))
    assert set(rs.chains) == {"prerouting", "output", "postrouting", "filter-input", "filter-forward",
                              "filter-output", "services", "mark-for-masquerade", "reject-chain"}
    assert rs.chains["services"] == (
        "ip daddr . meta l4proto . th dport vmap @service-ips",
        "ip daddr @node-addresses meta l4proto . th dport vmap @service-nodeports")


def test_cluster_ip_to_two_endpoints_at_random():
    rs = render([WEB], [ep("10.244.2.7"), ep("10.244.1.5")], NODE)
    assert rs.sets["service-ips"].elements == {"10.96.0.10 . tcp . 80 : goto svc-web-tcp-80"}
    assert rs.chains["svc-web-tcp-80"] == (
        "ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
        "numgen random mod 2 vmap { 0 : goto ep-web-tcp-80-10.244.1.5-8080, 1 : goto ep-web-tcp-80-10.244.2.7-8080 }")
    assert rs.chains["ep-web-tcp-80-10.244.1.5-8080"] == (
        "ip saddr 10.244.1.5 jump mark-for-masquerade",
        "meta l4proto tcp dnat to 10.244.1.5:8080")
    assert "ext-web-tcp-80" not in rs.chains


@pytest.mark.parametrize("endpoints, chosen", [
    ([ep("10.244.1.5", ready=False), ep("10.244.2.7")], ["10.244.2.7"]),
    ([ep("10.244.1.5"), ep("10.244.1.5")], ["10.244.1.5"]),  # the same endpoint twice is one
    ([ep("10.244.1.5", port=9090)], ["10.244.1.5-9090"]),  # its own port
    ([ep("10.244.1.5"), ep("10.244.1.6", service="other")], ["10.244.1.5"]),
])
def test_which_endpoints_are_chosen(endpoints, chosen):
    rs = render([WEB], endpoints, NODE)
    eps = sorted(name for name in rs.chains if name.startswith("ep-"))
    assert eps == [f"ep-web-tcp-80-{c if '-' in c else c + '-8080'}" for c in chosen]


def test_a_service_without_ready_endpoints_is_rejected():
    nodeport = Service("web", A("10.96.0.10"), (ServicePort(80, 8080, "TCP", 30080),))
    rs = render([nodeport], [ep("10.244.1.5", ready=False)], NODE)
    assert not rs.sets["service-ips"].elements and not rs.sets["service-nodeports"].elements
    assert rs.sets["no-endpoints"].elements == {"10.96.0.10 . tcp . 80 : goto reject-chain"}
    assert rs.sets["no-endpoint-nodeports"].elements == {"tcp . 30080 : goto reject-chain"}
    assert not [name for name in rs.chains if name.startswith(("svc-", "ep-", "ext-"))]


def test_node_port_with_cluster_policy_masquerades():
    svc = Service("web", A("10.96.0.10"), (ServicePort(80, 8080, "TCP", 30080),))
    rs = render([svc], [ep("10.244.2.7")], NODE)
    assert rs.sets["service-nodeports"].elements == {"tcp . 30080 : goto ext-web-tcp-80"}
    assert rs.chains["ext-web-tcp-80"] == ("jump mark-for-masquerade", "goto svc-web-tcp-80")


@pytest.mark.parametrize("endpoints, tail", [
    ([ep("10.244.1.5"), ep("10.244.2.7")], ("numgen random mod 1 vmap { 0 : goto ep-web-tcp-80-10.244.1.5-8080 }",)),
    ([ep("10.244.2.7")], ("drop",)),  # no endpoint here: external clients are dropped, as kube-proxy
])
def test_node_port_with_local_policy_keeps_to_this_node(endpoints, tail):
    svc = Service("web", A("10.96.0.10"), (ServicePort(80, 8080, "TCP", 30080),), external_traffic_policy="Local")
    rs = render([svc], endpoints, NODE)
    assert rs.chains["ext-web-tcp-80"] == ("ip saddr 10.244.0.0/16 goto svc-web-tcp-80", *tail)
    assert not any("mark-for-masquerade" in rule for rule in rs.chains["ext-web-tcp-80"])


def test_client_ip_affinity():
    svc = Service("web", A("10.96.0.10"), (ServicePort(80, 8080),), session_affinity="ClientIP",
                  affinity_timeout=600)
    rs = render([svc], [ep("10.244.1.5"), ep("10.244.2.7")], NODE)
    aff = rs.sets["aff-web-tcp-80-10.244.1.5-8080"]
    assert aff.dynamic and aff.decl == ("type ipv4_addr", "size 65535", "flags dynamic,timeout", "timeout 10m")
    assert rs.chains["svc-web-tcp-80"][1:3] == (
        "ip saddr @aff-web-tcp-80-10.244.1.5-8080 goto ep-web-tcp-80-10.244.1.5-8080",
        "ip saddr @aff-web-tcp-80-10.244.2.7-8080 goto ep-web-tcp-80-10.244.2.7-8080")
    assert rs.chains["ep-web-tcp-80-10.244.2.7-8080"][1] == "update @aff-web-tcp-80-10.244.2.7-8080 { ip saddr }"


def test_udp_port():
    dns = Service("dns", A("10.96.0.53"), (ServicePort(53, 5353, "UDP"),))
    rs = render([dns], [ep("10.244.1.5", service="dns")], NODE)
    assert rs.sets["service-ips"].elements == {"10.96.0.53 . udp . 53 : goto svc-dns-udp-53"}
    assert rs.chains["ep-dns-udp-53-10.244.1.5-5353"][-1] == "meta l4proto udp dnat to 10.244.1.5:5353"


@pytest.mark.parametrize("seconds, text", [(1, "1s"), (60, "1m"), (90, "1m30s"), (10800, "3h"),
                                           (86400, "1d"), (3661, "1h1m1s"), (90061, "1d1h1m1s")])
def test_nft_durations(seconds, text):
    assert nft_duration(seconds) == text


def test_unchanged_is_an_empty_script():
    rs = render([WEB], [ep("10.244.1.5")], NODE)
    assert update_script(rs, render([WEB], [ep("10.244.1.5")], NODE)) == ""


def test_a_new_endpoint_touches_only_its_service():
    other = Service("other", A("10.96.0.11"), (ServicePort(80, 80),))
    old = render([WEB, other], [ep("10.244.1.5"), ep("10.244.1.9", service="other")], NODE)
    new = render([WEB, other], [ep("10.244.1.5"), ep("10.244.2.7"), ep("10.244.1.9", service="other")], NODE)
    script = update_script(old, new).splitlines()
    assert script == [
        "add chain ip overlayd-svc ep-web-tcp-80-10.244.2.7-8080",
        "add rule ip overlayd-svc ep-web-tcp-80-10.244.2.7-8080 ip saddr 10.244.2.7 jump mark-for-masquerade",
        "add rule ip overlayd-svc ep-web-tcp-80-10.244.2.7-8080 meta l4proto tcp dnat to 10.244.2.7:8080",
        "flush chain ip overlayd-svc svc-web-tcp-80",
        "add rule ip overlayd-svc svc-web-tcp-80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
        "add rule ip overlayd-svc svc-web-tcp-80 numgen random mod 2 vmap { 0 : goto "
        "ep-web-tcp-80-10.244.1.5-8080, 1 : goto ep-web-tcp-80-10.244.2.7-8080 }",
    ]


def test_a_service_going_removes_its_element_before_its_chains():
    old = render([WEB], [ep("10.244.1.5")], NODE)
    new = render([], [], NODE)
    assert update_script(old, new).splitlines() == [
        "delete element ip overlayd-svc service-ips { 10.96.0.10 . tcp . 80 }",
        "flush chain ip overlayd-svc ep-web-tcp-80-10.244.1.5-8080",
        "flush chain ip overlayd-svc svc-web-tcp-80",
        "delete chain ip overlayd-svc ep-web-tcp-80-10.244.1.5-8080",
        "delete chain ip overlayd-svc svc-web-tcp-80",
    ]


def test_last_endpoint_going_not_ready_moves_the_service_to_reject():
    old = render([WEB], [ep("10.244.1.5")], NODE)
    new = render([WEB], [ep("10.244.1.5", ready=False)], NODE)
    script = update_script(old, new)
    assert "delete element ip overlayd-svc service-ips { 10.96.0.10 . tcp . 80 }" in script
    assert "add element ip overlayd-svc no-endpoints { 10.96.0.10 . tcp . 80 : goto reject-chain }" in script


def test_affinity_sets_come_and_go_with_their_endpoint():
    sticky = Service("web", A("10.96.0.10"), (ServicePort(80, 8080),), session_affinity="ClientIP")
    old = render([sticky], [ep("10.244.1.5")], NODE)
    new = render([sticky], [ep("10.244.1.5"), ep("10.244.2.7")], NODE)
    script = update_script(old, new)
    assert ("add set ip overlayd-svc aff-web-tcp-80-10.244.2.7-8080 { type ipv4_addr; size 65535; "
            "flags dynamic,timeout; timeout 3h; }") in script
    assert "aff-web-tcp-80-10.244.1.5-8080 {" not in script  # the live one keeps its clients
    back = update_script(new, old)
    assert back.splitlines()[-1] == "delete set ip overlayd-svc aff-web-tcp-80-10.244.2.7-8080"


def test_node_addresses_change_by_elements():
    old = render([], [], NODE)
    new = render([], [], NodeView(NET, HERE, (A("198.18.0.12"),)))
    assert update_script(old, new).splitlines() == [
        "delete element ip overlayd-svc node-addresses { 198.18.0.11 }",
        "add element ip overlayd-svc node-addresses { 198.18.0.12 }"]


def test_a_changed_base_chain_replaces_the_table():
    old = render([], [], NODE)
    new = render([], [], NODE)
    new.chains["prerouting"] = ("type nat hook prerouting priority dstnat; policy drop;", "jump services")
    assert update_script(old, new) == full_script(new)


# what nft 1.0.6 lists for a table like ours: tabs, wrapped elements, a dynamic set with entries
LISTING = """\
table ip overlayd-svc {
\tset node-addresses {
\t\ttype ipv4_addr
\t\telements = { 198.18.0.11 }
\t}

\tmap service-ips {
\t\ttype ipv4_addr . inet_proto . inet_service : verdict
\t\telements = { 10.96.0.11 . tcp . 80 : goto svc-b-tcp-80,
\t\t\t     10.96.0.10 . tcp . 80 : goto svc-a-tcp-80 }
\t}

\tset aff-a-tcp-80-10.244.1.5-80 {
\t\ttype ipv4_addr
\t\tsize 65535
\t\tflags dynamic,timeout
\t\ttimeout 3h
\t\telements = { 10.244.2.9 expires 2h59m58s }
\t}

\tchain prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tjump services
\t}
}
"""


def test_parse_listing():
    rs = parse_listing(LISTING)
    assert rs.sets["service-ips"].elements == {"10.96.0.11 . tcp . 80 : goto svc-b-tcp-80",
                                               "10.96.0.10 . tcp . 80 : goto svc-a-tcp-80"}
    assert rs.sets["aff-a-tcp-80-10.244.1.5-80"].dynamic
    assert not rs.sets["aff-a-tcp-80-10.244.1.5-80"].elements  # the packet path's, not compared
    assert rs.chains["prerouting"] == ("type nat hook prerouting priority dstnat; policy accept;", "jump services")


def test_our_own_text_parses_back_to_the_same_ruleset():
    sticky = Service("web", A("10.96.0.10"), (ServicePort(80, 8080, "TCP", 30080),), session_affinity="ClientIP",
                     external_traffic_policy="Local")
    rs = render([sticky, Service("dns", A("10.96.0.53"), (ServicePort(53, 53, "UDP"),))],
                [ep("10.244.1.5"), ep("10.244.2.7")], NODE)
    assert same(parse_listing(table_text(rs)), rs)
    assert not same(parse_listing(table_text(render([], [], NODE))), rs)
