"""Backend state read from the health server's thread while the control loop changes peers.

The kernel backends built their peer lists with Python generators over dicts the control loop
mutates: a scrape in the middle of a peer change raised 'dictionary changed size during
iteration' (found in review: 179 of 200 scrapes failed in a reproduction). They copy in C now.
"""

import ipaddress
import sys
import threading

import pytest

from overlayd.backend.hostgw import HostGwBackend
from overlayd.backend.vxlan import KernelVxlanBackend


def churn(table: dict, value, stop: threading.Event) -> None:
    i = 0
    while not stop.is_set():
        net = ipaddress.IPv4Network((0x0AF40000 + 256 * (i % 4000), 24))
        table[net] = value
        table.pop(ipaddress.IPv4Network((0x0AF40000 + 256 * ((i + 2000) % 4000), 24)), None)
        i += 1


@pytest.mark.parametrize("cls, attr, value", [
    (HostGwBackend, "routes", ipaddress.IPv4Address("198.18.0.12")),
    (KernelVxlanBackend, "peers", ("198.18.0.12", "0e:00:00:00:00:01", False)),
])
def test_peer_list_and_stats_survive_concurrent_peer_changes(cls, attr, value):
    backend = cls.__new__(cls)  # only the peer state matters here
    table = {ipaddress.IPv4Network((0x0AF40000 + 256 * i, 24)): value for i in range(1000)}
    setattr(backend, attr, table)
    backend.skipped, backend.leases = set(), {}  # leases: the kernel VXLAN's programmed leases (direct_peers)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    stop = threading.Event()
    worker = threading.Thread(target=churn, args=(table, value, stop))
    worker.start()
    try:
        for _ in range(200):  # bounded: 200 scrapes
            if cls is KernelVxlanBackend:
                backend._version += 1  # it keeps its lists per table version: make them again each time
            backend.peer_subnets()
            backend.stats()
    finally:
        stop.set()
        worker.join(5)
        sys.setswitchinterval(old)
