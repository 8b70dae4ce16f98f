"""Backend state read from the health server's thread while the control loop changes peers.

The kernel backends built their peer lists with Python generators over dicts the control loop
mutates: a scrape in the middle of a peer change raised 'dictionary changed size during
iteration' (found in review: 179 of 200 scrapes failed in a reproduction). They copy in C now.

A copy in C is atomic only while it runs no Python code. ``list(d.items())`` allocates a tuple
per item; once the tuple free list is empty an allocation can start the garbage collector, whose
finalizers and callbacks are Python code that can hand the GIL to the control loop mid-copy (a CI
run failed so, once in a full suite). :func:`collecting` makes that deterministic.
"""

import contextlib
import gc
import ipaddress
import sys
import threading

import pytest

from overlayd.backend.hostgw import HostGwBackend
from overlayd.backend.vxlan import KernelVxlanBackend


@contextlib.contextmanager
def collecting(table: dict, value):
    """While in the block, every allocation of a tracked object collects, each collection changes
    ``table`` as the control loop would if the collector handed it the GIL, and the tuple free list
    starts empty (each tuple made is a new allocation)."""
    i = 0

    def change(phase, info):
        nonlocal i
        if phase == "start":
            table[ipaddress.IPv4Network((0x0AF80000 + 256 * i, 24))] = value
            i += 1

    threshold = gc.get_threshold()
    held = [(n, None) for n in range(5000)]  # more tuples than the free list keeps
    gc.callbacks.append(change)
    gc.set_threshold(1)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(change)
        del held


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


@pytest.mark.parametrize("cls, attr, value", [
    (HostGwBackend, "routes", ipaddress.IPv4Address("198.18.0.12")),
    (KernelVxlanBackend, "peers", ("198.18.0.12", "0e:00:00:00:00:01", False)),
])
def test_peer_list_and_stats_survive_a_collection_that_changes_peers(cls, attr, value):
    backend = cls.__new__(cls)
    table = {ipaddress.IPv4Network((0x0AF40000 + 256 * i, 24)): value for i in range(1000)}
    setattr(backend, attr, table)
    backend.skipped, backend.leases = set(), {}
    with collecting(table, value):
        backend.peer_subnets()
        backend.stats()
    assert len(table) > 1000  # the collector ran and changed the table
