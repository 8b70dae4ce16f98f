"""Settling grants whose create had no known outcome, with creates sharing one store.

Creates that share an :class:`EtcdStore` (a daemon's; 32 of them carry 5000 simulated nodes
in ``scripts/bench-control``) each settle the store's unsettled grants before they create.
Two of them settling at once both revoked the same grant; the second revoke's "requested
lease not found" then failed that create (934 times in one 5000-node run). And a grant whose
call timed out under load can be applied after the lookup that found no such lease: dropped
then, it leaked (61 grants without a key in one 5000-node run).
"""

from __future__ import annotations

import asyncio
import types

import aetcd.exceptions as aex
import grpc
import pytest

from overlayd.lease.etcd import SETTLE_WINDOW, EtcdStore

ORPHAN = 0x51


def not_found() -> aex.ClientError:
    """The error aetcd raises for etcd's 'requested lease not found' (NOT_FOUND)."""
    cause = grpc.aio.AioRpcError(grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                 details="etcdserver: requested lease not found")
    error = aex.ClientError("etcdserver: requested lease not found")
    error.__cause__ = cause
    return error


class FakeClient:
    """Leases as etcd keeps them: ``live`` grants, each with its keys; every call yields once."""

    def __init__(self, live: dict[int, list[bytes]], down: bool = False):
        self.live, self.down, self.revoked, self.reads, self.lookups = live, down, [], 0, 0

    async def get(self, key):
        await asyncio.sleep(0)
        self.reads += 1

    async def get_lease_info(self, lease_id, keys=False):
        await asyncio.sleep(0)
        self.lookups += 1
        if self.down:
            raise aex.ConnectionFailedError("etcd went away")
        ttl = 60 if lease_id in self.live else -1
        return types.SimpleNamespace(TTL=ttl, keys=self.live.get(lease_id, []))

    async def revoke_lease(self, lease_id):
        await asyncio.sleep(0)
        if lease_id not in self.live:
            raise not_found()
        del self.live[lease_id]
        self.revoked.append(lease_id)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def store_with_orphan(client: FakeClient | None = None) -> EtcdStore:
    """A store whose create with grant ORPHAN failed just now (and whose calls go to ``client``)."""
    store = EtcdStore("http://127.0.0.1:1", "/t")
    store.clock = Clock()
    store._unsettled[ORPHAN] = store.clock()
    if client is not None:
        async def attempt(role, op):
            return await op(client)
        store._attempt = attempt
    return store


@pytest.mark.parametrize("settlers", [1, 2, 5])
async def test_concurrent_settles_revoke_an_orphan_grant_once_and_all_succeed(settlers):
    store, client = store_with_orphan(), FakeClient({ORPHAN: []})
    await asyncio.gather(*(store._settle(client) for _ in range(settlers)))
    assert client.revoked == [ORPHAN]
    assert not store._unsettled


async def test_an_orphan_bound_to_a_key_is_revoked_with_its_key(caplog):
    """Its create ran and the reply was lost: the node went on to lease another subnet (or this one
    under a new grant), and the key named it for a subnet nothing answers for until the TTL."""
    store, client = store_with_orphan(), FakeClient({ORPHAN: [b"/t/subnets/10.244.1.0-24"]})
    with caplog.at_level("INFO", logger="overlayd.lease.etcd"):
        await store._settle(client)
    assert client.revoked == [ORPHAN] and not store._unsettled
    assert "revoked etcd lease 51 left by an interrupted create, and its key /t/subnets/10.244.1.0-24" \
        in caplog.text


async def test_an_orphan_whose_key_is_being_taken_over_is_left_to_the_rewrite():
    """The node listed the key its lost create had made and rewrites it under a new grant: that
    rewrite releases the old grant; revoking it first would delete the key and cost the node its
    subnet (the subnet in its subnet.env, after a restart)."""
    store, client = store_with_orphan(), FakeClient({ORPHAN: [b"/t/subnets/10.244.1.0-24"]})
    await store._settle(client, keep=ORPHAN)
    assert client.revoked == [] and set(store._unsettled) == {ORPHAN}


@pytest.mark.parametrize("age, pending", [(0.0, {ORPHAN}), (SETTLE_WINDOW - 0.1, {ORPHAN}), (SETTLE_WINDOW, set())])
async def test_an_orphan_etcd_does_not_know_is_looked_at_again_for_a_while(age, pending):
    """Unknown to etcd: never applied, or not yet (a grant whose call timed out under load)."""
    store, client = store_with_orphan(), FakeClient({})
    store.clock.now += age
    await store._settle(client)
    assert set(store._unsettled) == pending and client.revoked == []


async def test_an_orphan_applied_after_its_first_lookup_is_revoked_later():
    store, client = store_with_orphan(), FakeClient({})
    await store._settle(client)  # not there yet
    client.live[ORPHAN] = []  # etcd applies the timed-out grant now
    store.clock.now += 2
    await store._settle(client)
    assert client.revoked == [ORPHAN] and not store._unsettled


async def test_an_orphan_etcd_applies_minutes_late_is_revoked_with_a_few_lookups():
    """etcd queued grants for minutes in a slow 5000-node run (139 leaked with a 60 s grace): an
    unknown grant is looked for at doubling intervals, so a probe every second costs a dozen
    lookups an hour, not 3600."""
    store, client = store_with_orphan(), FakeClient({})
    for second in range(1, 700):
        store.clock.now += 1.0
        if second == 300:
            client.live[ORPHAN] = []  # applied now, five minutes after its create failed
        await store._settle(client)
    assert client.revoked == [ORPHAN] and not store._unsettled
    assert client.lookups <= 11, client.lookups  # 1, 2, 4 ... 512 s after the failure


async def test_the_probe_settles_orphans_a_daemon_would_otherwise_keep():
    """A daemon creates nothing after its lease: its probe (every few seconds) settles them."""
    client = FakeClient({ORPHAN: []})
    store = store_with_orphan(client)
    await store.probe()
    assert client.reads == 1 and client.revoked == [ORPHAN] and not store._unsettled
    await store.probe()  # nothing left: one read, nothing else
    assert client.reads == 2 and client.revoked == [ORPHAN]


async def test_a_probe_that_cannot_settle_still_answers():
    client = FakeClient({ORPHAN: []})
    store = store_with_orphan(client)

    async def refused(lease_id):
        raise aex.ConnectionTimeoutError("deadline exceeded")

    client.revoke_lease = refused
    await store.probe()  # etcd answered the read: up
    assert set(store._unsettled) == {ORPHAN}  # tried again at the next probe


async def test_an_orphan_that_vanishes_before_its_revoke_is_settled_not_an_error():
    store, client = store_with_orphan(), FakeClient({ORPHAN: []})
    real = client.get_lease_info

    async def expires_meanwhile(lease_id, keys=False):
        info = await real(lease_id, keys)
        client.live.pop(lease_id, None)  # its TTL ran out between the two calls
        return info

    client.get_lease_info = expires_meanwhile
    await store._settle(client)
    assert not store._unsettled


async def test_an_orphan_stays_unsettled_while_etcd_does_not_answer():
    store, client = store_with_orphan(), FakeClient({ORPHAN: []}, down=True)
    with pytest.raises(aex.ConnectionFailedError):
        await store._settle(client)
    assert set(store._unsettled) == {ORPHAN}
