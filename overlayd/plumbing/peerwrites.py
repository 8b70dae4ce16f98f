"""Many peers' kernel entries in one go: lines for iproute2's batch mode. Pure.

Design note (issue 20 §4). A kernel VXLAN peer is three entries: an onlink route via its
VTEP gateway, a permanent neighbour and an FDB entry (a direct peer, with DirectRouting,
one route via its public IP). Written one netlink request at a time through pyroute2,
each cost ~0.45 ms of Python: a daemon restarted among 5000 peers spent 7-9 s programming
them, CPU-bound. ``ip -force -batch -`` and ``bridge -force -batch -`` write the same
15,000 entries in ~0.4 s (measured here), in two processes of C; ``-force`` goes on past a
line that fails and names it (``Command failed -:N``), so one bad peer is still skipped
alone. Reads stay where they were (:meth:`Netlink.device_state`, iproute2's JSON).

:class:`Writes` collects the lines, each tagged with what it is for (the caller's peer)
and worded as a change for the drift log, in the words of the ``ensure_*`` methods of
:mod:`overlayd.plumbing.netlink`. Given a snapshot of the device
(:class:`~overlayd.plumbing.netlink.DeviceState`), an entry that is already right is not
written: that is the drift repair. :meth:`Netlink.write <overlayd.plumbing.netlink.Netlink.write>`
runs them; :func:`failed_lines` reads what failed from iproute2's stderr.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Hashable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (netlink imports this module)
    from .netlink import DeviceState

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclasses.dataclass(frozen=True)
class Line:
    """One batch line, what it is for (``tag``) and the change it makes, for the log."""

    tag: Hashable
    text: str
    change: str


class Writes:
    """Lines for ``ip -batch`` (routes, neighbours) and ``bridge -batch`` (FDB entries)."""

    def __init__(self) -> None:
        self.ip: list[Line] = []
        self.bridge: list[Line] = []

    def __len__(self) -> int:
        return len(self.ip) + len(self.bridge)

    def route(self, tag: Hashable, dst: Network, dev: str, gateway: Address | None = None,
              onlink: bool = False, state: DeviceState | None = None) -> None:
        """Route ``dst`` through ``dev`` (via ``gateway``), replacing any route to ``dst`` at the
        family's default metric, unless ``state`` has it so (as :meth:`Netlink.ensure_route`)."""
        via = None if gateway is None else str(gateway)
        have = None if state is None else state.routes.get(dst)
        if have is not None and have == (via, onlink):
            return
        spec = f"{dst}{f' via {via}' if via else ''} dev {dev}{' onlink' if onlink else ''}"
        self.ip.append(Line(tag, f"route replace {spec} proto static",  # as pyroute2 writes them
                            f"route {spec} was {'different' if have else 'missing'}"))

    def neighbour(self, tag: Hashable, ip: Address, mac: str, dev: str, state: DeviceState | None = None) -> None:
        """A permanent neighbour ``ip -> mac`` on ``dev``, unless ``state`` has it so."""
        have = None if state is None else state.neighbours.get(str(ip))
        if have is not None and have == mac.lower():
            return
        self.ip.append(Line(tag, f"neigh replace {ip} lladdr {mac} dev {dev} nud permanent",
                            f"neighbour {ip} lladdr {mac} dev {dev} was {'different' if have else 'missing'}"))

    def fdb(self, tag: Hashable, mac: str, dst: Address, dev: str, state: DeviceState | None = None) -> None:
        """A permanent FDB entry on VXLAN device ``dev``: frames for ``mac`` go to ``dst``, unless
        ``state`` has it."""
        if state is not None and (mac.lower(), str(dst)) in state.fdb:
            return
        self.bridge.append(Line(tag, f"fdb replace {mac} dev {dev} dst {dst} self permanent",
                                f"FDB {mac} dst {dst} dev {dev} was missing"))


_FAILED = re.compile(r"^Command failed -:(\d+)$")
_PREFIXES = ("RTNETLINK answers: ", "Error: ")


def failed_lines(stderr: str) -> dict[int, str]:
    """The lines (1-based) that a ``-force -batch -`` run reports as failed, each with the
    message iproute2 printed before it, in plain words (``Nexthop has invalid gateway``)."""
    failed, said = {}, []
    for text in stderr.splitlines():
        match = _FAILED.match(text.strip())
        if match is None:
            if text.strip():
                said.append(text.strip())
            continue
        message = said[-1] if said else "failed"
        for prefix in _PREFIXES:
            message = message.removeprefix(prefix)
        failed[int(match.group(1))] = message.rstrip(".")
        said = []
    return failed
