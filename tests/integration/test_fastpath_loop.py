"""The C engine's data plane end to end without root, as in test_dataplane_loop:
a datagram socketpair stands in for the tun, peers live on 127.0.0.x. Here the
engine's threads are checked (bursts in order to several peers, peer-table
swaps while they run, a stop that does not wait for traffic, a thread failure
that ends the plane, superpackets through a stand-in vnet_hdr device, UDP GSO
sends and UDP_GRO receives in the checksummed mode) and the C plane must leave
exactly the counters the Python plane leaves for the same traffic."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import select
import socket
import struct
import threading
import time

import pytest

from overlayd.dataplane import fast
from overlayd.dataplane.codecs import UdpCodec, VxlanCodec
from overlayd.dataplane.loop import DataPlane, Sender
from overlayd.dataplane.sockets import open_udp
from overlayd.encap import gso, udp
from overlayd.encap.drops import Counters, Drop
from overlayd.encap.ipv4 import internet_checksum
from overlayd.encap.table import Peer, PeerTable
from overlayd.errors import PlumbingError
from overlayd.lab import bench
from tests.unit.test_gso_parity import flood, tcp, tso

from .loopback import on_one_port

pytestmark = pytest.mark.skipif(not fast.available(), reason="the C fast path is not built")

OWN = ipaddress.IPv4Network("10.244.1.0/24")
PEERS = {"127.0.0.2": ipaddress.IPv4Network("10.244.2.0/24"),
         "127.0.0.3": ipaddress.IPv4Network("10.244.3.0/24")}
BROADCAST_SUBNET = ipaddress.IPv4Network("10.244.4.0/24")  # its "node" refuses datagrams (EACCES)
ROGUE = "127.0.0.4"  # holds no lease
OFF_PORT = "off-port"  # send_in from a peer's address but not from the backend's port
SOL_UDP, UDP_SEGMENT = 17, 103
VNI = 7
OWN_MAC = bytes.fromhex("02aa00000001")


def peer_mac(ip: str) -> bytes:
    """A peer's VtepMAC in the VXLAN rigs."""
    return bytes([2, 0xbb]) + socket.inet_aton(ip) if ip[0].isdigit() else bytes.fromhex("02cc00000000")


def ipv4(src: str, dst: str, payload: bytes = b"x" * 16, proto: int = 17) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
    return header + payload


class Rig:
    """A data plane of class ``cls`` between a stand-in tun and two loopback peers."""

    def __init__(self, cls, vnet_hdr: bool = False, udp_gso: bool = False, vxlan: bool = False):
        self.sock, self.peers = on_one_port(lambda port: open_udp("127.0.0.1", port, no_check=not udp_gso),
                                            [*PEERS, ROGUE])
        self.port = self.sock.getsockname()[1]
        for s in self.peers.values():
            s.settimeout(2)
        self.table = PeerTable(24)
        for ip, subnet in PEERS.items():
            self.table.set(subnet, Peer(ip, peer_mac(ip) if vxlan else None))
        self.table.set(BROADCAST_SUBNET, Peer("255.255.255.255", peer_mac("x") if vxlan else None))
        self.counters = Counters()
        self.dev_ours, self.dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.dev.setblocking(False)
        self.off_port = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a peer's address, another port
        self.off_port.bind(("127.0.0.2", 0))
        self.codec = VxlanCodec(self.table, OWN, VNI, OWN_MAC, self.port) if vxlan else \
            UdpCodec(self.table, OWN, self.port)
        self.plane = cls(self.dev_ours.fileno(), self.sock, self.codec,
                         Sender(self.sock, self.port, self.counters), self.counters, vnet_hdr=vnet_hdr,
                         **({"udp_gso": True} if udp_gso else {}))

    def send_in(self, sender: str, dgram: bytes) -> None:
        """Send ``dgram`` from ``sender``'s port (``OFF_PORT``: from 127.0.0.2, another port)."""
        sock = self.off_port if sender == OFF_PORT else self.peers[sender]
        sock.sendto(dgram, ("127.0.0.1", self.port))

    def send_in_gso(self, sender: str, dgrams: list[bytes]) -> None:
        """Send ``dgrams`` (equal sizes but the last) from ``sender``'s port in one UDP GSO sendmsg."""
        cmsg = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", len(dgrams[0])))]
        self.peers[sender].sendmsg([b"".join(dgrams)], cmsg, 0, ("127.0.0.1", self.port))

    def sender(self, name: str) -> tuple[str, int]:
        """The (address, port) a datagram from ``send_in(name, ...)`` arrives from."""
        return (self.off_port if name == OFF_PORT else self.peers[name]).getsockname()

    async def settled(self) -> dict:
        """The counters once they stop moving (accepted packets are written to the device a
        moment after they are counted as received)."""
        last = self.plane.snapshot()
        for _ in range(100):
            await asyncio.sleep(0.02)
            snap = self.plane.snapshot()
            if snap == last:
                return snap
            last = snap
        raise AssertionError(f"counters never settled: {last}")

    async def wait_for(self, **counts: int) -> dict:
        deadline = asyncio.get_running_loop().time() + 10.0  # a condition, bounded: 2 s was short under load
        while asyncio.get_running_loop().time() < deadline:
            snap = self.plane.snapshot()
            if all(snap.get(name, 0) >= n for name, n in counts.items()):
                return snap
            await asyncio.sleep(0.01)
        raise AssertionError(f"counters never reached {counts}: {self.plane.snapshot()}")

    def close(self) -> None:
        self.plane.stop()
        for s in (self.dev_ours, self.dev, self.sock, self.off_port, *self.peers.values()):
            s.close()


@pytest.fixture
def rigs():
    made = []

    def make(cls=fast.FastDataPlane, vnet_hdr: bool = False, udp_gso: bool = False, vxlan: bool = False):
        made.append(Rig(cls, vnet_hdr, udp_gso, vxlan))
        return made[-1]

    yield make
    for rig in made:
        rig.close()


async def test_packets_cross_both_ways_intact(rigs):
    rig = rigs()
    loop = asyncio.get_running_loop()
    rig.plane.start(loop)
    for size in (0, 1, 1452, 8952):
        pkt = ipv4("10.244.1.5", "10.244.3.7", payload=bytes(range(256)) * (size // 256) + b"y" * (size % 256))
        rig.dev.send(pkt)
        data, (src, sport) = await asyncio.to_thread(rig.peers["127.0.0.3"].recvfrom, 65535)
        assert (data, src, sport) == (pkt, "127.0.0.1", rig.port)

        back = ipv4("10.244.3.7", "10.244.1.5", payload=pkt[20:])
        rig.send_in("127.0.0.3", back)
        assert await asyncio.wait_for(loop.sock_recv(rig.dev, 65535), 2) == back


async def test_a_burst_to_two_peers_arrives_complete_and_in_order(rigs):
    rig = rigs()
    burst = [ipv4("10.244.1.5", f"10.244.{2 + i % 2}.7", payload=i.to_bytes(4, "big") * 8) for i in range(200)]
    for pkt in burst:  # queued before the plane starts: it must drain them in batches
        rig.dev.send(pkt)
    rig.plane.start(asyncio.get_running_loop())
    for ip, want in (("127.0.0.2", burst[0::2]), ("127.0.0.3", burst[1::2])):
        got = [(await asyncio.to_thread(rig.peers[ip].recvfrom, 65535))[0] for _ in want]
        assert got == want
    snap = rig.plane.snapshot()
    assert snap["tx_packets"] == snap["dev_rx_packets"] == 200
    assert snap["tx_bytes"] == snap["dev_rx_bytes"] == sum(map(len, burst))


async def test_drops_are_counted_by_reason_and_no_lease_is_answered(rigs):
    rig = rigs()
    loop = asyncio.get_running_loop()
    rig.plane.start(loop)
    back = ipv4("10.244.2.7", "10.244.1.5")
    rig.send_in("127.0.0.2", ipv4("10.244.2.7", "10.244.3.9"))   # not our subnet
    rig.send_in("127.0.0.2", b"\x45\x00")                         # truncated
    rig.send_in("127.0.0.2", b"\x60" + bytes(39))                 # IPv6
    rig.send_in("127.0.0.2", b"\x45\x00\x00\x10" + back[4:])      # total length < header
    rig.send_in(ROGUE, back)                                      # no lease
    rig.send_in(OFF_PORT, back)                                   # not from the backend's port
    rig.send_in("127.0.0.2", ipv4("10.244.3.7", "10.244.1.5"))    # another node's pod as source
    rig.send_in("127.0.0.2", ipv4("10.244.2.7", "10.244.1.255"))  # to our broadcast address
    lost = ipv4("10.244.1.5", "10.244.9.9", proto=6)
    rig.dev.send(lost)
    answer = await asyncio.wait_for(loop.sock_recv(rig.dev, 65535), 2)
    assert answer[9] == 1 and answer[20:22] == b"\x03\x01"        # ICMP host unreachable
    assert socket.inet_ntoa(answer[12:16]) == "10.244.1.1" and socket.inet_ntoa(answer[16:20]) == "10.244.1.5"
    assert answer[28:] == lost[:28]                               # quotes its header + 8 bytes
    snap = await rig.wait_for(rx_packets=8)
    assert {k: v for k, v in snap.items() if k.startswith("drop_")} == {
        "drop_not_our_subnet": 1, "drop_truncated": 1, "drop_not_ipv4": 1, "drop_bad_ip_header": 1,
        "drop_unknown_sender": 1, "drop_no_lease": 1, "drop_wrong_source_port": 1,
        "drop_spoofed_source": 1, "drop_to_broadcast_address": 1}
    assert snap["dev_tx_packets"] == 1  # the ICMP answer; nothing else reached the device
    assert snap["dev_tx_bytes"] == len(answer)


def traffic() -> tuple[list[bytes], list[tuple[str, bytes]]]:
    """Outbound packets and inbound (sender, datagram) pairs covering every verdict and error."""
    out = [ipv4("10.244.1.5", "10.244.2.7"), ipv4("10.244.1.5", "10.244.4.1"),  # sent; EACCES
           ipv4("10.244.1.5", "10.244.3.7", payload=b"z" * 999), ipv4("10.244.1.5", "10.244.9.9"),
           b"\x45" + bytes(10), b"\x60" + bytes(39), b"\x43" + bytes(39), b""]
    out += [ipv4("10.244.1.5", f"10.244.{2 + i % 3}.{i}") for i in range(40)]
    inbound = [("127.0.0.2", ipv4("10.244.2.7", "10.244.1.5")), ("127.0.0.3", ipv4("10.244.3.7", "10.244.1.9")),
               ("127.0.0.2", ipv4("10.244.2.7", "10.244.5.5")), ("127.0.0.3", b"\x45"), ("127.0.0.2", b""),
               (ROGUE, ipv4("10.244.2.7", "10.244.1.5")), ("127.0.0.2", b"\x46" + bytes(19)),
               (OFF_PORT, ipv4("10.244.2.7", "10.244.1.5")), ("127.0.0.3", ipv4("10.244.2.7", "10.244.1.5")),
               ("127.0.0.2", ipv4("10.244.1.7", "10.244.1.5")), ("127.0.0.2", ipv4("8.8.8.8", "10.244.1.5")),
               ("127.0.0.3", ipv4("10.244.3.7", "10.244.1.0")), ("127.0.0.3", ipv4("10.244.3.7", "10.244.1.255")),
               ("127.0.0.3", ipv4("10.244.3.7", "10.244.1.254"))]
    return out, inbound


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on ``sock`` (non-blocking)."""
    got = []
    while True:
        try:
            got.append(sock.recv(65535))
        except BlockingIOError:
            return got


async def run_traffic(rig: Rig, close_device_after: bool = False) -> dict:
    out, inbound = traffic()
    rig.plane.start(asyncio.get_running_loop())
    for pkt in out:
        rig.dev.send(pkt)
    await rig.wait_for(dev_rx_packets=len(out))
    if close_device_after:
        rig.dev.close()  # writes to the device now fail (ECONNREFUSED)
    for sender, dgram in inbound:
        rig.send_in(sender, dgram)
    return await rig.wait_for(rx_packets=len(inbound))


@pytest.mark.parametrize("close_device", [False, True], ids=["device-ok", "device-gone"])
async def test_the_c_plane_counts_exactly_like_the_python_plane(rigs, close_device):
    python, c = rigs(DataPlane), rigs(fast.FastDataPlane)
    await run_traffic(python, close_device)
    await run_traffic(c, close_device)
    want, got = await python.settled(), await c.settled()
    assert got == want
    assert got["tx_error_eacces"] == 1 + 40 // 3 and got["drop_no_lease"] == 1
    if not close_device:  # what the device got: 4 accepted datagrams and the ICMP answer, counted in bytes
        for rig in (python, c):
            written = drain(rig.dev)
            assert len(written) == got["dev_tx_packets"] == 5
            assert rig.plane.snapshot()["dev_tx_bytes"] == sum(map(len, written))
    if close_device:
        assert sum(n for k, n in got.items() if k.startswith("dev_write_error_")) == 4  # all accepted


async def test_batches_deliver_what_the_python_reference_accepts(rigs):
    rig = rigs()
    loop = asyncio.get_running_loop()
    out, inbound = traffic()
    rig.plane.start(loop)
    for pkt in out:
        rig.dev.send(pkt)
    for ip in PEERS:
        want = [pkt for pkt in out if not isinstance(v := udp.outbound(pkt, rig.table), Drop)
                and v[0].node_ip == ip]
        assert [(await asyncio.to_thread(rig.peers[ip].recv, 65535)) for _ in want] == want
    await rig.wait_for(dev_rx_packets=len(out), dev_tx_packets=1)
    assert (await loop.sock_recv(rig.dev, 65535))[9] == 1  # the ICMP answer to the no-lease packet

    for sender, dgram in inbound:
        rig.send_in(sender, dgram)
    want = [dgram for name, dgram in inbound if not isinstance(
        udp.inbound(dgram, rig.sender(name), rig.port, rig.codec.subnet_int, rig.codec.mask, rig.table), Drop)]
    assert len(want) == 4
    assert [await asyncio.wait_for(loop.sock_recv(rig.dev, 65535), 2) for _ in want] == want


async def test_runs_on_uvloop_in_its_own_thread(rigs):
    uvloop = pytest.importorskip("uvloop")
    rig = rigs()
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        loop.call_soon_threadsafe(rig.plane.start, loop)
        burst = [ipv4("10.244.1.5", "10.244.2.7", payload=i.to_bytes(4, "big")) for i in range(100)]
        for pkt in burst:
            rig.dev.send(pkt)
        assert [(await asyncio.to_thread(rig.peers["127.0.0.2"].recv, 100)) for _ in burst] == burst
        back = ipv4("10.244.2.7", "10.244.1.5")
        rig.send_in("127.0.0.2", back)
        assert await asyncio.wait_for(asyncio.get_running_loop().sock_recv(rig.dev, 100), 2) == back
    finally:
        loop.call_soon_threadsafe(rig.plane.stop)
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, 5)
        loop.close()


async def test_peer_changes_reach_the_running_engine(rigs):
    rig = rigs()
    loop = asyncio.get_running_loop()
    rig.plane.start(loop)
    late = ipaddress.IPv4Network("10.244.7.0/24")
    pkt = ipv4("10.244.1.5", "10.244.7.9")
    rig.dev.send(pkt)
    await rig.wait_for(drop_no_lease=1)
    assert (await asyncio.wait_for(loop.sock_recv(rig.dev, 100), 2))[9] == 1  # its ICMP answer
    rig.table.set(late, Peer("127.0.0.3"))  # as UserspaceBackend.apply does it
    rig.plane.peers_changed()
    rig.dev.send(pkt)
    assert (await asyncio.to_thread(rig.peers["127.0.0.3"].recv, 100)) == pkt
    rig.send_in("127.0.0.3", ipv4("10.244.7.9", "10.244.1.5"))  # the new lease may send its pods' packets
    assert await asyncio.wait_for(loop.sock_recv(rig.dev, 100), 2) == ipv4("10.244.7.9", "10.244.1.5")
    rig.table.remove(late)
    rig.plane.peers_changed()
    rig.dev.send(pkt)
    await rig.wait_for(drop_no_lease=2)


async def test_stop_returns_at_once_and_the_engine_restarts(rigs):
    rig = rigs()
    loop = asyncio.get_running_loop()
    for _ in range(3):
        before = time.monotonic()
        rig.plane.start(loop)
        # a beat from the start, not 0 until both threads first turn (a fresh node's watchdog saw its
        # data plane 'stalled' for the whole uptime: the heartbeat age is now - last_beat)
        assert before <= rig.plane.last_beat() <= time.monotonic()
        started = loop.time()
        await asyncio.to_thread(rig.plane.stop)  # idle threads: woken by the eventfd, not by a timeout
        assert loop.time() - started < 0.4 and rig.plane.last_beat() is None
    rig.plane.start(loop)
    pkt = ipv4("10.244.1.5", "10.244.2.7")
    rig.dev.send(pkt)
    assert (await asyncio.to_thread(rig.peers["127.0.0.2"].recv, 100)) == pkt


def engine_threads() -> int:
    """This process's threads named as the engine names its own (scripts/bench counts their idle CPU)."""
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm", encoding="utf-8") as f:
                names.append(f.read().strip())
        except OSError:  # ended meanwhile
            continue
    return names.count(bench.ENGINE_THREAD)


async def test_the_engine_threads_are_named_for_the_bench(rigs):
    rig = rigs()
    before = engine_threads()
    rig.plane.start(asyncio.get_running_loop())
    assert engine_threads() == before + 2
    await asyncio.to_thread(rig.plane.stop)
    assert engine_threads() == before


async def test_a_failed_thread_ends_the_plane(rigs):
    rig = rigs()
    rig.plane.start(asyncio.get_running_loop())
    rig.dev_ours.close()  # the device fd goes away under the tun reader (poll: POLLNVAL)
    with pytest.raises(PlumbingError, match="device reader"):
        await asyncio.wait_for(rig.plane.ended, 3)


def test_a_restarted_engine_does_not_report_the_old_failure(rigs):
    rig = rigs()
    engine = rig.plane.engine
    fresh_ours, fresh = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    engine.start()
    fd = rig.dev_ours.detach()
    os.close(fd)  # the tun reader fails (POLLNVAL) and says so through notify_fd
    assert select.select([engine.notify_fd], [], [], 3)[0] and engine.error() is not None
    engine.stop()
    os.dup2(fresh_ours.fileno(), fd)  # the engine's fd is a device again
    os.set_blocking(fd, False)
    rig.dev_ours = socket.socket(fileno=fd)
    engine.start()
    assert engine.error() is None
    pkt = ipv4("10.244.1.5", "10.244.2.7")
    fresh.send(pkt)
    assert rig.peers["127.0.0.2"].recv(100) == pkt and engine.error() is None
    for s in (fresh_ours, fresh):
        s.close()


class FailingStart:
    """An Engine whose start() fails (e.g. no threads left), otherwise the real one."""

    def __init__(self, engine):
        self.engine = engine

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def start(self):
        raise OSError(11, "Resource temporarily unavailable")


async def test_a_failed_start_leaves_no_reader_on_the_loop(rigs):
    rig = rigs()
    loop = asyncio.get_running_loop()
    rig.plane.engine = FailingStart(rig.plane.engine)
    with pytest.raises(OSError):
        rig.plane.start(loop)
    assert not loop.remove_reader(rig.plane.engine.notify_fd)  # False: nothing was left registered


async def test_superpackets_through_a_vnet_hdr_device(rigs):
    rig = rigs(vnet_hdr=True)
    loop = asyncio.get_running_loop()
    hdr, superpacket = tso(bytes(range(256)) * 40, 1420)
    back = [tcp(bytes([i]) * 1420, seq=9000 + i * 1420, src="10.244.2.7", dst="10.244.1.5") for i in range(5)]
    rig.dev.send(hdr.pack() + superpacket)  # queued before the engine starts: each side is one batch
    for seg in back:
        rig.send_in("127.0.0.2", seg)
    rig.plane.start(loop)
    # out: the TSO read leaves as the MSS-sized datagrams encap.gso.segment cuts
    want = gso.segment(hdr, superpacket)
    assert len(want) == 8
    assert [await asyncio.to_thread(rig.peers["127.0.0.2"].recv, 65535) for _ in want] == want
    # in: the peer's consecutive segments are written as the one superpacket encap.gso.coalesce makes
    (joined_hdr, joined), = gso.coalesce(back)
    assert joined_hdr.gso_type == gso.GSO_TCPV4
    assert await asyncio.wait_for(loop.sock_recv(rig.dev, 65535), 2) == joined_hdr.pack() + joined
    snap = await rig.wait_for(dev_tx_packets=5)
    assert (snap["dev_rx_superpackets"], snap["dev_rx_packets"], snap["tx_packets"]) == (1, 1, 8)
    assert snap["dev_tx_superpackets"] == 1
    assert snap["dev_tx_bytes"] == len(joined)  # what the device got, without its virtio header
    # an ICMP answer to the vnet_hdr device carries an empty header
    rig.dev.send(gso.NO_OFFLOAD_HEADER + ipv4("10.244.1.5", "10.244.9.9"))
    answer = await asyncio.wait_for(loop.sock_recv(rig.dev, 65535), 2)
    assert answer[:gso.HEADER_LEN] == gso.NO_OFFLOAD_HEADER and answer[gso.HEADER_LEN + 9] == 1


@pytest.mark.parametrize("udp_runs", [True, False, None])
async def test_a_udp_flood_is_written_in_runs_where_the_device_takes_them(rigs, udp_runs):
    """Issue 20: a peer's flood of one flow's datagrams reaches a vnet_hdr device as the UDP superpackets
    gso.coalesce makes (one write per run: the kernel cuts them back), where the device takes UDP GSO
    writes; else one by one. None: probed, and a socketpair is no device that takes them."""
    rig = rigs(vnet_hdr=True)
    rig.plane = fast.FastDataPlane(rig.dev_ours.fileno(), rig.sock, rig.codec, Sender(rig.sock, rig.port, rig.counters),
                                   rig.counters, vnet_hdr=True, udp_runs=udp_runs)
    loop = asyncio.get_running_loop()
    dgrams = flood(12, src="10.244.2.7", dst="10.244.1.5")
    for dgram in dgrams:  # queued before the engine starts: one batch
        rig.send_in("127.0.0.2", dgram)
    rig.plane.start(loop)
    want = gso.coalesce(dgrams, udp=bool(udp_runs))
    assert len(want) == (1 if udp_runs else 12)
    assert [await asyncio.wait_for(loop.sock_recv(rig.dev, 65535), 2) for _ in want] == [h.pack() + p for h, p in want]
    snap = await rig.wait_for(dev_tx_packets=12)
    assert snap.get("dev_tx_superpackets", 0) == (1 if udp_runs else 0)
    assert snap["dev_tx_bytes"] == sum(len(p) for _, p in want)


async def test_udp_gso_sends_a_superpacket_as_the_reference_segments(rigs):
    rig = rigs(vnet_hdr=True, udp_gso=True)
    hdr, superpacket = tso(bytes(range(256)) * 250, 1420)
    rig.dev.send(hdr.pack() + superpacket)
    rig.plane.start(asyncio.get_running_loop())
    # the peer's socket has no UDP_GRO: the kernel cuts each GSO send back into the datagrams it carries
    want = gso.segment(hdr, superpacket)
    assert len(want) == 46 and len(set(map(len, want[:-1]))) == 1
    assert [await asyncio.to_thread(rig.peers["127.0.0.2"].recv, 65535) for _ in want] == want
    snap = await rig.wait_for(tx_packets=46)
    # 44 segments of 1460 bytes fill one send (65507 bytes at most): two sends for 46
    assert (snap["tx_packets"], snap["tx_gso_sends"], snap["tx_bytes"]) == (46, 2, sum(map(len, want)))


def test_udp_gso_needs_a_checksumming_socket(rigs):
    rig = rigs()
    with pytest.raises(ValueError, match="SO_NO_CHECK"):
        fast.FastDataPlane(rig.dev_ours.fileno(), rig.sock, rig.codec, None, Counters(), udp_gso=True)


@pytest.mark.parametrize("udp_gso", [False, True])
async def test_udp_gro_buffers_are_split_and_judged_datagram_by_datagram(rigs, udp_gso):
    """Whatever its own mode, the engine takes a peer's UDP GSO send as one UDP_GRO buffer, splits it
    and decides on each datagram as on a lone one: the spoofed one in the middle is dropped."""
    rig = rigs(vnet_hdr=True, udp_gso=udp_gso)
    loop = asyncio.get_running_loop()
    rig.plane.start(loop)
    back = [tcp(bytes([i]) * 1420, seq=9000 + i * 1420, src="10.244.2.7", dst="10.244.1.5") for i in range(5)]
    rig.send_in_gso("127.0.0.2", back)
    (joined_hdr, joined), = gso.coalesce(back)
    assert await asyncio.wait_for(loop.sock_recv(rig.dev, 65535), 2) == joined_hdr.pack() + joined

    mixed = [ipv4("10.244.2.7", "10.244.1.5", payload=bytes([i]) * 100) for i in range(3)]
    mixed[1] = ipv4("10.244.3.7", "10.244.1.5", payload=b"s" * 100)  # 10.244.3.0/24 is not 127.0.0.2's
    rig.send_in_gso("127.0.0.2", mixed + [ipv4("10.244.2.7", "10.244.1.5", payload=b"end")])
    for want in (mixed[0], mixed[2]):
        assert await asyncio.wait_for(loop.sock_recv(rig.dev, 65535), 2) == gso.NO_OFFLOAD_HEADER + want
    assert await asyncio.wait_for(loop.sock_recv(rig.dev, 65535), 2) == \
        gso.NO_OFFLOAD_HEADER + ipv4("10.244.2.7", "10.244.1.5", payload=b"end")  # the shorter last one
    snap = await rig.wait_for(dev_tx_packets=8)
    assert (snap["rx_packets"], snap["rx_coalesced"], snap["drop_spoofed_source"]) == (9, 2, 1)
    assert snap["rx_bytes"] == sum(map(len, back + mixed)) + 23


async def test_a_udp_gro_buffer_is_coalesced_without_checking_tcp_checksums_again(rigs):
    """The kernel validated the UDP checksum of every datagram in a UDP_GRO buffer, which covers the
    whole inner packet: a wrong inner TCP checksum field there does not stop coalescing (the superpacket's
    checksum is the kernel's to compute). The same packets as lone datagrams (which may have had checksum
    0) are checked: the bad one and its neighbours are written alone."""
    rig = rigs(vnet_hdr=True)
    loop = asyncio.get_running_loop()
    rig.plane.start(loop)
    back = [tcp(bytes([i]) * 1420, seq=9000 + i * 1420, src="10.244.2.7", dst="10.244.1.5") for i in range(3)]
    back[1] = back[1][:36] + bytes([back[1][36] ^ 1]) + back[1][37:]  # the TCP checksum field
    rig.send_in_gso("127.0.0.2", back)
    (joined_hdr, joined), = gso.coalesce(back, [True] * 3)
    assert await asyncio.wait_for(loop.sock_recv(rig.dev, 65535), 2) == joined_hdr.pack() + joined
    for seg in back:
        rig.send_in("127.0.0.2", seg)
    for hdr, pkt in gso.coalesce(back):
        assert hdr == gso.NO_OFFLOAD
        assert await asyncio.wait_for(loop.sock_recv(rig.dev, 65535), 2) == hdr.pack() + pkt
    snap = await rig.wait_for(dev_tx_packets=6)
    assert (snap["rx_coalesced"], snap["dev_tx_superpackets"]) == (1, 1)


def vxlan_traffic() -> tuple[list[bytes], list[tuple[str, bytes]]]:
    """traffic() on the VXLAN wire: tap frames out, VXLAN datagrams in, plus the VXLAN-only refusals."""
    out, inbound = traffic()
    frames = [OWN_MAC + OWN_MAC + b"\x08\x00" + pkt for pkt in out]
    frames += [OWN_MAC + OWN_MAC + b"\x08\x06" + bytes(28), b"\x02" * 13, b""]  # ARP, short, empty
    vx = bytes([8, 0, 0, 0, 0, 0, VNI, 0])
    dgrams = [(sender, vx + OWN_MAC + peer_mac(sender if sender[0].isdigit() else "127.0.0.2") + b"\x08\x00" + d)
              for sender, d in inbound]
    good = ipv4("10.244.2.7", "10.244.1.5")
    dgrams += [("127.0.0.2", bytes([0, 0, 0, 0, 0, 0, VNI, 0]) + OWN_MAC + peer_mac("127.0.0.2") + b"\x08\x00" + good),
               ("127.0.0.2", bytes([8, 0, 0, 0, 0, 0, VNI + 1, 0]) + OWN_MAC + peer_mac("127.0.0.2") + b"\x08\x00"
                + good),
               ("127.0.0.2", vx + b"\xff" * 6 + peer_mac("127.0.0.2") + b"\x08\x00" + good),   # broadcast: fine
               ("127.0.0.2", vx + bytes(6) + peer_mac("127.0.0.2") + b"\x08\x00" + good),       # not for us
               ("127.0.0.2", vx + OWN_MAC + peer_mac("127.0.0.3") + b"\x08\x00" + good),        # wrong MAC
               ("127.0.0.2", vx + OWN_MAC + peer_mac("127.0.0.2") + b"\x86\xdd" + good),        # not IPv4
               ("127.0.0.2", vx + b"\0" * 10)]                                                  # truncated
    return frames, dgrams


async def run_vxlan_traffic(rig: Rig) -> tuple[dict, list[bytes], list[tuple[bytes, str]]]:
    """Counters, the frames written to the tap, and what reached the peers (payload, peer)."""
    frames, dgrams = vxlan_traffic()
    loop = asyncio.get_running_loop()
    rig.plane.start(loop)
    for frame in frames:
        rig.dev.send(frame)
    await rig.wait_for(dev_rx_packets=len(frames))
    for sender, dgram in dgrams:
        rig.send_in(sender, dgram)
    snap = await rig.wait_for(rx_packets=len(dgrams))
    await asyncio.sleep(0.05)
    written = drain(rig.dev)
    sent = []
    for ip in PEERS:
        rig.peers[ip].setblocking(False)
        while True:
            try:
                sent.append((rig.peers[ip].recv(65535), ip))
            except BlockingIOError:
                break
    return rig.plane.snapshot(), written, sent


async def test_vxlan_on_the_engine_counts_and_forwards_like_the_python_plane(rigs):
    python, c = rigs(DataPlane, vxlan=True), rigs(fast.FastDataPlane, vxlan=True)
    want = await run_vxlan_traffic(python)
    got = await run_vxlan_traffic(c)
    assert got == want
    snap, written, sent = got
    for reason in ("bad_vxlan", "wrong_vni", "not_for_us", "wrong_source_mac", "not_ipv4", "truncated",
                   "unknown_sender", "spoofed_source", "no_lease"):
        assert snap.get("drop_" + reason), reason
    assert "drop_wrong_source_port" not in snap  # VXLAN takes any source port
    assert len(sent) == 2 + sum(i % 3 != 2 for i in range(40)) and all(p[:8] == bytes([8, 0, 0, 0, 0, 0, VNI, 0]) for p, _ in sent)
    assert all(p[8:14] == peer_mac(ip) for p, ip in sent)  # re-addressed to the peer's VtepMAC
    assert any(w[14:] == ipv4("10.244.2.7", "10.244.1.5") for w in written)
    assert snap["dev_tx_bytes"] == sum(map(len, written)) and snap["dev_tx_packets"] == len(written)
