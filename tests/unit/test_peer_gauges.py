"""The skipped-peer count is a gauge (issue 21): it says how many peer leases this node does not
route to now, so it falls when such a peer leaves or becomes usable. It was a tally of skip events
that only grew (a resync re-skipping the same lease counted it again). host-gw's apply against a
fake netlink, no root."""

from __future__ import annotations

import ipaddress
import json

from overlayd.backend import create_backend, hostgw
from overlayd.backend.base import NodeOptions, Underlay
from overlayd.errors import PlumbingError
from overlayd.lease.model import Lease, LeaseAttrs
from overlayd.lease.watcher import Batch
from overlayd.netconf import parse_config

FAR = ipaddress.IPv4Address("198.51.100.9")  # "not on this L2 segment"


class FakeNetlink:
    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False

    async def device_state(self, *args, **kwargs):
        return None

    async def ensure_route(self, subnet, dev, gateway=None, state=None):
        if gateway == FAR:
            raise PlumbingError("Network is unreachable")

    async def delete_route(self, subnet, dev=None):
        pass


def peer(third: int, public_ip: str, btype: str = "host-gw") -> Lease:
    return Lease(ipaddress.IPv4Network(f"10.244.{third}.0/24"), LeaseAttrs(ipaddress.IPv4Address(public_ip), btype))


async def test_skipped_peers_counts_the_peers_skipped_now(monkeypatch):
    monkeypatch.setattr(hostgw, "Netlink", FakeNetlink)
    config = parse_config(json.dumps({"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}))
    backend = create_backend(config, Underlay("eth0", ipaddress.IPv4Address("198.18.0.11"), 1500), NodeOptions())
    near, far, udp = peer(2, "198.18.0.12"), peer(3, str(FAR)), peer(4, "198.18.0.14", "udp")
    await backend.apply(Batch(added=[near, far, udp]))
    assert backend.stats()["skipped_peers"] == 2
    await backend.apply(Batch(added=[far, udp]))  # a resync lists them again: still two peers skipped
    assert backend.stats()["skipped_peers"] == 2
    await backend.apply(Batch(removed=[far]))
    assert backend.stats()["skipped_peers"] == 1
    await backend.apply(Batch(added=[peer(4, "198.18.0.14")]))  # the udp node came back as host-gw
    assert backend.stats() == {"routes": 2, "skipped_peers": 0}
