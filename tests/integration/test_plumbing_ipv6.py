"""IPv6 node plumbing (issue 17) in a throwaway network namespace: cni0's IPv6 gateway beside
its IPv4 one, IPv6 routes (overlay, per peer, the guard), each ensure_* idempotent, writing
nothing over right state and repairing drift. The checks run inside the namespace and report
what they saw."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid

import pytest

from .test_plumbing import PRELUDE, netns, run_script  # noqa: F401 (netns: a fixture)

pytestmark = pytest.mark.root

SCRIPT = PRELUDE + textwrap.dedent('''
    async def main():
        seen = {}
        net6 = ipaddress.IPv6Network("fd00:10:244::/56")
        gw4 = ipaddress.IPv4Interface("10.244.3.1/24")
        gw6 = ipaddress.IPv6Interface("fd00:10:244:3::1/64")
        veth("eth0", "2001:db8::11/64")
        veth("ov0")
        peer = ipaddress.IPv6Network("fd00:10:244:7::/64")
        async def ensure_all(nl):
            await nl.ensure_bridge("cni0", mtu=1450)
            await nl.ensure_address("cni0", gw4)
            await nl.ensure_address("cni0", gw6)
            await nl.ensure_route(net6, "ov0")
            await guard.ensure(nl, net6)
            state = await nl.device_state("eth0", peers=False)
            await nl.ensure_route(peer, "eth0", gateway=ipaddress.IPv6Address("2001:db8::17"), state=state)
            return nl.changes
        async with Netlink() as nl:
            seen["first"] = await ensure_all(nl)
        async with Netlink() as nl:
            seen["again"] = await ensure_all(nl)
        seen["cni0"] = json.loads(sh("ip", "-j", "addr", "show", "cni0"))[0]["addr_info"]
        seen["routes"] = sh("ip", "-6", "route", "show", "table", "main")
        seen["guard"] = sh("ip", "-6", "route", "show", str(net6), "metric", "4294967295")

        sh("ip", "addr", "del", str(gw6), "dev", "cni0")                 # drift...
        sh("ip", "addr", "add", "fd00:10:244:9::1/64", "dev", "cni0")
        sh("ip", "route", "del", str(net6), "dev", "ov0")
        sh("ip", "route", "del", str(peer))
        sh("ip", "route", "del", "unreachable", str(net6), "metric", "4294967295")
        async with Netlink() as nl:
            seen["repaired"] = await ensure_all(nl)
        async with Netlink() as nl:
            seen["after_repair"] = await ensure_all(nl)
        seen["cni0_after"] = json.loads(sh("ip", "-j", "addr", "show", "cni0"))[0]["addr_info"]
        async with Netlink() as nl:
            for _ in range(2):
                await guard.remove(nl, net6)
        seen["guard_removed"] = sh("ip", "-6", "route", "show", str(net6), "metric", "4294967295")
        print(json.dumps(seen))

    asyncio.run(main())
''')


def addresses(addr_info: list[dict]) -> set[str]:
    return {f"{a['local']}/{a['prefixlen']}" for a in addr_info if not a["local"].startswith("fe80:")}


def test_ipv6_plumbing_is_idempotent_and_repairs_drift(netns):
    seen = run_script(netns, SCRIPT)
    ipv6_missing = ["address fd00:10:244:3::1/64 on cni0 was missing",
                    "route fd00:10:244::/56 dev ov0 was missing",
                    "route unreachable fd00:10:244::/56 metric 4294967295 was missing",
                    "route fd00:10:244:7::/64 via 2001:db8::17 dev eth0 was missing"]
    assert sorted(seen["first"]) == sorted(["bridge cni0 was missing", "cni0 was down",
                                            "address 10.244.3.1/24 on cni0 was missing", *ipv6_missing])
    assert seen["again"] == []
    assert addresses(seen["cni0"]) == {"10.244.3.1/24", "fd00:10:244:3::1/64"}
    # the gateway is usable at once: no duplicate address detection on our own lease's address
    assert not [a for a in seen["cni0"] if a.get("tentative") and not a["local"].startswith("fe80:")]
    assert "fd00:10:244::/56 dev ov0" in seen["routes"]
    assert "fd00:10:244:7::/64 via 2001:db8::17 dev eth0" in seen["routes"]
    assert seen["guard"].startswith("unreachable fd00:10:244::/56")
    assert sorted(seen["repaired"]) == sorted(["address fd00:10:244:9::1/64 on cni0 was extra (removed)",
                                               *ipv6_missing])
    assert seen["after_repair"] == []
    assert addresses(seen["cni0_after"]) == {"10.244.3.1/24", "fd00:10:244:3::1/64"}
    assert [a for a in seen["cni0_after"] if a["local"].startswith("fe80:")], "the link-local address stays"
    assert seen["guard_removed"] == ""


SYSCTL_SCRIPT = PRELUDE + textwrap.dedent('''
    def read(path):
        return open("/proc/sys/net/" + path).read().strip()

    veth("eth0")      # a SLAAC underlay: accept_ra 1
    veth("eth1")      # an operator's static one: accept_ra 0, left alone
    sh("sysctl", "-qw", "net.ipv6.conf.eth0.accept_ra=1", "net.ipv6.conf.eth1.accept_ra=0")
    journal = os.path.join(tempfile.mkdtemp(), "sysctl-journal.json")
    watched = ("ipv4/ip_forward", "ipv6/conf/all/forwarding", "ipv6/conf/eth0/accept_ra")
    seen = {"before": [read(p) for p in watched]}
    sysctl.enable_forwarding(journal, families=(6,), underlay="eth0")
    seen["ipv6_only"] = [read(p) for p in watched]
    sysctl.enable_forwarding(journal, families=(4, 6), underlay="eth0")
    sysctl.enable_forwarding(journal, families=(4, 6), underlay="eth1")
    seen["dual"] = [read(p) for p in watched] + [read("ipv6/conf/eth1/accept_ra")]
    seen["journal"] = json.load(open(journal))
    seen["restored"] = sorted(sysctl.restore(journal))
    seen["after"] = [read(p) for p in watched]
    print(json.dumps(seen))
''')


def test_ipv6_forwarding_keeps_the_underlay_accepting_router_advertisements(netns):
    seen = run_script(netns, SYSCTL_SCRIPT)
    assert seen["before"] == ["0", "0", "1"]
    assert seen["ipv6_only"] == ["0", "1", "2"]  # accept_ra raised before forwarding went on
    assert seen["dual"] == ["1", "1", "2", "0"]
    assert seen["journal"] == {"/proc/sys/net/ipv4/ip_forward": "0", "/proc/sys/net/ipv6/conf/all/forwarding": "0",
                               "/proc/sys/net/ipv6/conf/eth0/accept_ra": "1"}
    assert seen["restored"] == ["/proc/sys/net/ipv4/ip_forward=0", "/proc/sys/net/ipv6/conf/all/forwarding=0",
                                "/proc/sys/net/ipv6/conf/eth0/accept_ra=1"]
    assert seen["after"] == seen["before"]


NFT_SCRIPT = PRELUDE + textwrap.dedent('''
    net, subnet = ipaddress.IPv4Network("10.244.0.0/16"), ipaddress.IPv4Network("10.244.3.0/24")
    net6, subnet6 = ipaddress.IPv6Network("fd00:10:244::/56"), ipaddress.IPv6Network("fd00:10:244:3::/64")
    seen = {"first": [nft.ensure(net, subnet, True), nft.ensure(net6, subnet6, True)]}
    seen["again"] = [nft.ensure(net, subnet, True), nft.ensure(net6, subnet6, True)]
    seen["table6"] = sh("nft", "list", "table", "ip6", "overlayd")
    sh("nft", "flush", "chain", "ip6", "overlayd", "postrouting")
    seen["repaired"] = [nft.ensure(net, subnet, True), nft.ensure(net6, subnet6, True)]
    seen["absent"] = [nft.ensure_absent(6), nft.ensure_absent(6)]  # IPv6 turned off: its table goes, once
    seen["tables_then"] = sh("nft", "list", "tables")
    nft.remove()
    nft.remove()
    seen["after_remove"] = sh("nft", "list", "tables")
    print(json.dumps(seen))
''')


def test_ipv6_firewall_rules_are_resynced_like_the_ipv4_ones(netns):
    seen = run_script(netns, NFT_SCRIPT)
    assert seen["first"] == ["nft table ip overlayd was missing", "nft table ip6 overlayd was missing"]
    assert seen["again"] == [None, None]  # nft prints the IPv6 table back as we wrote it
    table6 = seen["table6"]
    for rule in ("ip6 saddr fd00:10:244::/56 accept", "ip6 daddr fd00:10:244::/56 accept",
                 "ip6 saddr fd00:10:244::/56 ip6 daddr ff00::/8 return",
                 "ip6 saddr fd00:10:244::/56 ip6 daddr != fd00:10:244::/56 masquerade fully-random",
                 "ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244:3::/64 return"):
        assert rule in table6
    assert "10.244." not in table6
    assert seen["repaired"] == [None, "nft table ip6 overlayd was different"]
    assert seen["absent"] == ["nft table ip6 overlayd was extra (removed)", None]
    assert seen["tables_then"].split() == ["table", "ip", "overlayd"]
    assert "overlayd" not in seen["after_remove"]


#: in the node's namespace: IPv6 forwarding and our two tables, as a node with IPv6 pods has them
EGRESS_NODE_SCRIPT = PRELUDE + textwrap.dedent('''
    masquerade = MASQUERADE
    sysctl.enable_forwarding(None, families=(4, 6), underlay="eth0")
    for network, subnet in (("10.244.0.0/16", "10.244.3.0/24"), ("fd00:10:244::/56", "fd00:10:244:3::/64")):
        nft.ensure(ipaddress.ip_network(network), ipaddress.ip_network(subnet), masquerade)
    print(json.dumps(sh("nft", "list", "table", "ip6", "overlayd")))
''')

#: in the world's namespace: note the source address of each datagram to UDP 9999 by the
#: destination it names, until both destinations were seen (at most 10 s)
RECEIVER = textwrap.dedent('''
    import json, socket
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind(("::", 9999))
    s.settimeout(10)
    print("ready", flush=True)
    seen = {}
    while len(seen) < 2:
        data, source = s.recvfrom(100)
        seen[data.decode()] = source[0]
    print(json.dumps(seen), flush=True)
''')

#: in the pod's namespace: a datagram to each destination (named in it) every 50 ms, for at most 10 s
SENDER = textwrap.dedent('''
    import socket, sys, time
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    for _ in range(200):
        for dst in sys.argv[1:]:
            s.sendto(dst.encode(), (dst, 9999))
        time.sleep(0.05)
''')

OUTSIDE, PEER_POD = "2001:db8::99", "fd00:10:244:7::2"


@pytest.fixture
def egress_lab():
    """Three namespaces: a pod (fd00:10:244:3::2, default route via cni0's gateway), the node
    (cni0 fd00:10:244:3::1/64, eth0 2001:db8::11/64) and the world on the node's eth0: an outside
    host (2001:db8::99, no route to the pods) that is also a host-gw style peer holding the pod
    address fd00:10:244:7::2 (its subnet routed via 2001:db8::99, with a route back)."""
    tag = uuid.uuid4().hex[:6]
    pod, node, world = (f"ovt-eg{role}-{tag}" for role in "pnw")
    made = []
    ip = lambda *argv: subprocess.run(["ip", *argv], check=True)  # noqa: E731
    try:
        for name in (pod, node, world):
            ip("netns", "add", name)
            made.append(name)
        ip("-n", node, "link", "add", "cni0", "type", "veth", "peer", "name", "eth0", "netns", pod)
        ip("-n", node, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", world)
        for name, dev, addresses in ((pod, "eth0", ["fd00:10:244:3::2/64"]),
                                     (node, "cni0", ["fd00:10:244:3::1/64"]),
                                     (node, "eth0", ["2001:db8::11/64"]),
                                     (world, "eth0", [f"{OUTSIDE}/64", f"{PEER_POD}/64"])):
            for address in addresses:
                ip("-n", name, "addr", "add", address, "dev", dev, "nodad")
            ip("-n", name, "link", "set", dev, "up")
        ip("-n", pod, "route", "add", "default", "via", "fd00:10:244:3::1")
        ip("-n", node, "route", "add", "fd00:10:244:7::/64", "via", OUTSIDE)
        ip("-n", world, "route", "add", "fd00:10:244:3::/64", "via", "2001:db8::11")
        yield pod, node, world
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False)


def sources(egress_lab) -> dict[str, str]:
    """The source address the world saw from the pod, by destination."""
    pod, _, world = egress_lab
    receiver = subprocess.Popen(["ip", "netns", "exec", world, sys.executable, "-c", RECEIVER],
                                stdout=subprocess.PIPE, text=True)
    sender = None
    try:
        assert receiver.stdout.readline() == "ready\n"
        sender = subprocess.Popen(["ip", "netns", "exec", pod, sys.executable, "-c", SENDER, OUTSIDE, PEER_POD])
        out, _ = receiver.communicate(timeout=15)
        assert receiver.returncode == 0, "the world did not hear from the pod at both addresses"
        return json.loads(out)
    finally:
        for process in (sender, receiver):
            if process is not None:
                process.kill()
                process.wait()


@pytest.mark.parametrize("masquerade", [True, False])
def test_pod_ipv6_egress_is_masqueraded_outside_the_network_only(egress_lab, masquerade):
    _, node, _ = egress_lab
    table6 = run_script(node, f"MASQUERADE = {masquerade}\n" + EGRESS_NODE_SCRIPT)
    assert ("masquerade" in table6) == masquerade
    seen = sources(egress_lab)
    # leaving the IPv6 Network the pod borrows the node's address (with IPMASQ); inside it, it keeps its own
    assert seen == {OUTSIDE: "2001:db8::11" if masquerade else "fd00:10:244:3::2", PEER_POD: "fd00:10:244:3::2"}
