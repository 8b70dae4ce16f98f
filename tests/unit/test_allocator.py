import ipaddress
import random

import pytest

from overlayd.errors import NetworkFullError
from overlayd.lease.allocator import choose_subnet, is_free
from overlayd.netconf import BackendConfig, NetworkConfig, SubnetRange, parse_config

A = ipaddress.IPv4Address
N = ipaddress.IPv4Network


class Every:
    """A random source that answers ``randrange(n)`` with a given index (and records n)."""

    def __init__(self, index=0):
        self.index, self.n = index, None

    def randrange(self, n):
        self.n = n
        return self.index


def all_choices(cfg, taken):
    """Every subnet choose_subnet can return, in order: the free list, without listing it."""
    probe = Every()
    try:
        choose_subnet(cfg, taken, probe)
    except NetworkFullError:
        return []
    return [choose_subnet(cfg, taken, Every(i)) for i in range(probe.n)]


def every_subnet(cfg):
    """The oracle: all subnets from SubnetMin to SubnetMax, listed (small configs only)."""
    return [s for s in cfg.network.subnets(new_prefix=cfg.subnet_len) if cfg.contains_subnet(s)]


def test_choice_is_random_among_free_and_within_min_max():
    cfg = parse_config({"Network": "10.244.0.0/16", "SubnetMin": "10.244.10.0", "SubnetMax": "10.244.19.0"})
    rng = random.Random(1)
    taken = {N("10.244.10.0/24"), N("10.244.11.0/24")}
    seen = {choose_subnet(cfg, taken, rng) for _ in range(300)}
    assert seen == {N(f"10.244.{i}.0/24") for i in range(12, 20)}


def test_first_subnet_never_handed_out_by_default():
    cfg = parse_config({"Network": "10.244.0.0/22"})
    assert all_choices(cfg, []) == [N("10.244.1.0/24"), N("10.244.2.0/24"), N("10.244.3.0/24")]


def test_last_free_subnet_is_found():
    cfg = parse_config({"Network": "10.244.0.0/16"})
    taken = [s for s in every_subnet(cfg) if s != N("10.244.77.0/24")]
    assert choose_subnet(cfg, taken, random.Random(0)) == N("10.244.77.0/24")


@pytest.mark.parametrize("raw, taken, message", [
    ({"Network": "10.244.0.0/22"}, ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"],
     "network 10.244.0.0/22 is full: all 3 /24 subnets between 10.244.1.0 and 10.244.3.0 are leased"),
    ({"Network": "10.244.0.0/16"}, ["10.244.0.0/16"], "all 255 /24 subnets"),
    ({"Network": "10.244.0.0/16"}, ["10.0.0.0/8"], "all 255 /24 subnets"),  # a lease covering the network
    ({"Network": "10.0.0.0/8"}, ["10.0.0.0/9", "10.128.0.0/9"], "all 65535 /24 subnets"),
])
def test_full_network_is_a_clear_error(raw, taken, message):
    cfg = parse_config(raw)
    with pytest.raises(NetworkFullError, match=message):
        choose_subnet(cfg, [N(t) for t in taken])


@pytest.mark.parametrize("taken, blocked", [
    ("10.244.7.0/25", ["10.244.7.0/24"]),                    # a longer lease blocks its /24
    ("10.244.7.252/30", ["10.244.7.0/24"]),
    ("10.244.8.0/23", ["10.244.8.0/24", "10.244.9.0/24"]),   # a shorter one blocks all it covers
    ("10.244.0.0/23", ["10.244.1.0/24"]),                    # half of it below SubnetMin
    ("10.244.254.0/23", ["10.244.254.0/24", "10.244.255.0/24"]),
    ("10.244.0.0/24", []),                                   # the never-leased first subnet
    ("10.245.0.0/24", []),                                   # outside the Network: nothing
    ("10.243.255.0/24", []),
])
def test_overlapping_leases_of_another_length_count_as_taken(taken, blocked):
    cfg = parse_config({"Network": "10.244.0.0/16"})
    free = all_choices(cfg, [N(taken)])
    assert free == [s for s in every_subnet(cfg) if str(s) not in blocked]


@pytest.mark.parametrize("seed", range(20))
def test_choices_match_a_listing_oracle(seed):
    """Mixed-length, overlapping, duplicate and outside leases against brute force."""
    rng = random.Random(seed)
    cfg = parse_config({"Network": "10.244.0.0/20", "SubnetLen": 26,
                        "SubnetMin": "10.244.1.64", "SubnetMax": "10.244.14.128"})
    taken = []
    for _ in range(rng.randrange(0, 40)):
        length = rng.choice([18, 20, 22, 24, 25, 26, 26, 26, 27, 30, 32])
        addr = rng.randrange(int(N("10.243.240.0/20").network_address), int(N("10.244.32.0").network_address))
        taken.append(N((addr, length), strict=False))
    assert all_choices(cfg, taken) == [s for s in every_subnet(cfg) if is_free(cfg, taken, s)]


def test_choosing_never_lists_the_subnets():
    # 2**30 subnets (beyond what parse_config accepts: the allocator must not rely
    # on the cap); listing them takes gigabytes, counting intervals takes nothing
    cfg = NetworkConfig(SubnetRange(N("0.0.0.0/0"), 30, A("0.0.0.4"), A("255.255.255.252")),
                        BackendConfig())
    hole = N("255.255.255.200/30")
    taken = list(N("0.0.0.0/0").address_exclude(hole))  # 30 leases around one free subnet
    assert choose_subnet(cfg, taken, random.Random(0)) == hole
    assert all_choices(cfg, taken + [N("10.0.0.0/30")]) == [hole]
    with pytest.raises(NetworkFullError, match="all 1073741823 /30 subnets"):
        choose_subnet(cfg, [N("0.0.0.0/0")])


# is_free: the check behind the subnet.env hint; overlap, not exact membership
@pytest.mark.parametrize("taken, subnet, free", [
    (["10.244.2.0/23"], "10.244.3.0/24", False),   # issue 8 point 6: the /23 covers the hint
    (["10.244.2.0/23"], "10.244.2.0/24", False),
    (["10.244.2.0/23"], "10.244.4.0/24", True),
    (["10.244.3.128/25"], "10.244.3.0/24", False),
    (["10.244.0.0/16"], "10.244.9.0/24", False),
    (["10.244.3.0/24"], "10.244.3.0/24", False),
    ([], "10.244.3.0/24", True),
    (["10.245.3.0/24"], "10.244.3.0/24", True),
    ([], "10.244.0.0/24", False),                   # below SubnetMin (the first subnet)
    ([], "10.244.3.0/25", False),                   # not SubnetLen
    ([], "10.244.2.0/23", False),
    ([], "10.245.3.0/24", False),                   # outside the Network
])
def test_is_free(taken, subnet, free):
    cfg = parse_config({"Network": "10.244.0.0/16"})
    assert is_free(cfg, [N(t) for t in taken], N(subnet)) is free
