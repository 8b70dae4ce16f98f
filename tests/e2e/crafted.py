"""Crafted underlay datagrams for end-to-end tests, sent with scapy from inside a lab namespace.

A raw socket lets a test send from any source port, the overlay's own port
included, even while the node's overlayd holds that port: what a process on
a member node (or anyone forging a member's address) can do. Packets only
ever leave through the namespace's own links, which end inside the lab.
"""

from __future__ import annotations

import sys

from overlayd.lab.topology import run

_SEND = """
import sys
from scapy.layers.inet import IP, UDP
from scapy.sendrecv import send
src, dst, dport, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
packets = []
for item in sys.argv[5:]:
    sport, payload = item.split(":")
    packets.append(IP(src=src, dst=dst) / UDP(sport=int(sport), dport=dport) / bytes.fromhex(payload))
send(packets * count, verbose=0)
"""


def send_udp(netns: str, src_ip: str, dst_ip: str, datagrams: list[tuple[int, bytes]],
             dport: int = 8472, count: int = 1) -> None:
    """Send each ``(source port, payload)`` from ``src_ip`` to ``dst_ip:dport``, ``count`` rounds, from ``netns``."""
    items = [f"{sport}:{payload.hex()}" for sport, payload in datagrams]
    run(["ip", "netns", "exec", netns, sys.executable, "-c", _SEND, src_ip, dst_ip, str(dport), str(count),
         *items], timeout=60)
