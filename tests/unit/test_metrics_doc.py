"""docs/metrics.md against what /metrics exports (issue 21): every overlayd family a daemon exports
once it has a lease, for each backend and data path, is in the reference with its type and labels,
and the reference lists nothing the daemon does not export. No root, no server: the collector is read
as the server reads it."""

from __future__ import annotations

import ipaddress
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from overlayd.plumbing.kernelwatch import KernelWatch
from overlayd.backend import create_backend
from overlayd.backend import vxlan as vxlan_backend
from overlayd.backend import wireguard
from overlayd.backend.base import NodeOptions, Underlay
from overlayd.health import CountingLeaseWatcher, DaemonCollector
from overlayd.lease.model import Lease, LeaseAttrs
from overlayd.netconf import parse_config
from overlayd.plumbing import wg
from overlayd.watchdog import Liveness, LoopHeartbeat

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
ROW = re.compile(r"^\|\s*`(overlayd_\w+)`\s*\|\s*(\w+)\s*\|([^|]*)\|")
BACKENDS = [("udp", NodeOptions(datapath="python")), ("udp", NodeOptions(datapath="c")),
            ("vxlan", NodeOptions(vxlan_impl="user")), ("vxlan", NodeOptions(vxlan_impl="kernel")),
            ("host-gw", NodeOptions()), ("wireguard", NodeOptions())]
PEER_KEY = "mSwaz4HyIYV8eF8ystfsMlcJLE8uzKjC3aMYNzp5/y8="
PEER_DUMP = ("(hidden)\tQUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=\t51820\toff\n"
             f"{PEER_KEY}\t(none)\t198.18.0.12:51820\t10.244.2.0/24\t0\t0\t148\toff\n")


def documented() -> dict[str, tuple[str, set[str]]]:
    """Exposed family name -> (type, label names), from the reference's tables."""
    rows = {}
    for line in DOC.read_text().splitlines():
        if m := ROW.match(line):
            rows[m.group(1)] = (m.group(2), set(re.findall(r"`(\w+)`", m.group(3))))
    return rows


def exported(btype: str, options: NodeOptions) -> dict[str, tuple[str, set[str]]]:
    """Exposed family name -> (type, label names) of a daemon just up on ``btype``, as the text format has them."""
    config = parse_config(json.dumps({"Network": "10.244.0.0/16", "Backend": {"Type": btype}}))
    backend = create_backend(config, Underlay("eth0", ipaddress.IPv4Address("198.18.0.11"), 1500), options)
    if btype == "wireguard":  # a peer, as the device's dump shows it before the first handshake
        net = ipaddress.IPv4Network("10.244.2.0/24")
        backend.peers = {net: {"flannel-wg": wireguard._Peer(PEER_KEY, (net,), "198.18.0.12:51820")}}
        backend.peer_counters = {"flannel-wg": wg.parse_dump(PEER_DUMP).peers}
    liveness = Liveness()
    for name in ("control loop", "data plane"):
        beat = LoopHeartbeat()
        beat.last = time.monotonic()
        liveness.watch(name, beat)
    lease = Lease(ipaddress.IPv4Network("10.244.3.0/24"), LeaseAttrs(ipaddress.IPv4Address("198.18.0.11"), btype),
                  time.time() + 3600, handle=7)
    state = SimpleNamespace(ready=True, lease=lease, lease_lost=False, backend=backend, watcher=CountingLeaseWatcher(),
                            connectivity=SimpleNamespace(up=True, outages=0, reconnects=0), liveness=liveness,
                            kernel_watch=KernelWatch(), peers_seen={})
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(state))
    text = generate_latest(registry).decode()
    types = {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE ")}
    families = {}
    for family in text_string_to_metric_families(text):
        name = next(n for n in types if n in {family.name, family.name + "_total", family.name + "_info"})
        labels = {label for s in family.samples for label in s.labels}
        families[name] = (types[name], labels)
    return families


@pytest.fixture
def kernel_device(monkeypatch):
    """The kernel VXLAN device's statistics, as sysfs would give them."""
    names = [f"{d}_{k}" for d in ("rx", "tx") for k in ("packets", "bytes", "dropped", "errors")]
    monkeypatch.setattr(vxlan_backend, "read_device_statistics", lambda dev: dict.fromkeys(names, 0))
    monkeypatch.setattr(wireguard, "read_device_statistics", lambda dev: dict.fromkeys(names, 0))


@pytest.mark.parametrize("btype,options", BACKENDS, ids=lambda v: v if isinstance(v, str) else
                         f"{v.datapath}-{v.vxlan_impl}")
def test_every_family_exported_at_start_is_in_the_reference(btype, options, kernel_device):
    doc = documented()
    for name, (kind, labels) in exported(btype, options).items():
        assert name in doc, f"{name} ({kind}) is exported but not in docs/metrics.md"
        assert doc[name][0] == kind, f"{name}: docs/metrics.md says {doc[name][0]}, /metrics has {kind}"
        assert labels <= doc[name][1], f"{name}: labels {labels - doc[name][1]} are not in docs/metrics.md"


def test_the_reference_lists_nothing_that_is_not_exported(kernel_device):
    """Each documented family and label is exported by some backend (overlayd_datapath_info's
    event_loop only by the userspace ones)."""
    seen: dict[str, set[str]] = {}
    for btype, options in BACKENDS:
        for name, (_, labels) in exported(btype, options).items():
            seen.setdefault(name, set()).update(labels)
    assert {name: labels for name, (_, labels) in documented().items()} == seen
