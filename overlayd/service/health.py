"""Endpoint health: the node that owns an endpoint checks it and says whether it is ready.

What is checked: the endpoint's first TCP port of its service (at the endpoint's port for
it): a TCP connect, or with the service's ``HealthCheckPath`` an HTTP/1.0 GET of that path
answered 2xx or 3xx. A service with UDP ports only is not checked (nothing answers a UDP
probe for sure): its endpoints stay as published.

When: every :attr:`HealthSettings.period` seconds, each probe given ``timeout``. A state
changes after ``failures`` failed or ``successes`` passed probes in a row; with the
defaults (0.3 s, 0.3 s, 1, 1) an endpoint that stops answering is published not ready
within 0.6 s (a refused connect at once, a hung one after the timeout), and every node
drops it from its table a few milliseconds after etcd has it: within a second everywhere,
as issue 22 asks. Only changes are written to etcd.

:class:`Verdicts` is the pure part (thresholds per endpoint); :func:`probe` the I/O.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable

from .model import TCP, Endpoint, Service


@dataclasses.dataclass(frozen=True)
class HealthSettings:
    """How endpoints are checked (see the module note)."""

    period: float = 0.3
    timeout: float = 0.3
    failures: int = 1  # failed probes in a row that make a ready endpoint not ready
    successes: int = 1  # passed probes in a row that make a not-ready endpoint ready


@dataclasses.dataclass(frozen=True)
class Check:
    """One probe to run: the endpoint's address, port and (HTTP) path; ``path`` None: TCP connect."""

    ip: str
    port: int
    path: str | None = None


def check_for(service: Service, ep: Endpoint) -> Check | None:
    """What to probe for ``ep`` of ``service``; None when it has no TCP port (not checked)."""
    port = next((p for p in service.ports if p.protocol == TCP), None)
    if port is None:
        return None
    return Check(str(ep.ip), ep.target(port), service.health_path)


class Verdicts:
    """Probe results in a row per endpoint key -> the state to publish. Pure."""

    def __init__(self, settings: HealthSettings):
        self.settings = settings
        self._streak: dict[str, tuple[bool, int]] = {}  # key -> (last result, how many in a row)

    def forget(self, keep: Iterable[str]) -> None:
        """Drop the streaks of endpoints no longer checked here."""
        keep = set(keep)
        self._streak = {k: v for k, v in self._streak.items() if k in keep}

    def judge(self, key: str, ready: bool, passed: bool) -> bool | None:
        """The endpoint ``key`` (published ``ready``) passed a probe or not: its new state when
        it must change, else None."""
        last, count = self._streak.get(key, (passed, 0))
        count = count + 1 if last == passed else 1
        self._streak[key] = (passed, count)
        if ready and not passed and count >= self.settings.failures:
            return False
        if not ready and passed and count >= self.settings.successes:
            return True
        return None


async def probe(check: Check, timeout: float) -> bool:
    """Run ``check``: True when the endpoint answered as it should within ``timeout``."""
    try:
        return await asyncio.wait_for(_probe(check), timeout)
    except (OSError, asyncio.TimeoutError, ValueError, IndexError):
        return False


async def _probe(check: Check) -> bool:
    reader, writer = await asyncio.open_connection(check.ip, check.port)
    try:
        if check.path is None:
            return True
        writer.write(f"GET {check.path} HTTP/1.0\r\nHost: {check.ip}:{check.port}\r\n"
                     "User-Agent: overlayd-health\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status = (await reader.readline()).split()
        return len(status) >= 2 and status[0].startswith(b"HTTP/") and 200 <= int(status[1]) < 400
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
