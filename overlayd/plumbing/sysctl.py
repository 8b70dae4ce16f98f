"""The few sysctls a node needs, written through /proc/sys (per network namespace)."""

from __future__ import annotations

import logging

from ..errors import PlumbingError

log = logging.getLogger(__name__)
PROC = "/proc/sys/net"


def _write(path: str, value: str, optional: bool = False) -> None:
    try:
        with open(path) as f:
            if f.read().strip() == value:
                return
        with open(path, "w") as f:
            f.write(value)
    except FileNotFoundError:
        if optional:
            log.debug("%s does not exist; skipped", path)
            return
        raise PlumbingError(f"cannot set {path}: no such sysctl") from None
    except OSError as exc:
        raise PlumbingError(f"cannot set {path}: {exc.strerror}") from None


def enable_forwarding() -> None:
    """net.ipv4.ip_forward=1 (a new network namespace starts with it off)."""
    _write(f"{PROC}/ipv4/ip_forward", "1")


def set_rp_filter(dev: str, value: int) -> None:
    """rp_filter for ``dev`` (or "all"): 2 (loose) lets overlay replies in on tun0/cni0."""
    _write(f"{PROC}/ipv4/conf/{dev}/rp_filter", str(value))


def disable_ipv6(dev: str) -> None:
    """No IPv6 on ``dev`` (the overlay is IPv4-only); a kernel without IPv6 is fine."""
    _write(f"{PROC}/ipv6/conf/{dev}/disable_ipv6", "1", optional=True)
