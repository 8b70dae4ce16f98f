"""Stale UDP flows: the conntrack entries of endpoints a node no longer sends to (issue 22).

Only a connection's first packet reaches the NAT chains; conntrack DNATs the rest to the
endpoint that one chose. TCP connections end; a UDP flow does not: its entry's timeout
restarts with every datagram, so a client that keeps sending (a DNS resolver's socket, a
game, a VPN) keeps reaching an endpoint that was removed or is not ready, for as long as it
sends. Like kube-proxy (``pkg/proxy/conntrack``), the node deletes the UDP entries of an
endpoint its table stopped using, once the table no longer names it: the flow's next
datagram is load-balanced again. An entry is one of a gone endpoint's when its original
destination is the ClusterIP and port (or any address at the NodePort) and its reply comes
from the endpoint's address and target port.

:func:`udp_backends` and :func:`stale` are pure; :class:`ConntrackFlusher` is the netlink edge
(``pyroute2``), blocking: the proxy calls it in a thread.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from collections.abc import Iterable

from pyroute2 import Conntrack
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from ..errors import PlumbingError
from .model import UDP, Endpoint, Service


@dataclasses.dataclass(frozen=True, order=True)
class Backend:
    """Where a node's table sends UDP: to ``dst`` (a ClusterIP; None: any address, a NodePort)
    port ``port``, the endpoint ``ip`` port ``target``."""

    port: int
    ip: ipaddress.IPv4Address
    target: int
    dst: ipaddress.IPv4Address | None = None

    def __str__(self) -> str:
        return f"{self.dst or 'NodePort'}:{self.port} -> {self.ip}:{self.target}"


def udp_backends(services: Iterable[Service], endpoints: Iterable[Endpoint]) -> frozenset[Backend]:
    """Every (UDP destination, ready endpoint) pair the services ask for. Pure."""
    ports = {s.name: (s.cluster_ip, [p for p in s.ports if p.protocol == UDP]) for s in services}
    found = set()
    for ep in endpoints:
        cluster_ip, udp = ports.get(ep.service, (None, []))
        if not ep.ready:
            continue
        for port in udp:
            if cluster_ip is not None:
                found.add(Backend(port.port, ep.ip, ep.target(port), cluster_ip))
            if port.node_port:
                found.add(Backend(port.node_port, ep.ip, ep.target(port)))
    return frozenset(found)


def stale(before: frozenset[Backend], after: frozenset[Backend]) -> list[Backend]:
    """The backends a table no longer uses, whose flows are to be cut. Pure."""
    return sorted(before - after, key=lambda b: (b.port, b.ip, b.target, str(b.dst)))


class ConntrackFlusher:
    """Deletes the UDP conntrack entries of stale backends in this network namespace."""

    def flush(self, backends: Iterable[Backend]) -> int:
        """Delete every entry of ``backends`` (see the module note); how many went.
        :class:`PlumbingError` when conntrack cannot be read or written."""
        deleted = 0
        try:
            with Conntrack() as ct:
                for b in backends:
                    orig = NFCTAttrTuple(proto=socket.IPPROTO_UDP, daddr=None if b.dst is None else str(b.dst),
                                         dport=b.port)
                    reply = NFCTAttrTuple(proto=socket.IPPROTO_UDP, saddr=str(b.ip), sport=b.target)
                    for entry in list(ct.dump_entries(tuple_orig=orig, tuple_reply=reply)):
                        try:
                            ct.delete(entry)
                        except NetlinkError as exc:
                            if exc.code != 2:  # ENOENT: it timed out meanwhile
                                raise
                        else:
                            deleted += 1
        except (NetlinkError, OSError) as exc:
            raise PlumbingError(f"cannot delete conntrack entries: {exc}") from None
        return deleted
