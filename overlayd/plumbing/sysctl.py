"""The few sysctls a node needs, written through /proc/sys (per network namespace).

Every sysctl overlayd touches, and why:

- ``net.ipv4.ip_forward = 1`` (host-wide), for a node with IPv4 pods: pod
  traffic is routed between cni0 and the overlay device or the underlay;
  Linux has no per-device switch that would do.
- ``net.ipv6.conf.all.forwarding = 1`` (host-wide), for a node with IPv6
  pods, for the same reason. It has a side effect: an interface whose
  ``accept_ra`` is 1 stops accepting router advertisements once forwarding is
  on, so a SLAAC-configured underlay loses its default route (and its
  addresses, at their lifetime's end) some minutes later. Hence:
- ``net.ipv6.conf.<underlay>.accept_ra = 2`` (the underlay only), set *before*
  IPv6 forwarding goes on and only where it was 1 ("accept, unless
  forwarding"): 2 means "accept even when forwarding". An operator's 0 (no
  router advertisements) is left as it is; other interfaces are not touched.
- ``net.ipv4.conf.<dev>.rp_filter = 2`` on overlay devices and cni0
  (:func:`set_rp_filter`). IPv6 has no rp_filter sysctl.
- ``net.ipv4.conf.<dev>.accept_local = 1`` on the userspace overlay devices
  (:func:`set_accept_local`).
- ``net.ipv6.conf.<dev>.disable_ipv6 = 1`` on a device that carries IPv4 only
  (:func:`disable_ipv6`), which would otherwise send IPv6 noise; ``0`` on a
  userspace overlay device that carries IPv6 pods' traffic too
  (:func:`enable_ipv6`), whatever ``conf/default`` says.

The per-device ones go away with their device (tun0, overlay0,
flannel.<VNI>, cni0), so the host's own policy (``conf/default``, other
interfaces) is never touched. When overlayd changes a host-wide value or
the underlay's ``accept_ra``, it notes the old value in a journal file (once
per sysctl: a restart finds it already set and keeps the first note), so
``--cleanup-on-exit`` can put it back with :func:`restore`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable

from ..atomicfile import write_atomic
from ..errors import PlumbingError

log = logging.getLogger(__name__)
PROC = "/proc/sys/net"
FORWARDING = {4: f"{PROC}/ipv4/ip_forward", 6: f"{PROC}/ipv6/conf/all/forwarding"}


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


def enable_forwarding(journal: str | None = None, families: Iterable[int] = (4,),
                      underlay: str | None = None) -> None:
    """Forwarding on for each IP version in ``families`` (a new network namespace starts with it off).

    With 6 in ``families`` and an ``underlay`` interface, that interface's
    ``accept_ra`` goes from 1 to 2 first, so it keeps its router advertisements
    (see the module's notes). Each value changed is noted in ``journal`` (if
    given) for :func:`restore`, unless an earlier run already noted one.
    """
    families = tuple(families)
    if 6 in families and underlay is not None:
        accept_ra = f"{PROC}/ipv6/conf/{underlay}/accept_ra"
        if _read(accept_ra) == "1":
            _note(journal, accept_ra, _write(accept_ra, "2"))
    for version in families:
        _note(journal, FORWARDING[version], _write(FORWARDING[version], "1"))


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as exc:
        raise PlumbingError(f"cannot read {path}: {exc.strerror}") from None


def _note(journal: str | None, path: str, old: str | None) -> None:
    """Note ``path``'s ``old`` value in ``journal`` unless it was unchanged (None) or is noted already."""
    if old is None or journal is None:
        return
    noted = _journal(journal)
    if path not in noted:
        try:
            write_atomic(journal, json.dumps({**noted, path: old}) + "\n")
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


def set_accept_local(dev: str) -> None:
    """accept_local=1 on userspace overlay device ``dev``: a packet written to it from one of the
    node's own addresses is taken, not dropped as a martian. The data plane's ICMP answers come from
    cni0's .1 (:mod:`overlayd.encap.icmp`); what peers send never carries our addresses
    (:func:`overlayd.encap.receive.admit` refuses it before)."""
    _write(f"{PROC}/ipv4/conf/{dev}/accept_local", "1")


def disable_ipv6(dev: str) -> None:
    """No IPv6 on ``dev``, a device that carries IPv4 only; a kernel without IPv6 is fine."""
    _write(f"{PROC}/ipv6/conf/{dev}/disable_ipv6", "1", optional=True)


def enable_ipv6(dev: str) -> None:
    """IPv6 on ``dev``, an overlay device that carries IPv6 pods' traffic (issue 17)."""
    _write(f"{PROC}/ipv6/conf/{dev}/disable_ipv6", "0")
