"""Node plumbing in a throwaway network namespace: every ensure_* is idempotent,
keeps right state and fixes wrong state. The checks run inside the namespace
(pyroute2 talks to the namespace it runs in) and report what they saw."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid

import pytest

pytestmark = pytest.mark.root

#: the start of a script run in the namespace: imports, ``sh`` and ``veth`` (a veth pair, both ends
#: up, the first with ``addresses``, added without duplicate address detection)
PRELUDE = textwrap.dedent('''
    import asyncio, ipaddress, json, os, subprocess, tempfile
    from overlayd.plumbing import ethtool, guard, nft, sysctl
    from overlayd.plumbing.netlink import Netlink

    def sh(*argv):
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    def veth(name, *addresses):
        sh("ip", "link", "add", name, "type", "veth", "peer", "name", name + "p")
        for address in addresses:
            sh("ip", "addr", "add", address, "dev", name, "nodad")
        sh("ip", "link", "set", name + "p", "up")
        sh("ip", "link", "set", name, "up")
''')

SCRIPT = PRELUDE + textwrap.dedent('''
    from overlayd.plumbing.tuntap import open_tun, open_tap

    async def main():
        seen = {}
        net = ipaddress.IPv4Network("10.244.0.0/16")
        gw = ipaddress.IPv4Interface("10.244.3.1/24")
        veth("eth0", "198.18.0.11/24")
        async with Netlink() as nl:
            chosen = await nl.underlay(("eth0",), None)
            seen["underlay"] = [chosen.iface, str(chosen.address), str(chosen.public_ip), str(chosen.mtu)]
            for _ in range(2):
                await nl.ensure_bridge("cni0", mtu=1450)
                await nl.ensure_address("cni0", gw)
            sh("ip", "addr", "add", "10.244.9.1/24", "dev", "cni0")   # wrong state...
            sh("ip", "link", "set", "cni0", "mtu", "1400")
            await nl.ensure_bridge("cni0", mtu=1450)                  # ...fixed
            await nl.ensure_address("cni0", gw)
            seen["cni0_addrs"] = [str(a) for a in await nl.ipv4_addresses("cni0")]
            seen["cni0"] = sh("ip", "-j", "link", "show", "cni0")

            fd = open_tun("tun0", 1472)
            sysctl.disable_ipv6("tun0")
            for _ in range(2):
                await nl.ensure_address("tun0", ipaddress.IPv4Interface("10.244.3.0/32"))
                await nl.ensure_link_up("tun0")
                await nl.ensure_route(net, "tun0")
                await nl.ensure_txqueuelen("tun0", 5000)
            seen["tun_routes"] = [str(r) for r in await nl.routes("tun0")]
            seen["tun0"] = sh("ip", "-j", "link", "show", "tun0")
            seen["tun0_ipv6_off"] = open("/proc/sys/net/ipv6/conf/tun0/disable_ipv6").read().strip()
            for _ in range(2):
                await guard.ensure(nl, net)
            seen["with_guard"] = sh("ip", "route", "show", str(net))
            os.close(fd)  # the device and its route go: the guard is what is left
            seen["guard_only"] = sh("ip", "route", "show", str(net))
            fd = open_tap("overlay0", "0e:11:22:33:44:55", 1450)
            await nl.ensure_noarp("overlay0")
            seen["tap"] = sh("ip", "-j", "link", "show", "overlay0")
            os.close(fd)

            local = ipaddress.IPv4Address("198.18.0.11")
            mac = "0e:00:00:00:00:01"
            for vni in (1, 1, 7):
                await nl.ensure_vxlan("flannel.1", vni=vni, port=8472, local=local, underlay_dev="eth0",
                                      mac=mac, mtu=1450, learning=False, udp_checksum=False)
            seen["vxlan"] = sh("ip", "-d", "-j", "link", "show", "flannel.1")
            await nl.ensure_link_up("flannel.1")
            ethtool.set_tx_checksum_offload("flannel.1", False)
            seen["vxlan_txcsum"] = ethtool.tx_checksum_offload("flannel.1")
            peer_gw = ipaddress.IPv4Address("10.244.5.0")
            for _ in range(2):
                await nl.ensure_fdb("0e:00:00:00:00:05", ipaddress.IPv4Address("198.18.0.15"), "flannel.1")
                await nl.ensure_neighbour(peer_gw, "0e:00:00:00:00:05", "flannel.1")
                await nl.ensure_route(ipaddress.IPv4Network("10.244.5.0/24"), "flannel.1", gateway=peer_gw, onlink=True)
            seen["vxlan_on_8472"] = await nl.vxlan_devices(8472)
            seen["fdb"] = sh("bridge", "fdb", "show", "dev", "flannel.1")
            seen["neigh"] = sh("ip", "neigh", "show", "dev", "flannel.1")
            seen["route5"] = sh("ip", "route", "show", "10.244.5.0/24")
            for _ in range(2):
                await nl.delete_route(ipaddress.IPv4Network("10.244.5.0/24"), dev="flannel.1")
                await nl.delete_neighbour(peer_gw, "flannel.1")
                await nl.delete_fdb("0e:00:00:00:00:05", "flannel.1", "198.18.0.15")
            seen["after_delete"] = (sh("bridge", "fdb", "show", "dev", "flannel.1") + sh("ip", "neigh", "show", "dev", "flannel.1")
                                    + sh("ip", "route", "show", "10.244.5.0/24"))
            await nl.delete_link("flannel.1")
            await nl.delete_link("flannel.1")
            seen["vxlan_gone"] = not await nl.exists("flannel.1")
            for _ in range(2):
                await guard.remove(nl, net)
            seen["guard_removed"] = sh("ip", "route", "show", str(net))

        journal = os.path.join(tempfile.mkdtemp(), "sysctl-journal.json")
        seen["forwarding_before"] = open("/proc/sys/net/ipv4/ip_forward").read().strip()
        sysctl.enable_forwarding(journal)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=0")
        sysctl.enable_forwarding(journal)  # an operator's 0 put back: the first note stays
        seen["journal"] = json.load(open(journal))
        seen["restored"] = sysctl.restore(journal)
        seen["forwarding_after"] = open("/proc/sys/net/ipv4/ip_forward").read().strip()
        seen["journal_gone"] = not os.path.exists(journal)

        sysctl.enable_forwarding()
        seen["forwarding"] = open("/proc/sys/net/ipv4/ip_forward").read().strip()
        subnet = ipaddress.IPv4Network("10.244.3.0/24")
        for _ in range(2):
            nft.apply(net, subnet, masquerade=True)
        seen["nft"] = sh("nft", "list", "table", "ip", "overlayd")
        nft.apply(net, subnet, masquerade=False)
        seen["nft_nomasq"] = sh("nft", "list", "table", "ip", "overlayd")
        nft.remove()
        nft.remove()
        seen["nft_after_remove"] = sh("nft", "list", "tables")
        print(json.dumps(seen))

    asyncio.run(main())
''')


@pytest.fixture
def netns():
    name = f"ovt-pl-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


def run_script(netns: str, script: str) -> dict:
    """Run ``script`` in namespace ``netns``; the JSON it printed (what it saw)."""
    res = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", script],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_plumbing_is_idempotent_and_fixes_wrong_state(netns):
    seen = run_script(netns, SCRIPT)
    assert seen["underlay"] == ["eth0", "198.18.0.11", "198.18.0.11", "1500"]
    assert seen["cni0_addrs"] == ["10.244.3.1/24"]
    cni0 = json.loads(seen["cni0"])[0]
    assert cni0["mtu"] == 1450 and "UP" in cni0["flags"]
    assert seen["tun_routes"] == ["10.244.0.0/16"]  # one route, not two
    assert seen["with_guard"].splitlines() == [  # one guard, behind the device's route
        "10.244.0.0/16 dev tun0 proto static ", "unreachable 10.244.0.0/16 proto static metric 4294967295 "]
    assert seen["guard_only"].splitlines() == ["unreachable 10.244.0.0/16 proto static metric 4294967295 "]
    assert seen["guard_removed"] == ""
    tun0 = json.loads(seen["tun0"])[0]
    assert tun0["mtu"] == 1472 and "UP" in tun0["flags"] and tun0["link_type"] == "none"
    assert tun0["txqlen"] == 5000
    assert seen["tun0_ipv6_off"] == "1"
    tap = json.loads(seen["tap"])[0]
    assert tap["address"] == "0e:11:22:33:44:55" and tap["mtu"] == 1450 and "NOARP" in tap["flags"]

    vx = json.loads(seen["vxlan"])[0]
    data = vx["linkinfo"]["info_data"]
    assert data["id"] == 7  # a changed VNI recreated the device
    assert data["port"] == 8472 and data["local"] == "198.18.0.11" and data["learning"] is False
    assert data.get("udp_csum") is False
    assert vx["address"] == "0e:00:00:00:00:01" and vx["mtu"] == 1450
    assert seen["vxlan_txcsum"] is False
    assert seen["fdb"].count("0e:00:00:00:00:05 dst 198.18.0.15") == 1 and "permanent" in seen["fdb"]
    assert seen["neigh"].count("10.244.5.0 lladdr 0e:00:00:00:00:05") == 1 and "PERMANENT" in seen["neigh"]
    assert "via 10.244.5.0" in seen["route5"] and "onlink" in seen["route5"]
    assert seen["after_delete"].strip() == ""
    assert seen["vxlan_on_8472"] == ["flannel.1"]
    assert seen["vxlan_gone"] is True
    assert seen["forwarding_before"] == "0" and seen["journal"] == {"/proc/sys/net/ipv4/ip_forward": "0"}
    assert seen["restored"] == ["/proc/sys/net/ipv4/ip_forward=0"]
    assert seen["forwarding_after"] == "0" and seen["journal_gone"]

    assert seen["forwarding"] == "1"
    assert seen["nft"].count("masquerade") == 2 and seen["nft"].count("table ip overlayd") == 1
    assert "masquerade" not in seen["nft_nomasq"] and "ip saddr 10.244.0.0/16 accept" in seen["nft_nomasq"]
    assert "overlayd" not in seen["nft_after_remove"]


DRIFT_SCRIPT = textwrap.dedent('''
    import asyncio, ipaddress, json, subprocess, time
    from pyroute2 import AsyncIPRoute
    from overlayd.plumbing import guard, nft, sysctl
    from overlayd.plumbing.netlink import Netlink
    from overlayd.plumbing.tuntap import open_tun

    WRITES = []  # every rtnetlink request that is not a read, as overlayd sends it

    def counted(verb, orig):
        async def request(self, command, *args, **kwargs):
            if command not in ("dump", "get"):
                WRITES.append(f"{verb} {command} {kwargs.get('dst', kwargs.get('ifname', ''))}")
            return await orig(self, command, *args, **kwargs)
        return request

    for verb in ("link", "addr", "route", "neigh", "fdb"):
        setattr(AsyncIPRoute, verb, counted(verb, getattr(AsyncIPRoute, verb)))

    NET, SUBNET = ipaddress.IPv4Network("10.244.0.0/16"), ipaddress.IPv4Network("10.244.3.0/24")
    PEER_NET, PEER_GW, PEER_MAC = ipaddress.IPv4Network("10.244.5.0/24"), ipaddress.IPv4Address("10.244.5.0"), "0e:00:00:00:00:05"

    def sh(*argv):
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    async def ensure_all():
        """What a node owns, as the backends and the daemon ensure it; (netlink changes, nft change)."""
        async with Netlink() as nl:
            await nl.ensure_bridge("cni0", mtu=1450)
            await nl.ensure_address("cni0", ipaddress.IPv4Interface("10.244.3.1/24"))
            await nl.ensure_mtu("tun0", 1472)
            await nl.ensure_txqueuelen("tun0", 5000)
            await nl.ensure_address("tun0", ipaddress.IPv4Interface("10.244.3.0/32"))
            await nl.ensure_link_up("tun0")
            await nl.ensure_route(NET, "tun0")
            await guard.ensure(nl, NET)
            await nl.ensure_vxlan("flannel.1", vni=1, port=4789, local=ipaddress.IPv4Address("198.18.0.11"),
                                  underlay_dev="eth0", mac="0e:00:00:00:00:01", mtu=1450)
            await nl.ensure_link_up("flannel.1")
            await nl.ensure_fdb(PEER_MAC, ipaddress.IPv4Address("198.18.0.15"), "flannel.1")
            await nl.ensure_neighbour(PEER_GW, PEER_MAC, "flannel.1")
            await nl.ensure_route(PEER_NET, "flannel.1", gateway=PEER_GW, onlink=True)
            await nl.ensure_route(ipaddress.IPv4Network("10.244.7.0/24"), "eth0", gateway=ipaddress.IPv4Address("198.18.0.17"))
            return nl.changes, nft.ensure(NET, SUBNET, masquerade=True)

    async def main():
        seen = {}
        sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        sh("ip", "addr", "add", "198.18.0.11/24", "dev", "eth0")
        sh("ip", "link", "set", "eth0", "up")
        fd = open_tun("tun0", 1472)
        for dev in ("tun0", "eth0", "eth0p"):
            sysctl.disable_ipv6(dev)
        seen["first"] = await ensure_all()
        sysctl.disable_ipv6("flannel.1")
        sysctl.disable_ipv6("cni0")
        time.sleep(0.5)
        # proof from the kernel's side: a pass over right state sends no netlink or nft write
        monitors = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                    for argv in (["ip", "monitor", "link", "address", "route", "neigh"],
                                 ["bridge", "monitor", "fdb"], ["nft", "monitor"])]
        time.sleep(0.5)
        del WRITES[:]
        seen["again"] = await ensure_all()
        seen["writes_again"] = list(WRITES)
        time.sleep(0.5)
        for m in monitors:
            m.terminate()
        seen["events"] = "".join(m.communicate(timeout=10)[0] for m in monitors)

        sh("ip", "route", "del", "10.244.0.0/16", "dev", "tun0")
        sh("ip", "route", "del", "unreachable", "10.244.0.0/16", "metric", str(guard.METRIC))
        sh("ip", "route", "del", "10.244.5.0/24", "dev", "flannel.1")
        sh("ip", "route", "del", "10.244.7.0/24")
        sh("ip", "neigh", "del", "10.244.5.0", "dev", "flannel.1")
        sh("bridge", "fdb", "del", PEER_MAC, "dev", "flannel.1", "dst", "198.18.0.15")
        sh("ip", "addr", "del", "10.244.3.1/24", "dev", "cni0")
        sh("ip", "link", "set", "tun0", "down")
        sh("nft", "flush", "table", "ip", "overlayd")
        seen["repaired"] = await ensure_all()
        seen["routes"] = sh("ip", "route")
        seen["after_repair"] = await ensure_all()
        sh("nft", "delete", "table", "ip", "overlayd")
        seen["nft_deleted"] = (await ensure_all())[1]
        print(json.dumps(seen))

    asyncio.run(main())
''')


def test_ensure_writes_nothing_over_right_state_and_reports_each_repair(netns):
    res = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", DRIFT_SCRIPT],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    seen = json.loads(res.stdout)
    changes, nft_change = seen["first"]
    assert "route 10.244.0.0/16 dev tun0 was missing" in changes and nft_change == "nft table ip overlayd was missing"
    assert seen["again"] == [[], None]
    assert seen["writes_again"] == []  # not one rtnetlink write request...
    assert seen["events"] == ""  # ...and no nft event (the kernel does not notify identical replaces)
    changes, nft_change = seen["repaired"]
    assert sorted(changes) == sorted([
        "route 10.244.0.0/16 dev tun0 was missing",
        "route unreachable 10.244.0.0/16 metric 4294967295 was missing",
        "route 10.244.5.0/24 via 10.244.5.0 dev flannel.1 onlink was missing",
        "route 10.244.7.0/24 via 198.18.0.17 dev eth0 was missing",
        "neighbour 10.244.5.0 lladdr 0e:00:00:00:00:05 dev flannel.1 was missing",
        "FDB 0e:00:00:00:00:05 dst 198.18.0.15 dev flannel.1 was missing",
        "address 10.244.3.1/24 on cni0 was missing",
        "tun0 was down",
    ]), changes
    assert nft_change == "nft table ip overlayd was different"
    assert "10.244.0.0/16 dev tun0" in seen["routes"] and "10.244.7.0/24 via 198.18.0.17 dev eth0" in seen["routes"]
    assert seen["after_repair"] == [[], None]
    assert seen["nft_deleted"] == "nft table ip overlayd was missing"
