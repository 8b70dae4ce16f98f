"""A cancellation must stop a caller of the etcd store even when it races a call's result.

Python 3.11's asyncio.wait_for returns the result and swallows the cancellation when both
happen together (fixed in 3.12). The etcd probe loop then went on after its task was
cancelled, and stopping it hung forever (found as an intermittent hang of the test suite).
"""

import asyncio

import pytest

from overlayd.lease.etcd import EtcdStore


async def test_a_cancellation_racing_a_result_is_not_swallowed():
    store = EtcdStore("http://127.0.0.1:1", "/t")
    caller = None

    async def attempt(role, op):  # the call finishes just as its caller is cancelled
        caller.cancel()
        return "answer"

    store._attempt = attempt

    async def call():
        return await store._call(lambda c: None)

    caller = asyncio.create_task(call())
    with pytest.raises(asyncio.CancelledError):
        await caller
