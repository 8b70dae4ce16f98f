"""The services' nft table in the kernel (issue 22), in throwaway network namespaces.

1. Conformance: the kernel takes every rendered ruleset and every incremental script, and
   lists back exactly what was rendered (a random walk through service/endpoint states).
2. Traffic: a small two-node topology (bridge + pods per node, host-gw routes over an
   underlay, an external host), tables applied by :class:`KernelTable`; real TCP and UDP
   through ClusterIPs and NodePorts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

pytestmark = pytest.mark.root

PY = sys.executable


def sh(*argv: str, check: bool = True) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30).stdout


def in_netns(ns: str, script: str, timeout: float = 60) -> dict:
    """Run a Python ``script`` in ``ns``; what it printed last, as JSON."""
    out = subprocess.run(["ip", "netns", "exec", ns, PY, "-c", script], capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def namespaces(prefix: str):
    """``make(name)`` -> a fresh namespace ``<prefix><tag>-<name>`` (lo up, forwarding on); all are
    deleted on exit, whatever happened."""
    made = []
    tag = uuid.uuid4().hex[:6]

    def make(name: str) -> str:
        ns = f"{prefix}{tag}-{name}"
        sh("ip", "netns", "add", ns)
        made.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        return ns
    try:
        yield make
    finally:
        for ns in reversed(made):
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def netns():
    """``make(name)`` -> a fresh namespace, deleted at the end (:func:`namespaces`)."""
    with namespaces("sv") as make:
        yield make


CONFORMANCE = textwrap.dedent('''
    import ipaddress, json, random, subprocess
    from overlayd.service.model import Endpoint, Service, ServicePort
    from overlayd.service.proxy import KernelTable
    from overlayd.service.render import NodeView, parse_listing, render, same, FAMILY, TABLE
    from overlayd.plumbing import nft

    A, N = ipaddress.IPv4Address, ipaddress.IPv4Network
    here, there = N("10.244.1.0/24"), N("10.244.2.0/24")
    rng = random.Random(SEED)

    def state():
        services, endpoints = [], []
        for i in range(rng.randrange(0, 6)):
            ports = [ServicePort(80 + j, 8080 + j, rng.choice(["TCP", "UDP"]),
                                 30000 + 10 * i + j if rng.random() < 0.5 else None) for j in range(rng.randrange(1, 3))]
            local = rng.random() < 0.3 and any(p.node_port for p in ports)
            services.append(Service(f"s{i}", A(f"10.96.0.{i + 1}"), tuple(ports),
                                    "Local" if local else "Cluster",
                                    rng.choice(["None", "ClientIP"]), rng.choice([10, 10800, 86400])))
            for k in range(rng.randrange(0, 4)):
                node = rng.choice([here, there])
                endpoints.append(Endpoint(f"s{i}", node, node.network_address + 5 + k, None, rng.random() < 0.8))
        addresses = tuple(A(a) for a in rng.sample(["198.18.0.11", "198.18.0.21", "192.0.2.11"], rng.randrange(0, 3)))
        return render(services, endpoints, NodeView(N("10.244.0.0/16"), here, addresses))

    kernel, seen = KernelTable(), []
    for step in range(STEPS):
        want = state()
        done = kernel.apply(want)
        live = parse_listing(nft.list_table(FAMILY, TABLE))
        seen.append([done, same(live, want)])
    # drift: a flushed chain and a deleted table are put back, a clean table is left alone
    assert kernel.repair() is None
    subprocess.run(["nft", "flush", "chain", FAMILY, TABLE, "services"], check=True)
    flushed = kernel.repair()
    subprocess.run(["nft", "delete", "table", FAMILY, TABLE], check=True)
    missing = kernel.repair()
    final = same(parse_listing(nft.list_table(FAMILY, TABLE)), kernel.applied)
    kernel.remove()
    print(json.dumps({"seen": seen, "flushed": flushed, "missing": missing, "final": final,
                      "gone": nft.list_table(FAMILY, TABLE) is None}))
''')


@pytest.mark.parametrize("seed", [1, 2])
def test_kernel_lists_back_every_rendered_ruleset(netns, seed):
    result = in_netns(netns("conf"), CONFORMANCE.replace("SEED", str(seed)).replace("STEPS", "25"))
    assert result["seen"][0] == ["created", True]
    assert all(ok for _, ok in result["seen"]), result["seen"]
    assert {"updated"} <= {done for done, _ in result["seen"]}  # most steps are incremental
    assert result["flushed"] == "nft table ip overlayd-svc was different"
    assert result["missing"] == "nft table ip overlayd-svc was missing"
    assert result["final"] and result["gone"]


# --- traffic ------------------------------------------------------------------------------

PEER = os.path.join(os.path.dirname(__file__), "svcpeer.py")
P = "/t"
# node -> (underlay address, pod subnet); pods: name -> (node, address)
NODES = {"n1": ("198.18.0.11", "10.244.1"), "n2": ("198.18.0.12", "10.244.2")}
PODS = {"a1": ("n1", "10.244.1.5"), "a2": ("n1", "10.244.1.6"), "b1": ("n2", "10.244.2.5")}
EXT = "198.18.0.1"
VIP = "10.96.0.10"


class Topology:
    """Two nodes (cni0 bridge, pods, host-gw routes to each other) and an external host on an
    underlay bridge; a server in every pod (:mod:`svcpeer`)."""

    def __init__(self, make):
        self.ns = {name: make(name) for name in ("ul", *NODES, "ext", *PODS)}
        self.servers: list[subprocess.Popen] = []
        ul = self.ns["ul"]
        sh("ip", "-n", ul, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", ul, "link", "set", "br0", "up")
        for name, address in [*((n, a) for n, (a, _) in NODES.items()), ("ext", EXT)]:
            self._veth(self.ns[name], "eth0", f"{address}/24", ul, f"u-{name}", "br0")
        for name, (address, subnet) in NODES.items():
            ns = self.ns[name]
            for key in ("all", "default"):
                sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0")
            sh("ip", "-n", ns, "link", "add", "cni0", "type", "bridge")
            sh("ip", "-n", ns, "addr", "add", f"{subnet}.1/24", "dev", "cni0")
            sh("ip", "-n", ns, "link", "set", "cni0", "up")
            other_address, other_subnet = next(v for k, v in NODES.items() if k != name)
            sh("ip", "-n", ns, "route", "add", f"{other_subnet}.0/24", "via", other_address)
            # the node's own connections to a ClusterIP need a route before the output hook
            # DNATs them: any will do, as on real nodes (no ClusterIP is ever routed there)
            sh("ip", "-n", ns, "route", "add", "default", "via", EXT)
        for pod, (node, address) in PODS.items():
            self._veth(self.ns[pod], "eth0", f"{address}/24", self.ns[node], f"v-{pod}", "cni0")
            # hairpin: br_netfilter bridges a DNATed packet back out of the port it came in by
            # (the CNI bridge plugin's hairpinMode, which overlayd's CNI sets)
            sh("ip", "-n", self.ns[node], "link", "set", f"v-{pod}", "type", "bridge_slave", "hairpin", "on")
            sh("ip", "-n", self.ns[pod], "route", "add", "default", "via", address.rsplit(".", 1)[0] + ".1")
            self.servers.append(self._serve(pod))

    @staticmethod
    def _veth(ns, name, address, peer_ns, peer, bridge):
        sh("ip", "link", "add", peer, "netns", peer_ns, "type", "veth", "peer", "name", name, "netns", ns)
        sh("ip", "-n", ns, "addr", "add", address, "dev", name)
        sh("ip", "-n", ns, "link", "set", name, "up")
        sh("ip", "-n", peer_ns, "link", "set", peer, "master", bridge, "up")

    def _serve(self, pod):
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns[pod], PY, PEER, "serve", pod],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "listening"
        return proc

    def close(self):
        for proc in self.servers:  # only what we started, by PID
            proc.kill()
            proc.wait(10)

    def program(self, node: str, services: list, endpoints: list) -> None:
        """Apply the table for ``services`` and ``endpoints`` (model objects) on ``node``."""
        from overlayd.service.model import endpoint_key, service_key
        state = [[service_key(P, s.name), s.encode().decode()] for s in services]
        state += [[endpoint_key(P, e), e.encode().decode()] for e in endpoints]
        address, subnet = NODES[node]
        in_netns(self.ns[node], textwrap.dedent(f'''
            import ipaddress, json
            from overlayd.service.model import decode
            from overlayd.service.proxy import KernelTable
            from overlayd.service.render import NodeView, render
            values = [decode("{P}", k, v.encode(), 1).value for k, v in {state!r}]
            node = NodeView(ipaddress.IPv4Network("10.244.0.0/16"), ipaddress.IPv4Network("{subnet}.0/24"),
                            (ipaddress.IPv4Address("{address}"),))
            KernelTable().apply(render([v for v in values if hasattr(v, "cluster_ip")],
                                       [v for v in values if hasattr(v, "node")], node))
            print("{{}}")
        '''))

    def ask(self, where: str, proto: str, host: str, port: int, count: int) -> list:
        out = sh("ip", "netns", "exec", self.ns[where], PY, PEER, proto, host, str(port), str(count))
        return json.loads(out)


@pytest.fixture(scope="module")
def topo():
    with namespaces("st") as make:
        topology = None
        try:
            topology = Topology(make)
            yield topology
        finally:
            if topology is not None:
                topology.close()


def _model():
    import ipaddress as ip
    from overlayd.service.model import Endpoint, Service, ServicePort
    return ip.IPv4Address, ip.IPv4Network, Endpoint, Service, ServicePort


def endpoints(*pods, ready=True):
    A, N, Endpoint, _, _ = _model()
    return [Endpoint("web", N(NODES[PODS[p][0]][1] + ".0/24"), A(PODS[p][1]), None, ready) for p in pods]


def web(node_port=None, **kw):
    A, _, _, Service, ServicePort = _model()
    return Service("web", A(VIP), (ServicePort(80, 8080, "TCP", node_port), ServicePort(53, 5353, "UDP")), **kw)


def program_all(topo, services, eps):
    for node in NODES:
        topo.program(node, services, eps)


def names(answers):
    return {a.split()[0] for a, _ in answers}


def test_cluster_ip_reaches_both_endpoints_over_tcp_and_udp(topo):
    program_all(topo, [web()], endpoints("a1", "b1"))
    tcp = topo.ask("a2", "tcp", VIP, 80, 30)
    assert names(tcp) == {"a1", "b1"}, tcp
    assert {a for a, _ in tcp} == {"a1 10.244.1.6", "b1 10.244.1.6"}  # a pod client keeps its address
    udp = topo.ask("a2", "udp", VIP, 53, 30)
    assert names(udp) == {"a1", "b1"}, udp
    from_host = topo.ask("n2", "tcp", VIP, 80, 20)  # the node itself: masqueraded to reach a remote pod
    assert names(from_host) == {"a1", "b1"}, from_host


def test_hairpin(topo):
    program_all(topo, [web()], endpoints("a1"))
    answers = topo.ask("a1", "tcp", VIP, 80, 5)  # a pod reaching itself through its service
    assert {a for a, _ in answers} == {"a1 10.244.1.1"}, answers  # masqueraded to cni0's address


@pytest.mark.parametrize("policy", ["Cluster", "Local"])
def test_node_port(topo, policy):
    program_all(topo, [web(node_port=30080, external_traffic_policy=policy)], endpoints("a1", "b1"))
    at_n1 = topo.ask("ext", "tcp", NODES["n1"][0], 30080, 30)
    at_n2 = topo.ask("ext", "tcp", NODES["n2"][0], 30080, 30)
    if policy == "Cluster":  # both endpoints, masqueraded (the answer must come back this way)
        assert names(at_n1) == names(at_n2) == {"a1", "b1"}, (at_n1, at_n2)
        assert "b1 198.18.0.11" in {a for a, _ in at_n1}
    else:  # this node's endpoint only, and it sees the client's own address
        assert {a for a, _ in at_n1} == {"a1 198.18.0.1"}, at_n1
        assert {a for a, _ in at_n2} == {"b1 198.18.0.1"}, at_n2


def test_local_policy_without_a_local_endpoint_drops(topo):
    program_all(topo, [web(node_port=30080, external_traffic_policy="Local")], endpoints("b1"))
    assert topo.ask("ext", "tcp", NODES["n1"][0], 30080, 1)[0][0] == "timeout"
    assert names(topo.ask("a2", "tcp", NODES["n1"][0], 30080, 10)) == {"b1"}  # a pod of the node: any endpoint


def test_a_not_ready_endpoint_keeps_its_connections_and_gets_no_new_ones(topo):
    program_all(topo, [web()], endpoints("a1", "b1"))
    held = None
    for _ in range(30):  # a connection that landed on b1
        proc = subprocess.Popen(["ip", "netns", "exec", topo.ns["a2"], PY, PEER, "hold", VIP, "80"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        proc.stdin.write("?\n")
        proc.stdin.flush()
        if proc.stdout.readline().startswith("b1"):
            held = proc
            break
        proc.kill()
        proc.wait(10)
    assert held is not None, "no connection landed on b1 in 30 tries"
    try:
        program_all(topo, [web()], endpoints("a1") + endpoints("b1", ready=False))
        assert names(topo.ask("a2", "tcp", VIP, 80, 30)) == {"a1"}
        held.stdin.write("?\n")
        held.stdin.flush()
        assert held.stdout.readline().startswith("b1 ")  # the established connection is left alone
    finally:
        held.kill()
        held.wait(10)


def test_no_ready_endpoint_is_refused_at_once(topo):
    program_all(topo, [web(node_port=30080)], endpoints("a1", "b1", ready=False))
    for where, host, port in (("a2", VIP, 80), ("ext", NODES["n1"][0], 30080), ("n1", VIP, 80)):
        (answer, took), = topo.ask(where, "tcp", host, port, 1)
        assert answer == "refused" and took < 0.5, (where, answer, took)


def test_client_ip_affinity(topo):
    program_all(topo, [web(session_affinity="ClientIP")], endpoints("a1", "b1"))
    first = names(topo.ask("a2", "tcp", VIP, 80, 20))
    second = names(topo.ask("n1", "tcp", VIP, 80, 20))
    assert len(first) == 1 and len(second) == 1, (first, second)
    program_all(topo, [web()], endpoints("a1", "b1"))  # without affinity: both again
    assert names(topo.ask("a2", "tcp", VIP, 80, 30)) == {"a1", "b1"}
