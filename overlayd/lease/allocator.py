"""Choosing a subnet to lease. Pure: the random source is passed in."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable

from ..errors import NetworkFullError
from ..netconf import NetworkConfig


def free_subnets(
    config: NetworkConfig, taken: Iterable[ipaddress.IPv4Network]
) -> list[ipaddress.IPv4Network]:
    """The subnets between SubnetMin and SubnetMax that nobody holds, in order."""
    used = set(taken)
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
