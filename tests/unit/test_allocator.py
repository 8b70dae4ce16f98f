import ipaddress
import random

import pytest

from overlayd.errors import NetworkFullError
from overlayd.lease.allocator import choose_subnet, free_subnets
from overlayd.netconf import parse_config

N = ipaddress.IPv4Network


def test_choice_is_random_among_free_and_within_min_max():
    cfg = parse_config({"Network": "10.244.0.0/16", "SubnetMin": "10.244.10.0", "SubnetMax": "10.244.19.0"})
    rng = random.Random(1)
    taken = {N("10.244.10.0/24"), N("10.244.11.0/24")}
    seen = {choose_subnet(cfg, taken, rng) for _ in range(300)}
    assert seen == {N(f"10.244.{i}.0/24") for i in range(12, 20)}


def test_first_subnet_never_handed_out_by_default():
    cfg = parse_config({"Network": "10.244.0.0/22"})
    assert N("10.244.0.0/24") not in free_subnets(cfg, [])


def test_last_free_subnet_is_found():
    cfg = parse_config({"Network": "10.244.0.0/16"})
    taken = [s for s in cfg.subnets() if s != N("10.244.77.0/24")]
    assert choose_subnet(cfg, taken, random.Random(0)) == N("10.244.77.0/24")


def test_full_network_is_a_clear_error():
    cfg = parse_config({"Network": "10.244.0.0/22"})
    with pytest.raises(NetworkFullError, match="10.244.0.0/22 is full: all 3 /24 subnets"):
        choose_subnet(cfg, cfg.subnets())


def test_taken_outside_range_does_not_matter():
    cfg = parse_config({"Network": "10.244.0.0/22"})
    assert len(free_subnets(cfg, [N("10.99.0.0/24")])) == 3


@pytest.mark.parametrize("taken, blocked", [
    ("10.244.7.0/25", ["10.244.7.0/24"]),                    # a longer lease blocks its /24
    ("10.244.8.0/23", ["10.244.8.0/24", "10.244.9.0/24"]),   # a shorter one blocks all it covers
    ("10.245.0.0/24", []),                                   # outside the Network: nothing
])
def test_overlapping_leases_of_another_length_count_as_taken(taken, blocked):
    cfg = parse_config({"Network": "10.244.0.0/16"})
    free = set(free_subnets(cfg, [N(taken)]))
    assert all(N(b) not in free for b in blocked)
    assert len(free) == len(cfg.subnets()) - len(blocked)


def test_a_lease_covering_the_network_leaves_nothing():
    cfg = parse_config({"Network": "10.244.0.0/16"})
    assert free_subnets(cfg, [N("10.0.0.0/8")]) == []
