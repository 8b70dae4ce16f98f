"""Whether etcd answers, and waking the loops that wait for it.

Design note. A node must notice an etcd outage within seconds and resume the
moment etcd is back: renewals that arrive after etcd's grace period lose the
lease, and a watch that resumes 30 s late leaves the peer table stale. gRPC
keepalives on an idle watch stream were measured to take ~70 s to notice a
stopped etcd here, and exponential backoff without jitter made every node
retry at the same instant. So the daemon runs one :class:`Connectivity`
monitor: it probes etcd every few seconds while it answers (one cheap read,
~720 requests per node per hour) and, once a call anywhere fails, probes with
a short jittered backoff until it answers again. It logs "etcd unreachable
at ENDPOINT: REASON" (a warning, in plain words: see ``plain_words`` in
:mod:`overlayd.lease.etcd`) once and "etcd back" (info) once per outage; the renew and watch loops wait on it
instead of sleeping through their own backoff, and are woken the instant
etcd is back (the renew loop renews at once then).

A broken watch is not an outage by itself: the peer watch asks :meth:`Connectivity.check`,
which probes at once; only a failed probe marks etcd unreachable. A watch that
keeps breaking while etcd answers is the watch loop's business (it backs off
and says so once), not an "etcd unreachable"/"etcd back" pair per break.

Time enters only through the ``sleep`` callable and the random source.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from ..errors import StoreError, StoreRetryable, StoreUnavailable

log = logging.getLogger("overlayd")

PROBE_INTERVAL = 5.0  # seconds between probes while etcd answers
PROBE_RETRY_CAP = 2.0  # longest pause between probes while it does not


class Backoff:
    """Exponential backoff with a cap and jitter; ``reset()`` after success.

    ``next()`` returns a delay drawn from [d/2, d] where d doubles from
    ``first`` up to ``cap``, so nodes that failed together do not retry
    together.
    """

    def __init__(self, first: float = 0.5, cap: float = 30.0, rng: random.Random | None = None):
        self.first, self.cap = first, cap
        self.rng = rng or random.Random()
        self._next = first

    def next(self) -> float:
        delay, self._next = self._next, min(self.cap, self._next * 2)
        return delay * (0.5 + 0.5 * self.rng.random())

    def reset(self) -> None:
        self._next = self.first


async def sleep_or(event: asyncio.Event, delay: float,
                   sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> bool:
    """Sleep ``delay`` seconds or until ``event`` is set; True when the event ended it.

    The event is left as it is: the caller clears it once it has acted on it.
    """
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    sleeper = asyncio.ensure_future(sleep(delay))
    try:
        done, _ = await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for fut in (waiter, sleeper):
            fut.cancel()
        await asyncio.gather(waiter, sleeper, return_exceptions=True)
    if sleeper in done:  # it ended by itself: pass on what it raised (a test's fake sleep may)
        sleeper.result()
    return waiter in done


async def wait_to_retry(exc: StoreRetryable, connectivity: "Connectivity", backoff: Backoff,
                        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
    """After a transient failure: wait until etcd answers again when it did not answer,
    else (it answered "busy") one jittered ``backoff`` step."""
    if isinstance(exc, StoreUnavailable):
        connectivity.failed(exc)
        await connectivity.wait_up()
    else:
        await sleep(backoff.next())


class Connectivity:
    """Tracks whether etcd answers; see the module note."""

    def __init__(self, probe: Callable[[], Awaitable[object]], interval: float = PROBE_INTERVAL,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None):
        self.probe = probe
        self.interval = interval
        self.sleep = sleep
        self.clock = clock
        self.rng = rng or random.Random()
        self.up = True
        self.outages = 0  # how many times etcd stopped answering
        self.reconnects = 0  # how many times it came back
        self._up_event = asyncio.Event()
        self._up_event.set()
        self._kick = asyncio.Event()
        self._down_since = 0.0
        self._back_at: float | None = None  # when etcd last answered again after an outage
        self._listeners: list[asyncio.Event] = []

    def notify_on_return(self, event: asyncio.Event) -> None:
        """Set ``event`` every time etcd answers again after an outage."""
        self._listeners.append(event)

    def failed(self, exc: BaseException) -> None:
        """A call to etcd failed: mark it down (logged once) and probe at once."""
        if self.up:
            self.up = False
            self.outages += 1
            self._down_since = self.clock()
            self._up_event.clear()
            text = str(exc) or type(exc).__name__
            log.warning("%s", text if text.startswith("etcd ") else f"etcd unreachable: {text}")
        self._kick.set()

    def answered(self) -> None:
        """etcd answered: mark it up (logged once) and wake whoever waits for it."""
        if self.up:
            return
        self.up = True
        self.reconnects += 1
        self._back_at = self.clock()
        log.info("etcd back after %.0fs", self._back_at - self._down_since)
        self._up_event.set()
        for event in self._listeners:
            event.set()

    def recently_down(self, window: float) -> bool:
        """Whether etcd is unreachable now or answered again at most ``window`` seconds ago."""
        return not self.up or (self._back_at is not None and self.clock() - self._back_at <= window)

    async def check(self, exc: BaseException) -> bool:
        """A call failed with ``exc``: probe now. True when etcd answers (the failure was the
        call's own); False when it does not, and etcd is marked unreachable."""
        if self.up:
            try:
                await self.probe()
            except StoreError as probe_exc:
                self.failed(probe_exc)
            else:
                return True
        self.failed(exc)
        return False

    async def wait_up(self) -> None:
        """Return once etcd answers (at once if it does now)."""
        await self._up_event.wait()

    async def run(self) -> None:
        """Probe forever: every ``interval`` while etcd answers, with jittered backoff while not."""
        backoff = Backoff(first=0.25, cap=PROBE_RETRY_CAP, rng=self.rng)
        while True:
            self._kick.clear()
            try:
                await self.probe()
            except StoreError as exc:
                self.failed(exc)
                self._kick.clear()
                await self.sleep(backoff.next())
                continue
            self.answered()
            backoff.reset()
            await sleep_or(self._kick, self.interval, self.sleep)
