"""A C engine whose peer table is swapped as fast as Python can build one while a flood crosses it,
run by test_fastpath_swap.py in a network namespace of its own (loopback only: a datagram sent to a
wrong address cannot leave it).

``python engine_swap_child.py PACKET_HEX COUNT PEERS SECONDS`` forks a flooder that writes COUNT
copies of the IPv4 packet to the stand-in tun (a datagram socketpair), while this process swaps two
tables of PEERS peers into the engine: table A routes the packet's subnet to 127.0.0.2, table B does
not hold it (a no_lease drop); in both, every other subnet belongs to 127.0.0.3. Every datagram the
engine sends therefore belongs at 127.0.0.2. Prints one JSON line: the engine's counters, the
datagrams each address received, and the swaps done. Ends after SECONDS at most.

The flood goes in ROUNDS bursts, each released by a swap (a byte on a pipe), so that however fast
the engine drains the flood on a busy machine, at least ROUNDS swaps happen while it crosses.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
import time

from pyroute2 import IPRoute

from overlayd import _fastpath
from overlayd.encap.table import Peer, PeerTable

OWN = ipaddress.IPv4Network("10.1.0.0/24")
TARGET = "127.0.0.2"  # the packet's subnet's node in table A
OTHERS = "127.0.0.3"  # every other subnet's node
SO_RCVBUFFORCE = 33
ROUNDS = 40  # bursts of the flood, each after a swap


def tables(packet: bytes, peers: int) -> tuple[PeerTable, PeerTable]:
    """A (with the packet's subnet) and B (without), both with ``peers`` other subnets."""
    dst = ipaddress.IPv4Network((int.from_bytes(packet[16:20], "big") & 0xFFFFFF00, 24))
    a, b = PeerTable(24), PeerTable(24)
    padding = ipaddress.IPv4Network("10.128.0.0/9").subnets(new_prefix=24)
    for _, subnet in zip(range(peers), padding):
        for t in (a, b):
            t.set(subnet, Peer(OTHERS))
    a.set(dst, Peer(TARGET))
    return a, b


def receiver(ip: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)  # the whole flood fits: nothing lost here
    s.bind((ip, port))
    s.setblocking(False)
    return s


def drain(s: socket.socket) -> int:
    n = 0
    while True:
        try:
            s.recv(65536)
        except BlockingIOError:
            return n
        n += 1


def main() -> None:
    packet, count, peers, seconds = bytes.fromhex(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), \
        float(sys.argv[4])
    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    port = 8285
    dev_ours, dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    released, release = os.pipe()
    flooder = os.fork()
    if flooder == 0:  # before any thread: write the flood, blocking while the engine is behind
        dev_ours.close()
        os.close(release)
        for burst in range(ROUNDS):
            if not os.read(released, 1):  # the parent is gone
                break
            for _ in range(count // ROUNDS + (burst < count % ROUNDS)):
                dev.send(packet)
        os._exit(0)
    dev.close()
    os.close(released)
    os.set_blocking(release, False)
    os.set_blocking(dev_ours.fileno(), False)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    received = {ip: receiver(ip, port) for ip in (TARGET, OTHERS)}
    a, b = tables(packet, peers)
    engine = _fastpath.Engine(dev_ours.fileno(), sock.fileno(), port, int(OWN.network_address),
                              int(OWN.netmask), a)
    engine.start()
    swaps, deadline = 0, time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            engine.set_peers(b if swaps % 2 else a)
            swaps += 1
            try:
                os.write(release, b"s")  # the next burst may go
            except (BlockingIOError, BrokenPipeError):  # bursts enough released, or all written
                pass
            counts = engine.counters()[0]
            if counts.get("dev_rx_packets", 0) >= count:
                break
    finally:
        engine.stop()
        os.close(release)
        os.waitpid(flooder, 0)
    counts, tx_errors, _ = engine.counters()
    print(json.dumps({"counters": counts, "tx_errors": tx_errors, "swaps": swaps,
                      "received": {ip: drain(s) for ip, s in received.items()}}))


if __name__ == "__main__":
    main()
