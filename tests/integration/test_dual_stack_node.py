"""Two dual-stack nodes (kernel VXLAN, host-gw) built from the plumbing calls daemon.py makes, per
family (issue 17), in network namespaces: forwarding (IPv6 too, accept_ra=2 on the underlay), one
guard per Network, cni0 with both gateways, one nft table per family, the backend's devices and
the peer's entries or routes from its lease. A pod on each node (a veth on cni0) reaches the
other's pod in both families; over VXLAN an IPv6 packet above flannel-v6's MTU gets Packet Too Big
from the node (IPv6 path MTU discovery), after which a large IPv6 ping gets through. Until the daemon accepts
IPv6 configs, this is the end-to-end check of the kernel side."""

from __future__ import annotations

import secrets
import subprocess
import textwrap

import pytest

from .test_hostgw_ipv6 import BACKEND_PRELUDE
from .test_plumbing import run_script

pytestmark = pytest.mark.root

#: in a node's namespace, with N (its subnets' index and address suffix), PEER (the other's) and
#: BACKEND (the Backend.Type)
NODE_SCRIPT = BACKEND_PRELUDE + textwrap.dedent('''
    from overlayd.backend.hostgw import HostGwBackend
    from overlayd.backend.vxlan import KernelVxlanBackend

    def node(n):
        config, _ = dual_stack({"Type": BACKEND})
        underlay = Underlay("eth0", ipaddress.IPv4Address(f"198.18.0.{n}"), 1500,
                            public_ip6=ipaddress.IPv6Address(f"2001:db8::{n}"))
        kind = KernelVxlanBackend if BACKEND == "vxlan" else HostGwBackend
        backend = kind(config, underlay, NodeOptions(vxlan_impl="kernel"))
        lease = Lease(ipaddress.IPv4Network(f"10.244.{n}.0/24"), backend.lease_attrs(),
                      subnet6=ipaddress.IPv6Network(f"fd00:10:244:{n}::/64"))
        return config, backend, lease

    async def main():
        config, backend, lease = node(N)
        families = [(config.ipv4.network, lease.subnet), (config.ipv6.network, lease.subnet6)]
        sysctl.enable_forwarding(None, families=[network.version for network, _ in families], underlay="eth0")
        async with Netlink() as nl:
            await nl.ensure_bridge("cni0", mtu=backend.mtu)
            for network, subnet in families:
                await guard.ensure(nl, network)
                await nl.ensure_address("cni0", ipaddress.ip_interface(f"{subnet[1]}/{subnet.prefixlen}"))
                nft.ensure(network, subnet, True)
        await backend.setup(lease)
        await backend.apply(Batch(added=[node(PEER)[2]]))
        print(json.dumps({"mtu": backend.mtu, "peers": backend.peer_subnets(),
                          "accept_ra": open("/proc/sys/net/ipv6/conf/eth0/accept_ra").read().strip()}))

    asyncio.run(main())
''')


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True)


@pytest.fixture
def two_nodes():
    """Nodes 11 and 12 (namespaces joined by a veth pair, eth0 in both: 198.18.0.N, 2001:db8::N)
    and a pod namespace for each, its eth0 a veth whose other end is on the node's cni0-to-be."""
    tag = secrets.token_hex(3)
    names = {role: f"ovt-ds{role}-{tag}" for role in ("a", "b", "pa", "pb")}
    made = []
    try:
        for name in names.values():
            ip("netns", "add", name)
            made.append(name)
        ip("link", "add", "ovt-ds", "netns", names["a"], "type", "veth", "peer", "name", "ovt-dsp", "netns", names["b"])
        for side, link, n in (("a", "ovt-ds", 11), ("b", "ovt-dsp", 12)):
            ns = names[side]
            ip("-n", ns, "link", "set", link, "name", "eth0")
            ip("-n", ns, "addr", "add", f"198.18.0.{n}/24", "dev", "eth0")
            ip("-n", ns, "addr", "add", f"2001:db8::{n}/64", "dev", "eth0", "nodad")
            ip("-n", ns, "link", "set", "eth0", "up")
        yield names
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False)


def attach_pod(node: str, pod: str, n: int, mtu: int) -> None:
    """The pod's eth0 (10.244.N.2, fd00:10:244:N::2, default routes via cni0's gateways) on cni0."""
    ip("-n", node, "link", "add", "vethpod", "type", "veth", "peer", "name", "eth0", "netns", pod)
    ip("-n", node, "link", "set", "vethpod", "master", "cni0", "up")
    ip("-n", pod, "link", "set", "eth0", "mtu", str(mtu), "up")
    ip("-n", pod, "addr", "add", f"10.244.{n}.2/24", "dev", "eth0")
    ip("-n", pod, "addr", "add", f"fd00:10:244:{n}::2/64", "dev", "eth0", "nodad")
    ip("-n", pod, "route", "add", "default", "via", f"10.244.{n}.1")
    ip("-n", pod, "-6", "route", "add", "default", "via", f"fd00:10:244:{n}::1")


def ping(pod: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", pod, "ping", "-c3", "-i0.2", "-w10", *argv],
                          capture_output=True, text=True)


@pytest.mark.parametrize("backend, mtu", [("vxlan", 1450), ("host-gw", 1500)])
def test_dual_stack_pods_reach_each_other(two_nodes, backend, mtu):
    for side, n, peer in (("a", 11, 12), ("b", 12, 11)):
        seen = run_script(two_nodes[side], f"N, PEER, BACKEND = {n}, {peer}, {backend!r}\n" + NODE_SCRIPT)
        assert seen == {"mtu": mtu, "peers": [f"10.244.{peer}.0/24", f"fd00:10:244:{peer}::/64"], "accept_ra": "2"}
        attach_pod(two_nodes[side], two_nodes["p" + side], n, mtu)
    pod = two_nodes["pa"]
    for argv in (["10.244.12.2"], ["-6", "fd00:10:244:12::2"]):
        result = ping(pod, *argv)
        assert result.returncode == 0, result.stdout + result.stderr
    if backend == "vxlan":
        # 1400 bytes of payload: a 1448-byte IPv6 packet, above flannel-v6.1's 1430; the node answers
        # Packet Too Big from cni0's IPv6 gateway, and the pod sends the next ones in fragments
        first = ping(pod, "-6", "-s", "1400", "fd00:10:244:12::2")
        assert "From fd00:10:244:11::1 icmp_seq=1 Packet too big: mtu=1430" in first.stdout, first.stdout
        large = ping(pod, "-6", "-s", "1400", "fd00:10:244:12::2")
        assert large.returncode == 0, large.stdout + large.stderr
