"""The forwarding loop end to end without root: a datagram socketpair stands in
for the tun device and the peers live on loopback (127.0.0.0/8). Every test
runs on the Python data plane and on the C fast path, which must behave alike."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct

import pytest

from overlayd.dataplane import fast
from overlayd.dataplane.codecs import UdpCodec
from overlayd.dataplane.loop import DataPlane, Sender
from overlayd.dataplane.sockets import open_udp
from overlayd.encap.drops import Counters, Drop
from overlayd.encap.ipv4 import internet_checksum
from overlayd.encap.table import Peer, PeerTable

from .loopback import on_one_port

OWN = ipaddress.IPv4Network("10.244.1.0/24")
PEER_SUBNET = ipaddress.IPv4Network("10.244.2.0/24")


def ipv4(src: str, dst: str, payload: bytes = b"x" * 16, proto: int = 17) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
    return header + payload


PLANES = [DataPlane, pytest.param(fast.FastDataPlane, id="c", marks=pytest.mark.skipif(
    not fast.available(), reason="the C fast path is not built"))]


@pytest.fixture(params=PLANES)
def plane(request):
    sock, peers = on_one_port(lambda port: open_udp("127.0.0.1", port), ["127.0.0.2"])
    peer, port = peers["127.0.0.2"], sock.getsockname()[1]
    table = PeerTable(24)
    table.set(PEER_SUBNET, Peer("127.0.0.2", None))
    counters = Counters()
    dev_ours, dev_test = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    peer.settimeout(2)
    dp = request.param(dev_ours.fileno(), sock, UdpCodec(table, OWN, port), Sender(sock, port, counters), counters)
    yield dp, dev_test, peer, counters, port, table
    dp.stop()
    for s in (dev_ours, dev_test, sock, peer):
        s.close()


async def test_packets_cross_both_ways_and_drops_are_counted(plane):
    dp, dev, peer, counters, port, table = plane
    dp.start(asyncio.get_running_loop())
    dev.setblocking(False)

    # out: a pod packet for the peer's subnet leaves as the UDP payload, unchanged
    pkt = ipv4("10.244.1.5", "10.244.2.7")
    dev.send(pkt)
    data, (src, sport) = await asyncio.to_thread(peer.recvfrom, 65535)
    assert data == pkt and src == "127.0.0.1" and sport == port

    # in: a datagram from the peer for one of our pods is written to the device
    back = ipv4("10.244.2.7", "10.244.1.5")
    peer.sendto(back, ("127.0.0.1", port))
    loop = asyncio.get_running_loop()
    assert await asyncio.wait_for(loop.sock_recv(dev, 65535), 2) == back

    # in, dropped: for another subnet (would loop out of tun0 again), and garbage
    peer.sendto(ipv4("10.244.2.7", "10.244.3.9"), ("127.0.0.1", port))
    peer.sendto(b"\x45\x00", ("127.0.0.1", port))
    # in, dropped: a sender that holds no lease
    rogue = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rogue.bind(("127.0.0.3", 0))
    rogue.sendto(back, ("127.0.0.1", port))
    rogue.close()
    # in, dropped: the peer, but spoofing its inner source, to our broadcast, from another port
    for spoofed in ("10.244.3.7", "10.244.1.7", "8.8.8.8"):
        peer.sendto(ipv4(spoofed, "10.244.1.5"), ("127.0.0.1", port))
    peer.sendto(ipv4("10.244.2.7", "10.244.1.255"), ("127.0.0.1", port))
    other_port = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other_port.bind(("127.0.0.2", 0))
    other_port.sendto(back, ("127.0.0.1", port))
    other_port.close()

    # out, no lease: dropped and answered with ICMP unreachable from the node (its gateway, .1)
    lost = ipv4("10.244.1.5", "10.244.9.9")
    dev.send(lost)
    answer = await asyncio.wait_for(loop.sock_recv(dev, 65535), 2)
    assert answer[9] == 1 and answer[20] == 3  # ICMP, destination unreachable
    assert socket.inet_ntoa(answer[12:16]) == "10.244.1.1"
    assert socket.inet_ntoa(answer[16:20]) == "10.244.1.5"

    for _ in range(50):
        snap = dp.snapshot()
        if snap.get("drop_" + Drop.WRONG_SOURCE_PORT.value, 0) >= 1:
            break
        await asyncio.sleep(0.02)
    snap = dp.snapshot()
    assert {k: v for k, v in snap.items() if k.startswith("drop_")} == {"drop_" + d.value: n for d, n in (
        (Drop.NOT_OUR_SUBNET, 1), (Drop.TRUNCATED, 1), (Drop.UNKNOWN_SENDER, 1), (Drop.NO_LEASE, 1),
        (Drop.SPOOFED_SOURCE, 3), (Drop.TO_BROADCAST_ADDRESS, 1),
        (Drop.WRONG_SOURCE_PORT, 1))}
    assert snap["dev_tx_packets"] == 2  # the one accepted datagram and the ICMP answer
    assert snap["dev_tx_bytes"] == len(back) + len(answer)


async def test_a_burst_arrives_complete_and_in_order(plane):
    dp, dev, peer, counters, port, table = plane
    loop = asyncio.get_running_loop()
    dp.start(loop)
    dev.setblocking(False)
    burst = [ipv4("10.244.1.5", "10.244.2.7", payload=i.to_bytes(4, "big") * 8) for i in range(200)]
    for pkt in burst:  # the socketpair queues only ~10 datagrams: let the loop drain as we go
        await loop.sock_sendall(dev, pkt)
    received = [(await asyncio.to_thread(peer.recvfrom, 65535))[0] for _ in burst]
    assert received == burst
    assert dp.snapshot()["tx_packets"] == 200

    # and back, in bursts the stand-in device can queue: they land in order
    back = [ipv4("10.244.2.7", "10.244.1.5", payload=i.to_bytes(4, "big") * 8) for i in range(200)]
    got = []
    for start in range(0, len(back), 8):
        for pkt in back[start:start + 8]:
            peer.sendto(pkt, ("127.0.0.1", port))
        got += [await asyncio.wait_for(loop.sock_recv(dev, 65535), 2) for _ in back[start:start + 8]]
    assert got == back
    assert dp.snapshot()["dev_tx_packets"] == 200
