"""UDP sockets of a test on one loopback port.

A port from ``free_port()`` is free when it is looked at, not when it is bound: the suite's
workers share the root namespace's loopback, and another bound it in between (a CI run failed
so: "cannot open UDP 127.0.0.1:50649: Address already in use"). Here the kernel picks the port
for the first socket, and the others take the same port on their own addresses, the whole set
tried again on the rare clash."""

from __future__ import annotations

import socket
from collections.abc import Callable


def on_one_port(first: Callable[[int], socket.socket], addresses: list[str],
                tries: int = 20) -> tuple[socket.socket, dict[str, socket.socket]]:
    """``first(0)``, a socket bound to a port the kernel picks, and a UDP socket bound to that port
    on each of ``addresses`` (by address); bounded: ``tries`` sets at most."""
    for _ in range(tries):
        sock = first(0)
        port, others = sock.getsockname()[1], {}
        try:
            for address in addresses:
                others[address] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                others[address].bind((address, port))
            return sock, others
        except OSError:
            for s in (sock, *others.values()):
                s.close()
    raise OSError(f"no loopback port free on {addresses} in {tries} tries")
