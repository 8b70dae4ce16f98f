"""Choosing a subnet to lease. Pure: the random source is passed in."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable

from ..errors import NetworkFullError
from ..netconf import NetworkConfig


def _covered(config: NetworkConfig, taken: ipaddress.IPv4Network) -> Iterable[ipaddress.IPv4Network]:
    """The /SubnetLen subnets of the Network that a lease on ``taken`` overlaps.

    Leases of another length exist after an operator changes SubnetLen while
    old leases live on: a new lease must not overlap them.
    """
    if not taken.overlaps(config.network):
        return ()
    if taken.prefixlen >= config.subnet_len:
        return (taken.supernet(new_prefix=config.subnet_len),)
    if taken.prefixlen <= config.network.prefixlen:
        return config.subnets()
    return taken.subnets(new_prefix=config.subnet_len)


def free_subnets(
    config: NetworkConfig, taken: Iterable[ipaddress.IPv4Network]
) -> list[ipaddress.IPv4Network]:
    """The subnets between SubnetMin and SubnetMax that no lease holds or overlaps, in order."""
    used: set[ipaddress.IPv4Network] = set()
    for t in taken:
        used.update(_covered(config, t))
    return [s for s in config.subnets() if s not in used]


def choose_subnet(
    config: NetworkConfig,
    taken: Iterable[ipaddress.IPv4Network],
    rng: random.Random | None = None,
) -> ipaddress.IPv4Network:
    """Pick a free subnet at random (spreading racing nodes apart).

    Raises :class:`NetworkFullError` when every subnet is taken.
    """
    free = free_subnets(config, taken)
    if not free:
        total = len(config.subnets())
        raise NetworkFullError(
            f"network {config.network} is full: all {total} /{config.subnet_len} subnets "
            f"between {config.subnet_min} and {config.subnet_max} are leased"
        )
    return (rng or random).choice(free)
