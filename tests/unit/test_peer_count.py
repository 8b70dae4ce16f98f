"""The peer count of systemd's STATUS= line and of overlayd_peers (issue 20 §4): made again only
when the peers change. The status line is checked every second; at 5000 peers counting took
~15 ms (a str() per lease), most of an idle daemon's CPU."""

from __future__ import annotations

import ipaddress
import types

from overlayd import health


class Subnet:
    """A subnet whose str() is counted."""

    made = 0

    def __init__(self, text: str):
        self.text = text

    def __str__(self) -> str:
        Subnet.made += 1
        return self.text


def peer(i: int, routed: list[str]):
    text = f"10.244.{i}.0/24"
    routed.append(text)
    return (types.SimpleNamespace(subnet=Subnet(text), subnet6=None), 0.0), text


def daemon(seen: dict, routed: list[str]):
    lease = types.SimpleNamespace(subnet=ipaddress.IPv4Network("10.244.250.0/24"), time_left=lambda now: 60)
    backend = types.SimpleNamespace(peer_subnets=lambda: routed)
    return types.SimpleNamespace(lease=lease, lease_lost=False, ready=True, peers_seen=seen, backend=backend,
                                 connectivity=types.SimpleNamespace(up=True))


def test_the_status_line_counts_the_peers_again_only_when_they_change():
    routed: list[str] = []
    seen = {i: peer(i, routed)[0] for i in range(100)}
    state = daemon(seen, routed)
    Subnet.made = 0
    assert health.status_line(state) == "leased 10.244.250.0/24; 100 peers"
    first = Subnet.made
    assert health.status_line(state) == "leased 10.244.250.0/24; 100 peers"
    assert Subnet.made == first  # nothing changed: not counted again (was 100 str() more per line)
    seen[100], _ = peer(100, routed)  # a peer joins: counted again
    assert health.status_line(state) == "leased 10.244.250.0/24; 101 peers"
    routed.remove("10.244.3.0/24")  # one the backend no longer reaches
    assert health.status_line(state) == "leased 10.244.250.0/24; 100 peers"
    seen[5] = (types.SimpleNamespace(subnet=Subnet("10.244.200.0/24"), subnet6=None), 0.0)  # replaced: unrouted
    assert health.status_line(state) == "leased 10.244.250.0/24; 99 peers"
