"""The few sysctls a node needs, written through /proc/sys (per network namespace).

Only one is host-wide: ``net.ipv4.ip_forward`` (pod traffic is routed
between cni0 and the overlay device or the underlay; Linux has no
per-device switch that would do). Everything else is set per overlay
device (tun0, overlay0, flannel.<VNI>, cni0) and goes away with the device,
so the host's own policy (``conf/all``, ``conf/default``, other interfaces)
is never touched. When overlayd turns forwarding on, it notes the old value
in a journal file (once: a restart finds it already on and keeps the first
note), so ``--cleanup-on-exit`` can put it back with :func:`restore`.
"""

from __future__ import annotations

import json
import logging
import os

from ..atomicfile import write_atomic
from ..errors import PlumbingError

log = logging.getLogger(__name__)
PROC = "/proc/sys/net"
FORWARDING = f"{PROC}/ipv4/ip_forward"


def _write(path: str, value: str, optional: bool = False) -> str | None:
    """Write ``value`` unless it is there already; the value it replaced, or None if unchanged."""
    try:
        with open(path) as f:
            old = f.read().strip()
        if old == value:
            return None
        with open(path, "w") as f:
            f.write(value)
        return old
    except FileNotFoundError:
        if optional:
            log.debug("%s does not exist; skipped", path)
            return None
        raise PlumbingError(f"cannot set {path}: no such sysctl") from None
    except OSError as exc:
        raise PlumbingError(f"cannot set {path}: {exc.strerror}") from None


def _journal(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise PlumbingError(f"cannot read sysctl journal {path}: {exc}") from None


def enable_forwarding(journal: str | None = None) -> None:
    """net.ipv4.ip_forward=1 (a new network namespace starts with it off).

    If it was off and ``journal`` is given, the old value is noted there for
    :func:`restore`, unless an earlier run already noted one.
    """
    old = _write(FORWARDING, "1")
    if old is None or journal is None:
        return
    noted = _journal(journal)
    if FORWARDING not in noted:
        try:
            write_atomic(journal, json.dumps({**noted, FORWARDING: old}) + "\n")
        except OSError as exc:
            raise PlumbingError(f"cannot write sysctl journal {journal}: {exc.strerror}") from None


def restore(journal: str) -> list[str]:
    """Put back the values noted in ``journal`` and delete it; what was restored ("path=value")."""
    noted = _journal(journal)
    for path, value in noted.items():
        _write(path, value)
    if noted:
        try:
            os.unlink(journal)
        except OSError as exc:
            raise PlumbingError(f"cannot remove sysctl journal {journal}: {exc.strerror}") from None
    return [f"{path}={value}" for path, value in noted.items()]


def set_rp_filter(dev: str, value: int) -> None:
    """rp_filter for overlay device ``dev``: 2 (loose) lets overlay replies in on tun0/cni0.

    Per device only: the kernel applies max(conf/all, conf/<dev>), so a
    loose device value works whatever the host's ``all`` says.
    """
    _write(f"{PROC}/ipv4/conf/{dev}/rp_filter", str(value))


def disable_ipv6(dev: str) -> None:
    """No IPv6 on ``dev`` (the overlay is IPv4-only); a kernel without IPv6 is fine."""
    _write(f"{PROC}/ipv6/conf/{dev}/disable_ipv6", "1", optional=True)
