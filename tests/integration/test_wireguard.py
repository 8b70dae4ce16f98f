"""The wireguard backend between two network namespaces this test makes, with wireguard-go
(this machine's kernel has no WireGuard): a ping crosses the tunnel, both ends handshake,
wireguard-go's death is noticed at once, and a crafted datagram sent to the listen port from
a third namespace (its outer source forged as the peer's) delivers nothing.

The test process enters a namespace with setns(2) on its own thread for each step (``ip``,
``wg`` and wireguard-go are spawned from there), and leaves it after the step.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import uuid

import pytest

from overlayd.backend import wireguard
from overlayd.backend.base import NodeOptions, Underlay
from overlayd.backend.wireguard import WireguardBackend, WireguardSettings
from overlayd.errors import PlumbingError
from overlayd.lease.model import Lease
from overlayd.lease.watcher import Batch
from overlayd.netconf import parse_config
from overlayd.plumbing import wg
from overlayd.plumbing.netlink import Netlink

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not (shutil.which("wireguard-go") and shutil.which("wg")),
                                 reason="needs wireguard-go and wireguard-tools (scripts/install)")]

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
PSK = "mSwaz4HyIYV8eF8ystfsMlcJLE8uzKjC3aMYNzp5/y8="
LISTENER_PORT = 9999


@contextlib.contextmanager
def netns(name: str):
    """This thread in network namespace ``name`` for the block."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        yield
    finally:
        _libc.setns(own, CLONE_NEWNET)
        os.close(own)
        os.close(target)


def sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=20).stdout


async def wait_until(predicate, timeout: float = 10.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return await predicate()


class Node:
    def __init__(self, ns: str, backend: WireguardBackend, lease: Lease):
        self.ns, self.backend, self.lease = ns, backend, lease


@contextlib.asynccontextmanager
async def make_lab(tmp_path, mode: str | None = None, psk_b: str = PSK):
    """Namespaces a, b (joined by a veth: 198.18.0.1/.2) and c (a second veth to a: .6 -> .5),
    and a wireguard backend in a and in b, each with the other as its peer. With ``mode``, a
    dual-stack network in that Mode (the veth also 2001:db8:18::1/.2); ``psk_b`` is b's PSK."""
    tag = uuid.uuid4().hex[:6]
    names = {n: f"wgt{tag}{n}" for n in "abc"}
    made: list[str] = []
    nodes: dict[str, Node] = {}
    try:
        for ns in names.values():
            sh("ip", "netns", "add", ns)
            made.append(ns)
        a, b, c = names["a"], names["b"], names["c"]
        sh("ip", "link", "add", "a0", "netns", a, "type", "veth", "peer", "name", "b0", "netns", b)
        sh("ip", "link", "add", "a1", "netns", a, "type", "veth", "peer", "name", "c0", "netns", c)
        for ns, dev, addr in ((a, "a0", "198.18.0.1/30"), (b, "b0", "198.18.0.2/30"),
                              (a, "a1", "198.18.0.5/30"), (c, "c0", "198.18.0.6/30")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        if mode is not None:
            for ns, dev, addr in ((a, "a0", "2001:db8:18::1/64"), (b, "b0", "2001:db8:18::2/64")):
                sh("ip", "-n", ns, "addr", "add", addr, "dev", dev, "nodad")
        # no reverse-path filter in a, so that the forged source reaches the listen port (not vacuous)
        for key in ("all", "default", "a0", "a1"):
            sh("ip", "netns", "exec", a, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0")
        net = {"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}
        if mode is not None:
            net.update({"EnableIPv6": True, "IPv6Network": "fd00:10:244::/48"})
        config = parse_config(net)
        for n, dev, ip, subnet, ip6, subnet6 in (
                ("a", "a0", "198.18.0.1", "10.244.1.0/24", "2001:db8:18::1", "fd00:10:244:1::/64"),
                ("b", "b0", "198.18.0.2", "10.244.2.0/24", "2001:db8:18::2", "fd00:10:244:2::/64")):
            underlay = Underlay(dev, ipaddress.IPv4Address(ip), 1500,
                                 public_ip6=ipaddress.IPv6Address(ip6) if mode else None)
            settings = WireguardSettings(psk=PSK if n == "a" else psk_b, mode=mode or "separate")
            backend = WireguardBackend(config, underlay, NodeOptions(),
                                       settings=settings, key_path=str(tmp_path / n / "wireguard.key"),
                                       device=f"wgt{tag}{n}", prefer="userspace")
            with netns(names[n]):
                await backend.preflight()
            nodes[n] = Node(names[n], backend, Lease(ipaddress.IPv4Network(subnet), backend.lease_attrs(),
                                                     subnet6=ipaddress.IPv6Network(subnet6) if mode else None))
        for n, other in (("a", "b"), ("b", "a")):
            with netns(nodes[n].ns):
                await nodes[n].backend.setup(nodes[n].lease)
                await nodes[n].backend.apply(Batch(added=[nodes[other].lease]))
        yield nodes, names
    finally:
        try:
            for node in nodes.values():
                pids = [dev.pid for dev in node.backend.devs.values() if dev.pid is not None]
                try:
                    with netns(node.ns):
                        await node.backend.close()
                finally:
                    for pid in pids:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)  # close() failed: never leave it running
        finally:
            for ns in made:
                subprocess.run(["ip", "netns", "del", ns], check=False, timeout=20)
            for n in "ab":  # a wireguard-go killed by a test (SIGKILL) leaves its socket file
                for suffix in ("", "-v6"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f"{wg.UAPI_DIR}/wgt{tag}{n}{suffix}.sock")


@pytest.fixture
async def lab(tmp_path):
    """An IPv4 lab (:func:`make_lab`)."""
    async with make_lab(tmp_path) as made:
        yield made


async def handshaken(node: Node, peer: Node, device: str | None = None) -> bool:
    state = (await wg.show(device or node.backend.device)).peers.get(peer.backend.key.public)
    return state is not None and state.latest_handshake > 0 and state.rx_bytes > 0 and state.tx_bytes > 0


async def test_ping_crosses_and_both_ends_handshake(lab):
    nodes, names = lab
    a, b = nodes["a"], nodes["b"]
    assert a.backend.devs[a.backend.device].userspace and a.backend.lease_attrs().backend_data["Port"] == 51820
    with netns(a.ns):
        routes = sh("ip", "-4", "route", "show", "10.244.0.0/16")
        addrs = sh("ip", "-4", "-o", "addr", "show", "dev", a.backend.device)
        mtu = sh("ip", "-o", "link", "show", "dev", a.backend.device)
    assert f"dev {a.backend.device}" in routes and "10.244.1.0/32" in addrs and "mtu 1420" in mtu
    with netns(a.ns):
        ping = subprocess.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.244.2.0"],
                              capture_output=True, text=True, timeout=20)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert await wait_until(lambda: handshaken(a, b)) and await wait_until(lambda: handshaken(b, a))
    dump = await wg.show(a.backend.device)
    peer = dump.peers[b.backend.key.public]
    assert peer.allowed_ips == ("10.244.2.0/24",) and peer.endpoint == "198.18.0.2:51820" and peer.has_psk


async def session(node: Node, peer: Node) -> bool:
    state = (await wg.show(node.backend.device)).peers.get(peer.backend.key.public)
    return state is not None and state.latest_handshake > 0


async def test_a_joiner_greets_the_peers_its_listing_brings_so_no_first_packets_cross(lab):
    # Two nodes whose pods send first packets to each other at the same instant start crossing
    # handshakes; WireGuard drops both (each side's initiation overwrites its own pending one)
    # and retries 5 s later: the lab's 3-node matrix waited 5 s, >10 s under load. The node that
    # joins (whose listing brings the peers) starts the session itself, before any pod sends.
    nodes, _ = lab
    a, b = nodes["a"], nodes["b"]
    assert not await session(a, b) and not await session(b, a)  # no traffic yet, no session
    with netns(b.ns):
        await b.backend.apply(Batch(removed=[a.lease]))
        await b.backend.apply(Batch(added=[a.lease], listed=True))
    with netns(a.ns):
        assert await wait_until(lambda: session(a, b), 5.0)
    with netns(b.ns):
        assert await wait_until(lambda: session(b, a), 5.0)
        # and the keepalive that started it is off again, as configured (flannel's default 0)
        assert (await wg.show(b.backend.device)).peers[a.backend.key.public].keepalive == 0


async def test_reconcile_puts_back_a_removed_peer_and_route(lab):
    nodes, _ = lab
    a, b = nodes["a"], nodes["b"]
    with netns(a.ns):
        sh("wg", "set", a.backend.device, "peer", b.backend.key.public, "remove")
        sh("ip", "route", "del", "10.244.0.0/16")
        async with Netlink() as nl:
            await a.backend.reconcile(nl)
            changes = list(nl.changes)
        async with Netlink() as nl:
            await a.backend.reconcile(nl)
            assert nl.changes == []  # right state is not written again
    assert any("10.244.0.0/16" in c for c in changes) and any(b.backend.key.public in c for c in changes)
    assert b.backend.key.public in (await wg.show(a.backend.device)).peers


async def test_killing_wireguard_go_raises_at_once(lab):
    nodes, _ = lab
    a = nodes["a"]
    run = asyncio.ensure_future(a.backend.run())
    await asyncio.sleep(0)
    assert not run.done()
    os.kill(a.backend.devs[a.backend.device].pid, signal.SIGKILL)
    with pytest.raises(PlumbingError, match="killed by signal 9"):
        await asyncio.wait_for(run, 2.0)  # STATS_INTERVAL is 5 s: only the death can end it this soon


def snmp(ns: str, group: str, field: str) -> int:
    """A counter of ``ns``'s /proc/net/snmp ("Udp", "InDatagrams") or, for group "Ip6", snmp6."""
    if group == "Ip6":
        return int(dict(line.split() for line in sh("ip", "netns", "exec", ns, "cat", "/proc/net/snmp6")
                        .splitlines())[group + field])
    lines = [line.split() for line in sh("ip", "netns", "exec", ns, "cat", "/proc/net/snmp").splitlines()
             if line.startswith(group + ":")]
    return int(lines[1][lines[0].index(field)])


def udp_in_datagrams(ns: str) -> int:
    return snmp(ns, "Udp", "InDatagrams")


def ipv4_udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """An IPv4/UDP datagram, checksums 0 (the kernel fills the IP one on a raw send)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + udp


async def test_a_crafted_datagram_to_the_listen_port_delivers_nothing(lab):
    nodes, names = lab
    a, b = nodes["a"], nodes["b"]
    with netns(a.ns):
        listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("10.244.1.0", LISTENER_PORT))
    listener.setblocking(False)
    try:
        inner = ipv4_udp("10.244.2.7", "10.244.1.0", 4000, LISTENER_PORT, b"forged")
        crafted = [
            inner,  # the pod packet in the clear, as the VXLAN attack sent it
            struct.pack("<I", 4) + b"\x01\x00\x00\x00" + bytes(8) + inner + bytes(16),  # a "data" message
            struct.pack("<I", 1) + os.urandom(144),  # a handshake initiation of random bytes
        ]
        before = udp_in_datagrams(a.ns)
        seen = (await wg.show(a.backend.device)).peers[b.backend.key.public]
        with netns(names["c"]):
            raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        with raw:  # the outer source forged as b's address
            for payload in crafted:
                raw.sendto(ipv4_udp("198.18.0.2", "198.18.0.5", 51820, 51820, payload), ("198.18.0.5", 0))

        async def reached():
            return udp_in_datagrams(a.ns) >= before + len(crafted)
        assert await wait_until(reached), "the crafted datagrams did not reach a's listen port"
        # WireGuard counts no rejected datagram; what wg can show: nothing was taken as from b
        after = (await wg.show(a.backend.device)).peers[b.backend.key.public]
        assert (after.rx_bytes, after.latest_handshake) == (seen.rx_bytes, seen.latest_handshake)
        # then a real packet through the tunnel from b: the listener's first datagram must be it
        with netns(b.ns):
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sender:
            sender.sendto(b"genuine", ("10.244.1.0", LISTENER_PORT))
        data, source = await asyncio.wait_for(asyncio.get_running_loop().sock_recvfrom(listener, 2048), 10.0)
        assert (data, source[0]) == (b"genuine", "10.244.2.0")
    finally:
        listener.close()


CHILD = """
import asyncio, sys
from overlayd.plumbing import wg
async def main():
    dev = await wg.create_device(sys.argv[1], 1420, "userspace")
    print(dev.pid, flush=True)
    await asyncio.Future()
asyncio.run(main())
"""


async def test_wireguard_go_dies_with_its_parent_and_a_stop_removes_the_device(tmp_path):
    """SIGKILL of the process that started wireguard-go (the daemon) takes wireguard-go and its device
    along (no stale device keeps the overlay's route); a stop by PID removes both too."""
    ns = f"wgt{uuid.uuid4().hex[:6]}k"
    name = f"{ns}0"
    sh("ip", "netns", "add", ns)
    child = None
    pid = None
    try:
        child = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", CHILD, name],
                                 stdout=subprocess.PIPE, text=True)
        pid = int(child.stdout.readline())
        assert os.path.exists(f"/var/run/wireguard/{name}.sock")
        child.kill()
        child.wait(timeout=10)

        async def gone():
            return not os.path.exists(f"/proc/{pid}") and not os.path.exists(f"/var/run/wireguard/{name}.sock")
        assert await wait_until(gone), f"wireguard-go {pid} outlived its parent"
        pid = None
        with netns(ns):
            dev = await wg.create_device(name, 1420, "userspace")
            pid = dev.pid
            assert await wg._link_kind(name) is not None
            await dev.stop()
            assert await wg._link_kind(name) is None
        assert not os.path.exists(f"/proc/{pid}") and not os.path.exists(f"/var/run/wireguard/{name}.sock")
        pid = None
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", ns], check=False, timeout=20)


def ping(ns: str, address: str, *options: str) -> subprocess.CompletedProcess:
    with netns(ns):
        return subprocess.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", *options, address],
                              capture_output=True, text=True, timeout=20)


@pytest.mark.parametrize("mode, devices, endpoint6", [
    ("separate", ("", "-v6"), "[2001:db8:18::2]:51821"),  # flannel-wg and flannel-wg-v6
    ("ipv6", ("",), "[2001:db8:18::2]:51820"),  # one device, both families, IPv6 endpoints
])
async def test_dual_stack_pods_cross_in_flannels_modes(tmp_path, mode, devices, endpoint6):
    async with make_lab(tmp_path, mode) as (nodes, _):
        a, b = nodes["a"], nodes["b"]
        names = [a.backend.device + suffix for suffix in devices]
        assert sorted(a.backend.devs) == names
        with netns(a.ns):
            routes6 = sh("ip", "-6", "route", "show", "fd00:10:244::/48")
            addrs6 = sh("ip", "-6", "-o", "addr", "show", "dev", names[-1])
        assert f"dev {names[-1]}" in routes6 and "fd00:10:244:1::/128" in addrs6
        for address in ("10.244.2.0", "fd00:10:244:2::"):
            result = ping(a.ns, address)
            assert result.returncode == 0, result.stdout + result.stderr
        # flannel's overhead rule: full-size inner packets (device MTU 1420, DF) fit the 1500-byte
        # underlay without fragments, an IPv6 outer header included
        fragments = [snmp(a.ns, "Ip", "FragCreates"), snmp(a.ns, "Ip6", "FragCreates")]
        for address, size in (("10.244.2.0", 1420 - 28), ("fd00:10:244:2::", 1420 - 48)):
            result = ping(a.ns, address, "-M", "do", "-s", str(size))
            assert result.returncode == 0, result.stdout + result.stderr
        assert [snmp(a.ns, "Ip", "FragCreates"), snmp(a.ns, "Ip6", "FragCreates")] == fragments
        result = ping(a.ns, "10.244.2.0", "-M", "do", "-s", str(1420 - 27))
        assert result.returncode != 0 and "mtu=1420" in result.stderr  # one byte more
        for name in names:
            assert await wait_until(lambda: handshaken(a, b, name)), name
        peer6 = (await wg.show(names[-1])).peers[b.backend.key.public]
        assert peer6.endpoint == endpoint6 and "fd00:10:244:2::/64" in peer6.allowed_ips
        # every wireguard-go is supervised: the IPv6 one's death ends run() too
        run = asyncio.ensure_future(a.backend.run())
        await asyncio.sleep(0)
        os.kill(a.backend.devs[names[-1]].pid, signal.SIGKILL)
        with pytest.raises(PlumbingError, match=f"wireguard-go for {names[-1]} .*killed by signal 9"):
            await asyncio.wait_for(run, 2.0)


async def test_a_socket_file_left_by_a_killed_wireguard_go_is_not_taken_for_a_ready_one(tmp_path, monkeypatch):
    """A SIGKILLed wireguard-go leaves its UAPI socket file; the next start must wait for a socket that
    answers, not for the file (else ``wg set`` can meet "connection refused"). A stand-in wireguard-go
    makes its tun and never listens, so only a stale file could make the start look done."""
    ns = f"wgt{uuid.uuid4().hex[:6]}s"
    name = f"{ns}0"
    sock = f"{wg.UAPI_DIR}/{name}.sock"
    fake = tmp_path / "wireguard-go"
    fake.write_text('#!/bin/sh\nip tuntap add mode tun name "$2" && exec sleep 60\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(wg, "START_TIMEOUT", 1.0)
    os.makedirs(wg.UAPI_DIR, exist_ok=True)
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(sock)  # closed unlistened: the file stays and refuses connections
    sh("ip", "netns", "add", ns)
    dev = None
    try:
        with netns(ns):
            with pytest.raises(PlumbingError, match="made no device"):
                dev = await wg.create_device(name, 1420, "userspace")
    finally:
        if dev is not None and dev.pid is not None:
            os.kill(dev.pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", ns], check=False, timeout=20)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock)


async def test_auto_uses_the_kernels_wireguard_where_it_can_else_wireguard_go(tmp_path):
    """prefer "auto" (the daemon's): a kernel device where ``ip link add ... type wireguard`` works,
    wireguard-go where the kernel says "Unknown device type" (this machine); ``wg`` configures either."""
    ns = f"wgt{uuid.uuid4().hex[:6]}m"
    name = f"{ns}0"
    sh("ip", "netns", "add", ns)
    dev = None
    try:
        with netns(ns):
            kernel = subprocess.run(["ip", "link", "add", "probe0", "type", "wireguard"],
                                    capture_output=True, timeout=20).returncode == 0
            dev = await wg.create_device(name, 1420)
            assert dev.userspace != kernel and await wg._link_kind(name) == ("wireguard" if kernel else "tun")
            key = await wg.load_or_create_key(str(tmp_path / "private.key"))
            await wg.configure(name, key, 51899)
            dump = await wg.show(name)
            assert (dump.public_key, dump.listen_port, dump.peers) == (key.public, 51899, {})
            await dev.stop()
            await wg.delete_device(name)
            assert await wg._link_kind(name) is None
    finally:
        if dev is not None and dev.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(dev.pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", ns], check=False, timeout=20)


async def test_a_psk_mismatch_carries_nothing_and_says_why(tmp_path, monkeypatch, caplog):
    """Handshakes fail without a word from WireGuard: the backend sees bytes sent and no session
    (:class:`HandshakeWatch`), logs why and marks the peer stalled in its per-peer stats."""
    monkeypatch.setattr(wireguard, "STATS_INTERVAL", 0.1)
    monkeypatch.setattr(wireguard, "STALL_GRACE", 0.0)
    async with make_lab(tmp_path, psk_b="kVUUlMuDvZ9Zi2qNFRIMjt4cdCzDb2BCctEsTserck4=") as (nodes, _):
        a, b = nodes["a"], nodes["b"]
        with netns(a.ns):
            run = asyncio.ensure_future(a.backend.run())
            try:
                await asyncio.sleep(0.2)  # a first read: nothing sent yet
                result = ping(a.ns, "10.244.2.0")
                assert result.returncode != 0

                async def stalled():
                    return any(row["stalled"] for row in a.backend.peer_stats())
                assert await wait_until(stalled, 5.0), a.backend.peer_stats()
            finally:
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)
        row = a.backend.peer_stats()[0]
        assert row["handshake_age"] is None and row["rx_bytes"] == 0 and row["tx_bytes"] > 0
        assert any("its key or Backend.PSK differs" in r.getMessage() and r.levelname == "WARNING"
                   for r in caplog.records)


async def test_a_deleted_device_ends_run_and_reconcile_makes_it_again_with_its_peers(lab):
    nodes, _ = lab
    a, b = nodes["a"], nodes["b"]
    old = a.backend.devs[a.backend.device].pid
    run = asyncio.ensure_future(a.backend.run())
    await asyncio.sleep(0)
    with netns(a.ns):
        sh("ip", "link", "del", a.backend.device)  # wireguard-go exits when its tun goes
        with pytest.raises(PlumbingError, match="wireguard-go for"):
            await asyncio.wait_for(run, 5.0)
        async with Netlink() as nl:
            await a.backend.reconcile(nl)
            changes = list(nl.changes)
        assert a.backend.devs[a.backend.device].pid != old
        assert f"WireGuard device {a.backend.device} was missing" in changes
        routes = sh("ip", "-4", "route", "show", "10.244.0.0/16")
    assert f"dev {a.backend.device}" in routes
    assert b.backend.key.public in (await wg.show(a.backend.device)).peers
    result = ping(a.ns, "10.244.2.0")
    assert result.returncode == 0, result.stdout + result.stderr
