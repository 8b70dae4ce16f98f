"""Pods joining services through the CNI plugin: the endpoint spool (issue 22).

The CNI plugin stays etcd-free (it only reads subnet.env): on ADD of a pod that names
services (``services`` in its network config or runtime config, or ``OVERLAYD_SERVICES=a,b``
in CNI_ARGS) it writes one small file per pod interface to the spool directory, and removes
it on DEL::

    /run/overlayd/endpoints/<containerid>-<ifname>.json
    {"ip": "10.244.3.5", "services": ["web", "api"]}

The daemon publishes what the spool says (:func:`plan`): an endpoint per (service, pod IP),
bound to its own etcd lease and marked ``"Source": "cni"``, and deletes the ``cni``
endpoints of its node that no spool file names any more. An endpoint added by hand
(``overlayctl endpoint add``) is never touched. The daemon re-reads the spool every second,
so it also puts back what a lost lease took with it, and a pod may name a service that is
created later.

:func:`plan` is pure; the file functions are the plugin's and the daemon's I/O.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from collections.abc import Iterable

from ..atomicfile import write_atomic
from ..errors import ServiceError
from .model import Endpoint, check_name

DEFAULT_DIR = "/run/overlayd/endpoints"
SOURCE = "cni"  # the endpoints the spool publishes


@dataclasses.dataclass(frozen=True)
class Entry:
    """One pod interface's wish: its IPv4 address and the services it joins."""

    ip: ipaddress.IPv4Address
    services: tuple[str, ...]


def parse_services(value: object, where: str) -> tuple[str, ...]:
    """A ``services`` list (or a comma-separated string, as in CNI_ARGS) of service names."""
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        raise ServiceError(f"{where}: services must be a list of service names")
    return tuple(check_name(n.strip(), f"{where}: service name") for n in names if n.strip())


def entry_path(directory: str, container_id: str, ifname: str) -> str:
    return os.path.join(directory, f"{container_id}-{ifname}.json")


def write_entry(path: str, entry: Entry) -> None:
    """Save ``entry`` atomically (the daemon never reads half a file)."""
    write_atomic(path, json.dumps({"ip": str(entry.ip), "services": list(entry.services)}) + "\n")


def remove_entry(path: str) -> None:
    """Forget an entry (the pod left); already gone is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def read_entries(directory: str) -> tuple[list[Entry], list[str]]:
    """The spool's entries, and one line per file that is not one (skipped)."""
    entries, problems = [], []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return [], []
    for name in names:
        if not name.endswith(".json"):
            continue
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="utf-8") as f:
                obj = json.load(f)
            entries.append(Entry(ipaddress.IPv4Address(obj["ip"]), parse_services(obj["services"], path)))
        except FileNotFoundError:
            continue  # removed by a DEL meanwhile
        except (OSError, ValueError, KeyError, TypeError, ServiceError) as exc:
            problems.append(f"{path}: {exc}")
    return entries, problems


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to change in etcd: endpoints to add (service, pod IP), and to delete."""

    add: tuple[tuple[str, ipaddress.IPv4Address], ...] = ()
    delete: tuple[Endpoint, ...] = ()


def plan(entries: Iterable[Entry], published: Iterable[Endpoint], services: Iterable[str],
         subnet: ipaddress.IPv4Network) -> Plan:
    """Move this node's ``cni`` endpoints to what the spool ``entries`` ask for: add the
    missing ones of existing ``services`` (for pod IPs in our ``subnet``), delete those no
    entry names. ``published`` are the endpoints in etcd now (any node, any source)."""
    existing = set(services)
    wanted = {(name, e.ip) for e in entries if e.ip in subnet for name in e.services if name in existing}
    ours = [ep for ep in published if ep.node == subnet and ep.source == SOURCE]
    have = {(ep.service, ep.ip) for ep in published if ep.node == subnet and ep.port is None}
    return Plan(add=tuple(sorted(wanted - have)), delete=tuple(ep for ep in ours if (ep.service, ep.ip) not in wanted))
