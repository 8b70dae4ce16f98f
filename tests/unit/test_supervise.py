"""The daemon's supervisor: any long-running loop that ends takes the daemon down, named."""

import asyncio

import pytest

from overlayd.daemon import supervise
from overlayd.errors import LeaseError, TaskDied


async def forever():
    await asyncio.Event().wait()


async def cancelled_under_us():
    """What a call cancelled by a closed gRPC channel looks like to its task."""
    raise asyncio.CancelledError


async def returns():
    return None


async def raises(exc):
    raise exc


@pytest.mark.parametrize("job, error, message", [
    (cancelled_under_us(), TaskDied, "lease renewal task was cancelled unexpectedly"),
    (returns(), TaskDied, "lease renewal task ended unexpectedly"),
    (raises(ValueError("boom")), TaskDied, "lease renewal task failed: ValueError: boom"),
    (raises(LeaseError("lost subnet 10.244.3.0/24")), LeaseError, "lost subnet"),
])
async def test_any_loop_ending_is_fatal_and_named(job, error, message):
    other = forever()
    with pytest.raises(error, match=message):
        await asyncio.wait_for(supervise({"peer watch": other, "lease renewal": job}), 2)


async def test_the_other_loops_are_cancelled_and_awaited():
    stopped = []

    async def tidy():
        try:
            await asyncio.Event().wait()
        finally:
            stopped.append(True)

    with pytest.raises(TaskDied):
        await supervise({"a": tidy(), "b": returns()})
    assert stopped == [True]


async def test_cancelling_the_supervisor_stops_quietly():
    task = asyncio.create_task(supervise({"a": forever(), "b": forever()}))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
