"""Kernel VXLAN with IPv6 (issue 17): flannel's second device flannel-v6.<VNI> over the IPv6
underlay, its VtepMAC in BackendV6Data, per peer an IPv6 route, neighbour and FDB entry; a ping
over the tunnel to a hand-built kernel peer in a second namespace (flannel's layout, made with
iproute2 alone), drift repaired, everything gone with the peer and at teardown."""

from __future__ import annotations

import ipaddress
import subprocess
import textwrap

import pytest

from overlayd.backend.vxlan import vtep_mac

from .test_hostgw_ipv6 import BACKEND_PRELUDE
from .vethpair import ip, veth_pair
from .test_plumbing import netns, run_script  # noqa: F401 (netns: a fixture)

pytestmark = pytest.mark.root

PEER_MAC6 = "0e:00:00:00:06:12"
OWN_MAC6 = vtep_mac(ipaddress.IPv6Address("2001:db8::11"), 1)

SCRIPT = BACKEND_PRELUDE + textwrap.dedent(f'''
    from overlayd.backend.vxlan import KernelVxlanBackend

    def state():
        return {{"neigh": sh("ip", "-6", "neigh", "show", "dev", "flannel-v6.1", "nud", "permanent"),
                 "fdb": sh("bridge", "fdb", "show", "dev", "flannel-v6.1"),
                 "route": sh("ip", "-6", "route", "show", "fd00:10:244:7::/64")}}

    async def main():
        config, underlay = dual_stack({{"Type": "vxlan"}})
        backend = KernelVxlanBackend(config, underlay, NodeOptions(vxlan_impl="kernel"))
        seen = {{"attrs": json.loads(backend.lease_attrs().encode())}}
        await backend.setup(Lease(ipaddress.IPv4Network("10.244.3.0/24"), backend.lease_attrs(),
                                  subnet6=ipaddress.IPv6Network("fd00:10:244:3::/64")))
        peer = Lease(ipaddress.IPv4Network("10.244.7.0/24"),
                     LeaseAttrs(ipaddress.IPv4Address("198.18.0.12"), "vxlan", {{"VNI": 1, "VtepMAC": "0e:00:00:00:04:12"}},
                                public_ip6=ipaddress.IPv6Address("2001:db8::12"),
                                backend_v6_data={{"VNI": 1, "VtepMAC": "{PEER_MAC6}"}}),
                     subnet6=ipaddress.IPv6Network("fd00:10:244:7::/64"))
        await backend.apply(Batch(added=[peer]))
        seen["device"] = json.loads(sh("ip", "-d", "-j", "addr", "show", "flannel-v6.1"))[0]
        seen["peer"] = state()
        seen["peers"] = backend.peer_subnets()
        seen["ping"] = subprocess.run(["ping", "-6", "-c1", "-w5", "-I", "fd00:10:244:3::", "fd00:10:244:7::"],
                                      capture_output=True, text=True).returncode
        sh("ip", "-6", "neigh", "del", "fd00:10:244:7::", "dev", "flannel-v6.1")
        seen["repaired"] = await changes_of(backend.reconcile)
        seen["again"] = await changes_of(backend.reconcile)
        await backend.apply(Batch(removed=[peer]))
        seen["removed"] = state()
        await changes_of(backend.teardown)
        seen["links_after"] = sh("ip", "-br", "link")
        print(json.dumps(seen))

    asyncio.run(main())
''')


@pytest.fixture
def two_nodes():
    """Namespaces A (overlayd's node) and B (a hand-built kernel peer) joined by a veth pair, eth0 in both."""
    with veth_pair("vx6") as (a, b):
        # B: flannel's IPv6 device and A as its peer, by hand
        ip("-n", b, "link", "add", "flannel-v6.1", "address", PEER_MAC6, "type", "vxlan", "id", "1",
           "local", "2001:db8::12", "dev", "eth0", "dstport", "8472", "nolearning")
        ip("-n", b, "addr", "add", "fd00:10:244:7::/128", "dev", "flannel-v6.1", "nodad")
        ip("-n", b, "link", "set", "flannel-v6.1", "up")
        ip("-n", b, "neigh", "add", "fd00:10:244:3::", "lladdr", OWN_MAC6, "dev", "flannel-v6.1", "nud", "permanent")
        subprocess.run(["bridge", "-n", b, "fdb", "append", OWN_MAC6, "dev", "flannel-v6.1", "dst", "2001:db8::11"],
                       check=True)
        ip("-n", b, "route", "add", "fd00:10:244:3::/64", "via", "fd00:10:244:3::", "dev", "flannel-v6.1", "onlink")
        yield a


def test_kernel_vxlan_ipv6_device_reaches_a_flannel_peer(two_nodes):
    seen = run_script(two_nodes, SCRIPT)
    assert seen["attrs"]["PublicIPv6"] == "2001:db8::11"
    assert seen["attrs"]["BackendV6Data"] == {"VNI": 1, "VtepMAC": OWN_MAC6}
    assert seen["attrs"]["BackendData"]["VtepMAC"] != OWN_MAC6  # each device its own MAC, as flannel's
    device = seen["device"]
    vxlan = device["linkinfo"]["info_data"]
    assert (vxlan["id"], vxlan["local6"], vxlan["port"], vxlan.get("learning")) == (1, "2001:db8::11", 8472, False)
    assert device["address"] == OWN_MAC6 and "UP" in device["flags"] and device["mtu"] == 1430  # 1500 - 70
    assert "fd00:10:244:3::/128" in {f"{a['local']}/{a['prefixlen']}" for a in device["addr_info"]}
    assert f"fd00:10:244:7:: lladdr {PEER_MAC6} PERMANENT" in seen["peer"]["neigh"]
    assert f"{PEER_MAC6} dst 2001:db8::12" in seen["peer"]["fdb"]
    assert "fd00:10:244:7::/64 via fd00:10:244:7:: dev flannel-v6.1" in seen["peer"]["route"]
    assert "onlink" in seen["peer"]["route"]
    assert seen["peers"] == ["10.244.7.0/24", "fd00:10:244:7::/64"]
    assert seen["ping"] == 0
    assert seen["repaired"] == [f"neighbour fd00:10:244:7:: lladdr {PEER_MAC6} dev flannel-v6.1 was missing"]
    assert seen["again"] == []
    assert seen["removed"] == {"neigh": "", "fdb": seen["removed"]["fdb"], "route": ""}
    assert PEER_MAC6 not in seen["removed"]["fdb"]
    assert "flannel-v6.1" not in seen["links_after"] and "flannel.1" not in seen["links_after"]


DIRECT_SCRIPT = BACKEND_PRELUDE + textwrap.dedent('''
    import dataclasses
    from overlayd.backend.vxlan import KernelVxlanBackend

    def routes():
        return sorted(" ".join(line.split(" proto")[0].split(" metric")[0].split())
                      for line in sh("ip", "-6", "route", "show").splitlines() if line.startswith("fd00:10:244:"))

    def peer(n, ip6):
        attrs = LeaseAttrs(ipaddress.IPv4Address(f"198.18.0.{n}"), "vxlan",
                           {"VNI": 1, "VtepMAC": f"0e:00:00:00:04:{n}"},
                           public_ip6=ipaddress.IPv6Address(ip6),
                           backend_v6_data={"VNI": 1, "VtepMAC": f"0e:00:00:00:06:{n}"})
        return Lease(ipaddress.IPv4Network(f"10.244.{n}.0/24"), attrs,
                     subnet6=ipaddress.IPv6Network(f"fd00:10:244:{n}::/64"))

    async def main():
        veth("eth0", "198.18.0.11/24", "2001:db8::11/64")
        sh("ip", "route", "add", "2001:db8:1::/64", "via", "2001:db8::1", "dev", "eth0")  # behind a router
        config, underlay = dual_stack({"Type": "vxlan", "DirectRouting": True})
        backend = KernelVxlanBackend(config, underlay, NodeOptions(vxlan_impl="kernel"))
        await backend.setup(Lease(ipaddress.IPv4Network("10.244.3.0/24"), backend.lease_attrs(),
                                  subnet6=ipaddress.IPv6Network("fd00:10:244:3::/64")))
        near, far = peer(17, "2001:db8::17"), peer(18, "2001:db8:1::18")
        await backend.apply(Batch(added=[near, far]))
        seen = {"routes": routes(), "stats": backend.stats(),
                "fdb": sh("bridge", "fdb", "show", "dev", "flannel-v6.1")}
        sh("ip", "route", "del", "fd00:10:244:17::/64")
        seen["repaired"] = await changes_of(backend.reconcile)
        far4 = Lease(far.subnet, dataclasses.replace(far.attrs, public_ip6=None, backend_v6_data=None))
        await backend.apply(Batch(added=[far4]))  # its lease changes: IPv4 only now
        seen["far_ipv4_only"] = {"routes": routes(), "fdb": sh("bridge", "fdb", "show", "dev", "flannel-v6.1")}
        await backend.apply(Batch(removed=[near]))
        seen["removed"] = routes()
        await changes_of(backend.teardown)
        seen["torn_down"] = routes()
        print(json.dumps(seen))

    asyncio.run(main())
''')


def test_direct_routing_routes_an_on_link_ipv6_peer_via_its_public_ipv6(netns):  # noqa: F811 (the fixture)
    """DirectRouting over IPv6 (flannel's rule: no gateway on the kernel's route to the peer's
    PublicIPv6): the on-link peer's IPv6 subnet is routed via its PublicIPv6 on the underlay, with
    no FDB entry; the one behind a router is encapsulated on flannel-v6.1; repaired, removed."""
    seen = run_script(netns, DIRECT_SCRIPT)
    direct = "fd00:10:244:17::/64 via 2001:db8::17 dev eth0"
    encapsulated = "fd00:10:244:18::/64 via fd00:10:244:18:: dev flannel-v6.1"
    own = "fd00:10:244:3:: dev flannel-v6.1"  # the kernel's, for the device's /128: setup keeps it
    assert seen["routes"] == [direct, encapsulated, own]
    assert seen["fdb"].splitlines() == ["0e:00:00:00:06:18 dst 2001:db8:1::18 self permanent"]
    # peers: subnets, by family (a table size); direct_peers: nodes, as overlayd_peers counts them (the near
    # peer by both subnets, the far one by its IPv4: 198.18.0.18 is on eth0's segment)
    assert seen["stats"] == {"peers": 4, "skipped_peers": 0, "direct_peers": 2}
    assert seen["repaired"] == [f"route {direct} was missing"]
    assert seen["far_ipv4_only"] == {"routes": [direct, own], "fdb": ""}  # its IPv6 entries went
    assert seen["removed"] == [own]
    assert seen["torn_down"] == []


PREFLIGHT_SCRIPT = BACKEND_PRELUDE + textwrap.dedent('''
    import socket
    from overlayd.backend.vxlan import KernelVxlanBackend
    from overlayd.errors import PlumbingError

    async def main():
        veth("eth0", "198.18.0.11/24", "2001:db8::11/64")
        config, underlay = dual_stack({"Type": "vxlan"})
        seen = {}

        async def preflight():
            try:
                await KernelVxlanBackend(config, underlay, NodeOptions(vxlan_impl="kernel")).preflight()
                return "ok"
            except PlumbingError as exc:
                return str(exc)

        holder = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)  # IPv6 only: the IPv4 port is free
        holder.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        holder.bind(("::", 8472))
        seen["held6"] = await preflight()
        sh("ip", "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", "198.18.0.11", "dev", "eth0",
           "dstport", "8472")
        sh("ip", "link", "set", "flannel.1", "up")  # an IPv4 device on the port does not share the IPv6 one
        seen["held6_beside_ipv4_device"] = await preflight()
        holder.close()
        backend = KernelVxlanBackend(config, underlay, NodeOptions(vxlan_impl="kernel"))
        await backend.setup(Lease(ipaddress.IPv4Network("10.244.3.0/24"), backend.lease_attrs(),
                                  subnet6=ipaddress.IPv6Network("fd00:10:244:3::/64")))
        seen["own_devices_up"] = await preflight()  # a restart: our devices hold both ports
        async with Netlink() as nl:  # what a restart's setup would flush: no peer, so nothing
            seen["flushed_without_peers"] = await nl.flush_peer_state("flannel-v6.1")
        seen["own_route"] = sh("ip", "-6", "route", "show", "fd00:10:244:3::", "dev", "flannel-v6.1")
        print(json.dumps(seen))

    asyncio.run(main())
''')


def test_preflight_refuses_a_udp_port_held_on_ipv6(netns):  # noqa: F811 (the fixture)
    """The IPv6 device's socket is [::]:port, IPv6 only: a holder there is refused before a lease,
    in one line, as the IPv4 one is; VXLAN devices up on the port are no conflict for their family."""
    seen = run_script(netns, PREFLIGHT_SCRIPT)
    for refused in (seen["held6"], seen["held6_beside_ipv4_device"]):
        assert refused.startswith("cannot open UDP [2001:db8::11]:8472 for flannel-v6.1: port in use (held by process ")
    assert seen["own_devices_up"] == "ok"
    # the kernel's route to the device's own /128 is no peer's entry: setup keeps it
    assert seen["flushed_without_peers"] == 0 and "proto kernel" in seen["own_route"]


LEFTOVER_SCRIPT = BACKEND_PRELUDE + textwrap.dedent('''
    from overlayd.backend.vxlan import KernelVxlanBackend

    async def main():
        veth("eth0", "198.18.0.11/24", "2001:db8::11/64")
        config, underlay = dual_stack({"Type": "vxlan"})
        lease = Lease(ipaddress.IPv4Network("10.244.3.0/24"), None, subnet6=ipaddress.IPv6Network("fd00:10:244:3::/64"))
        seen = {}
        for name, raw, public_ip, public_ip6 in (
                ("dual", config.to_json(), underlay.public_ip, underlay.public_ip6),
                ("ipv4_only", {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}, underlay.public_ip, None),
                ("ipv6_only", {**config.to_json(), "EnableIPv4": False}, None, underlay.public_ip6)):
            backend = KernelVxlanBackend(parse_config(raw),
                                         Underlay("eth0", public_ip, 1500, public_ip6=public_ip6), NodeOptions())
            own = Lease(lease.subnet if public_ip else lease.subnet6, backend.lease_attrs(),
                        subnet6=lease.subnet6 if public_ip6 else None)
            await backend.setup(own)
            seen[name] = sorted(link.split()[0].split("@")[0] for link in sh("ip", "-br", "link").splitlines()
                                if link.startswith("flannel"))
        print(json.dumps(seen))

    asyncio.run(main())
''')


def test_a_restart_without_a_family_removes_that_familys_device(netns):  # noqa: F811 (the fixture)
    """A node restarted with IPv6 (or IPv4) turned off in the config keeps no device of it: the
    one left from before goes with its peers' entries (else they would route on, unmaintained)."""
    seen = run_script(netns, LEFTOVER_SCRIPT)
    assert seen == {"dual": ["flannel-v6.1", "flannel.1"], "ipv4_only": ["flannel.1"], "ipv6_only": ["flannel-v6.1"]}
