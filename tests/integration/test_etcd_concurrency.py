"""The etcd store under concurrent calls, as at a few thousand nodes (issue 20 §4).

Many calls share a store's channel: the daemon's probe, renewal and listings, or the
simulated nodes of ``scripts/bench-control``. What one call's failure does must not
fail the calls beside it.
"""

from __future__ import annotations

import asyncio
import ipaddress

import aetcd
import aetcd.exceptions as aex
import pytest

from overlayd.errors import StoreUnavailable
from overlayd.lease.etcd import EtcdStore
from overlayd.lease.manager import LeaseManager
from overlayd.lease.model import LeaseAttrs, subnet_key
from overlayd.netconf import parse_config

from .test_etcd_store import etcd_leases, own_etcd  # noqa: F401 (own_etcd: a fixture)

pytestmark = pytest.mark.etcd


async def test_a_call_that_times_out_on_a_lone_endpoint_does_not_cancel_the_calls_beside_it(
        etcd_server, etcd_prefix):
    """With one endpoint there is nowhere to fail over to: closing its channel after a
    timeout only cancelled every other call in flight on it ('call cancelled (channel
    closed)'), which at 5000 simulated nodes turned each timeout into ~150 failures."""
    store, writer = EtcdStore(etcd_server.endpoint, etcd_prefix), EtcdStore(etcd_server.endpoint, etcd_prefix)
    key = f"{etcd_prefix}/beside".encode()
    watching = asyncio.Event()

    async def next_value(c):  # a call that stays in flight on the kv channel until the key is written
        watch = await c.watch(key)
        watching.set()
        async for event in watch:
            return event.kv.value

    async def no_answer(c):  # a call etcd never answers in time
        await asyncio.Event().wait()

    try:
        beside = asyncio.create_task(store.call(next_value))
        await asyncio.wait_for(watching.wait(), 10)
        with pytest.raises(StoreUnavailable, match="timed out"):
            await store._call(no_answer, timeout=0.1)
        await writer._call(lambda c: c.put(key, b"answered"))
        assert await asyncio.wait_for(beside, 10) == b"answered"
    finally:
        await store.close()
        await writer.close()


async def test_a_listing_larger_than_grpcs_default_message_limit_is_read(etcd_server, etcd_prefix):
    """gRPC refuses replies over 4 MiB by default (RESOURCE_EXHAUSTED, retried forever: a
    daemon never starts). A listing reaches that at ~22,000 VXLAN leases of 190 bytes, half
    that with dual-stack WireGuard values; Kubernetes' 5000 nodes are 0.9 MB. Here four
    leases carrying 1.1 MB each (etcd takes requests up to 1.5 MiB) make a 4.4 MB listing."""
    store = EtcdStore(etcd_server.endpoint, etcd_prefix)
    pad = "x" * 1_100_000
    try:
        for n in range(1, 5):
            value = LeaseAttrs(ipaddress.IPv4Address(f"198.18.0.{n}"), "vxlan", {"VNI": 1, "Pad": pad}).encode()
            await store._call(lambda c: c.put(subnet_key(etcd_prefix, ipaddress.IPv4Network(f"10.244.{n}.0/24"))
                                              .encode(), value))
        leases, _ = await store.list_leases()
        assert [str(l.public_ip) for l in leases] == [f"198.18.0.{n}" for n in range(1, 5)]
    finally:
        await store.close()


async def test_the_grant_a_reused_lease_leaves_is_revoked_even_when_its_revoke_times_out(
        own_etcd, etcd_prefix, monkeypatch):
    """A node that finds its own lease (a restart, or a create whose reply was lost) moves the key to
    a new grant and revokes the old one. Under load that revoke timed out and was ignored: the old
    grant lived on without a key until its TTL ran out (leaked grants in 5000-node runs)."""
    config = parse_config({"Network": "10.244.0.0/16"})
    attrs = LeaseAttrs(ipaddress.IPv4Address("198.18.0.21"), "udp")
    store = EtcdStore(own_etcd.endpoint, etcd_prefix)
    try:
        first = await LeaseManager(store, config, attrs, ttl=300).acquire()
        real, timeouts = aetcd.Client.revoke_lease, {"left": 1}

        async def slow(self, lease_id):
            if timeouts["left"]:
                timeouts["left"] -= 1
                raise aex.ConnectionTimeoutError("deadline exceeded")
            return await real(self, lease_id)

        monkeypatch.setattr(aetcd.Client, "revoke_lease", slow)
        again = await LeaseManager(store, config, attrs, ttl=300).acquire()
        assert again.subnet == first.subnet and again.handle != first.handle and timeouts["left"] == 0
        await store.probe()  # what the daemon does next, every few seconds
        assert etcd_leases(own_etcd) == 1  # the old grant is gone (was 2)
    finally:
        await store.close()
