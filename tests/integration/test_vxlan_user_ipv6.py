"""Userspace VXLAN with IPv6 inner frames (issue 17 point 3): node A runs the userspace VXLAN backend
(tap overlay0, the Python data plane and the C engine) on a dual-stack network; node B is a hand-built kernel VXLAN
peer over the same IPv4 underlay (flannel's layout, made with iproute2 alone) carrying both families.
Pings cross in both families through the real tap, with no NDP and no neighbour entry on A (the NOARP
tap addresses IPv6 frames to its own MAC, as IPv4 ones); a spoofed IPv6 source from B is refused."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import textwrap

import pytest

from overlayd.backend.vxlan import vtep_mac
from overlayd.dataplane import fast

from .test_hostgw_ipv6 import BACKEND_PRELUDE
from .vethpair import ip, veth_pair

pytestmark = pytest.mark.root

PEER_MAC = "0e:00:00:00:04:12"
OWN_MAC = {"4": vtep_mac(ipaddress.IPv4Address("198.18.0.11"), 1),
           "6": vtep_mac(ipaddress.IPv6Address("2001:db8::11"), 1)}

SCRIPT = BACKEND_PRELUDE + textwrap.dedent(f'''
    import sys
    from overlayd.backend.vxlan_user import UserVxlanBackend

    version = sys.argv[2]  # the underlay's: one family per node, IPv6 when it has no PublicIP
    ip4 = {{"4": lambda n: ipaddress.IPv4Address(f"198.18.0.{{n}}"), "6": lambda n: None}}[version]
    ip6 = {{"4": lambda n: None, "6": lambda n: ipaddress.IPv6Address(f"2001:db8::{{n}}")}}[version]

    async def ping(*argv):
        proc = await asyncio.create_subprocess_exec("ping", "-c1", "-w5", *argv, stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL)
        return await proc.wait()

    async def main():
        config, _ = dual_stack({{"Type": "vxlan"}})
        underlay = Underlay("eth0", ip4(11), 1500, public_ip6=ip6(11))
        backend = UserVxlanBackend(config, underlay, NodeOptions(vxlan_impl="user", datapath=sys.argv[1]))
        await backend.preflight()
        await backend.setup(Lease(ipaddress.IPv4Network("10.244.3.0/24"), backend.lease_attrs(),
                                  subnet6=ipaddress.IPv6Network("fd00:10:244:3::/64")))
        peer = Lease(ipaddress.IPv4Network("10.244.7.0/24"),
                     LeaseAttrs(ip4(12), "vxlan", {{"VNI": 1, "VtepMAC": "{PEER_MAC}"}}, public_ip6=ip6(12)),
                     subnet6=ipaddress.IPv6Network("fd00:10:244:7::/64"))
        await backend.apply(Batch(added=[peer]))
        seen = {{"device": json.loads(sh("ip", "-j", "addr", "show", "overlay0"))[0],
                 "routes6": sh("ip", "-6", "route", "show", "dev", "overlay0")}}
        run = asyncio.create_task(backend.run())
        seen["ping6"] = await ping("-6", "-I", "fd00:10:244:3::", "fd00:10:244:7::")
        seen["ping4"] = await ping("-4", "-I", "10.244.3.0", "10.244.7.0")
        seen["ping6_nobody"] = await ping("-6", "-w1", "-I", "fd00:10:244:3::", "fd00:10:244:9::1")
        seen["neigh6"] = sh("ip", "-6", "neigh", "show", "dev", "overlay0", "nud", "all")
        await finish(backend, run, seen)

    asyncio.run(main())
''')


@pytest.fixture(params=["4", "6"])
def two_nodes(request):
    """Namespaces A (overlayd's node) and B (a kernel VXLAN peer carrying both families), over an IPv4
    or an IPv6 underlay (the fixture's param)."""
    version = request.param
    under = {"4": ("198.18.0.11", "198.18.0.12"), "6": ("2001:db8::11", "2001:db8::12")}[version]
    with veth_pair("vu6") as (a, b):
        ip("-n", b, "link", "add", "flannel.1", "address", PEER_MAC, "type", "vxlan", "id", "1",
           "local", under[1], "dev", "eth0", "dstport", "8472", "nolearning")
        ip("-n", b, "addr", "add", "10.244.7.0/32", "dev", "flannel.1")
        ip("-n", b, "addr", "add", "fd00:10:244:7::/128", "dev", "flannel.1", "nodad")
        ip("-n", b, "link", "set", "flannel.1", "up")
        for own in ("10.244.3.0", "fd00:10:244:3::"):
            ip("-n", b, "neigh", "add", own, "lladdr", OWN_MAC[version], "dev", "flannel.1", "nud", "permanent")
        subprocess.run(["bridge", "-n", b, "fdb", "append", OWN_MAC[version], "dev", "flannel.1", "dst", under[0]],
                       check=True)
        ip("-n", b, "route", "add", "10.244.3.0/24", "via", "10.244.3.0", "dev", "flannel.1", "onlink")
        ip("-n", b, "route", "add", "fd00:10:244:3::/64", "via", "fd00:10:244:3::", "dev", "flannel.1", "onlink")
        yield a, version


@pytest.mark.parametrize("datapath", ["python", "c"])
def test_ipv6_crosses_the_userspace_vxlan_tap_to_a_kernel_peer(two_nodes, datapath):
    if datapath == "c" and not fast.available():
        pytest.skip("the C fast path is not built")
    node, version = two_nodes
    res = subprocess.run(["ip", "netns", "exec", node, sys.executable, "-c", SCRIPT, datapath, version],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    seen = json.loads(res.stdout)
    addrs = {f"{a['local']}/{a['prefixlen']}" for a in seen["device"]["addr_info"]}
    assert {"10.244.3.0/32", "fd00:10:244:3::/128"} <= addrs
    assert seen["device"]["address"] == OWN_MAC[version] and "NOARP" in seen["device"]["flags"]
    assert "fd00:10:244::/56" in seen["routes6"]
    assert (seen["ping6"], seen["ping4"]) == (0, 0)
    assert seen["ping6_nobody"] != 0
    stats = seen["stats"]
    assert stats["tx_packets"] >= 2 and stats["dev_tx_packets"] >= 2
    assert stats.get("drop_no_lease", 0) >= 1  # fd00:10:244:9::1: nobody's
    # no neighbour discovery for peers: the NOARP tap resolves them to its own MAC, as for IPv4
    assert f"fd00:10:244:7:: lladdr {OWN_MAC[version]} NOARP" in seen["neigh6"]
    assert "INCOMPLETE" not in seen["neigh6"] and "FAILED" not in seen["neigh6"]
