"""Choosing a subnet to lease. Pure: the random source is passed in.

The subnets between SubnetMin and SubnetMax are numbered as slots
``0 .. subnet_count - 1``; they are never listed. Each lease blocks the
interval of slots it overlaps (leases of another length exist after an
operator changes SubnetLen while old leases live on: a new lease must not
overlap them). Sorting and merging those intervals gives the free count,
and the k-th free slot is found by skipping the blocked intervals before it,
so choosing costs O(leases · log leases) whatever the number of subnets
(0.0.0.0/0 used to cost gigabytes before the config refused it).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable

from ..errors import NetworkFullError
from ..netconf import NetworkConfig


def _blocked(config: NetworkConfig, taken: Iterable[ipaddress.IPv4Network]) -> list[tuple[int, int]]:
    """The slots ``taken`` overlap, as sorted, disjoint, inclusive ``(first, last)`` intervals."""
    base, size, count = int(config.subnet_min), config.subnet_size, config.subnet_count
    spans = []
    for t in taken:
        # slot s spans base + s*size .. base + s*size + size - 1
        first = max(0, (int(t.network_address) - base) // size)
        last = min(count - 1, (int(t.broadcast_address) - base) // size)
        if first <= last:
            spans.append((first, last))
    merged: list[tuple[int, int]] = []
    for first, last in sorted(spans):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def is_free(config: NetworkConfig, taken: Iterable[ipaddress.IPv4Network],
            subnet: ipaddress.IPv4Network) -> bool:
    """Whether ``subnet`` may be leased: one of the config's subnets
    (SubnetLen, between SubnetMin and SubnetMax) that overlaps none of ``taken``.

    Overlap, not equality: a hint of 10.244.3.0/24 is not free while a lease
    on 10.244.2.0/23 lives on.
    """
    return config.contains_subnet(subnet) and not any(subnet.overlaps(t) for t in taken)


def choose_subnet(
    config: NetworkConfig,
    taken: Iterable[ipaddress.IPv4Network],
    rng: random.Random | None = None,
) -> ipaddress.IPv4Network:
    """Pick a free subnet uniformly at random (spreading racing nodes apart).

    Raises :class:`NetworkFullError` when every subnet is taken.
    """
    blocked = _blocked(config, taken)
    free = config.subnet_count - sum(last - first + 1 for first, last in blocked)
    if free <= 0:
        raise NetworkFullError(
            f"network {config.network} is full: all {config.subnet_count} /{config.subnet_len} "
            f"subnets between {config.subnet_min} and {config.subnet_max} are leased"
        )
    slot = (rng or random).randrange(free)
    for first, last in blocked:  # the slot-th free slot: skip the blocked ones before it
        if first > slot:
            break
        slot += last - first + 1
    return ipaddress.IPv4Network((int(config.subnet_min) + slot * config.subnet_size, config.subnet_len))
