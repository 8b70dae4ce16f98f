"""Services and endpoints in a real etcd (issue 22): atomic allocation, endpoints bound to their
node's etcd lease, readiness written only over what was read, and the watch's resume rules."""

from __future__ import annotations

import asyncio
import ipaddress
import random

import pytest

from overlayd.errors import ConfigError, ServiceError, ServiceRangeFull
from overlayd.lease.etcd import EtcdStore
from overlayd.lease.model import LeaseAttrs
from overlayd.service.etcd import ServiceStore
from overlayd.service.model import Change, Endpoint, Service, ServicePort, endpoint_key, service_key
from overlayd.service.table import ServiceTable

pytestmark = pytest.mark.etcd

A = ipaddress.IPv4Address
N = ipaddress.IPv4Network
CONFIG = b'{"Network": "10.244.0.0/16", "ServiceNetwork": "10.96.0.0/24", "NodePortRange": "30000-30009"}'


@pytest.fixture
async def stores(etcd_server, etcd_prefix):
    """``make(n)`` -> n ServiceStores on one etcd prefix that has a config with a ServiceNetwork."""
    made = []

    async def make(n=1, config=CONFIG):
        for i in range(n):
            made.append(ServiceStore(EtcdStore(etcd_server.endpoint, etcd_prefix), random.Random(i)))
        if config is not None:
            await made[0].etcd.put_config(config)
        return made[-n:] if n > 1 else made[-1]
    yield make
    await asyncio.gather(*(s.close() for s in made))


def web(name="web", node_port=None, **kw):
    return Service(name, None, (ServicePort(80, 8080, "TCP", node_port),), **kw)


async def node_lease(store: ServiceStore, subnet: str, ttl: int | None = 60):
    return await store.etcd.create_lease(N(subnet), LeaseAttrs(A("198.18.0.11"), "udp"), ttl)


async def test_create_allocates_and_refuses_a_second_of_the_same_name(stores):
    store = await stores()
    created = await store.create(web(node_port=0))
    assert created.cluster_ip in N("10.96.0.0/24") and 30000 <= created.ports[0].node_port <= 30009
    assert await store.get("web") == created
    with pytest.raises(ServiceError, match="service web already exists"):
        await store.create(web())


async def test_racing_creates_never_share_an_address(stores):
    racers = await stores(12)
    # 10 NodePorts for 12 services: exactly two must fail, and no port or address twice
    results = await asyncio.gather(*(s.create(web(f"s{i}", node_port=0)) for i, s in enumerate(racers)),
                                   return_exceptions=True)
    made = [r for r in results if isinstance(r, Service)]
    full = [r for r in results if isinstance(r, ServiceRangeFull)]
    assert len(made) == 10 and len(full) == 2, results
    assert len({s.cluster_ip for s in made}) == 10
    assert len({s.ports[0].node_port for s in made}) == 10
    listed, _ = await racers[0].services()
    assert {s.name: s for s in listed} == {s.name: s for s in made}


async def test_without_a_service_network_services_are_refused(stores):
    store = await stores(config=b'{"Network": "10.244.0.0/16"}')
    with pytest.raises(ServiceError, match="the network config has no ServiceNetwork"):
        await store.create(web())


async def test_without_a_config_services_are_refused(stores):
    store = await stores(config=None)
    with pytest.raises(ConfigError, match="no network config"):
        await store.create(web())


async def test_endpoints_follow_their_node_lease_and_go_with_the_service(stores):
    store = await stores()
    await store.create(web())
    lease = await node_lease(store, "10.244.3.0/24")
    ep = await store.add_endpoint("web", A("10.244.3.5"))
    assert ep == Endpoint("web", N("10.244.3.0/24"), A("10.244.3.5")) and ep.handle == lease.handle
    await store.add_endpoint("web", A("10.244.3.6"), 9090)
    assert [e.address for e in await store.endpoints("web")] == ["10.244.3.5", "10.244.3.6:9090"]
    with pytest.raises(ServiceError, match="no node's subnet holds it"):
        await store.add_endpoint("web", A("10.244.9.5"))
    with pytest.raises(ServiceError, match="no service nope"):
        await store.add_endpoint("nope", A("10.244.3.5"))
    removed = await store.remove_endpoint("web", A("10.244.3.6"), 9090)
    assert removed.address == "10.244.3.6:9090"
    with pytest.raises(ServiceError, match="service web has no endpoint 10.244.3.6:9090"):
        await store.remove_endpoint("web", A("10.244.3.6"), 9090)
    await store.etcd.revoke_lease(lease)  # the node dies: its endpoints vanish with its lease
    assert await store.endpoints("web") == []
    await node_lease(store, "10.244.4.0/24")
    await store.add_endpoint("web", A("10.244.4.5"))
    service, gone = await store.delete("web")
    assert (service.name, gone) == ("web", 1)
    assert await store.endpoints() == []
    with pytest.raises(ServiceError, match="no service web"):
        await store.delete("web")


async def test_an_endpoint_port_needs_a_single_port_service(stores):
    store = await stores()
    await store.create(Service("two", None, (ServicePort(80, 8080), ServicePort(53, 53, "UDP"))))
    await node_lease(store, "10.244.3.0/24")
    with pytest.raises(ServiceError, match="service two has 2 ports; give the endpoint without a port"):
        await store.add_endpoint("two", A("10.244.3.5"), 9090)


async def test_readiness_is_written_only_over_what_was_read(stores):
    store = await stores()
    await store.create(web())
    lease = await node_lease(store, "10.244.3.0/24")
    ep = await store.add_endpoint("web", A("10.244.3.5"))
    down = await store.set_ready(ep, False)
    assert down is not None and not down.ready and down.handle == lease.handle
    assert await store.set_ready(ep, True) is None  # stale: written since
    await store.remove_endpoint("web", A("10.244.3.5"))
    assert await store.set_ready(down, True) is None  # removed: never put back
    assert await store.endpoints("web") == []


async def test_the_table_follows_list_and_watch_and_resumes_without_loss(stores, etcd_prefix):
    store, writer = await stores(2)
    await writer.create(web())
    await node_lease(writer, "10.244.3.0/24")
    table = ServiceTable()
    changes, revision = await store.list()
    assert table.reset(changes, revision).changed
    assert [s.name for s in table.services] == ["web"]

    seen = []

    async def follow(from_revision):
        async for batch in store.watch(from_revision):
            seen.append(table.apply(batch))
            if len(table.endpoints) == 2:
                return

    task = asyncio.create_task(follow(revision))
    await writer.add_endpoint("web", A("10.244.3.5"))
    await writer.add_endpoint("web", A("10.244.3.6"))
    await asyncio.wait_for(task, 10)
    assert all(update.changed for update in seen)
    # a garbled key and a re-list: the garbled one is reported once, nothing else changes
    await writer.etcd.call(lambda c: c.put(service_key(etcd_prefix, "bad").encode(), b"{"))
    changes, revision = await store.list()
    update = table.reset(changes, revision)
    assert not update.changed and len(update.errors) == 1 and "service bad: malformed value" in update.errors[0]
    assert not table.reset(*await store.list()).errors  # said once
    # a stale event (at or below the listing's revision) is skipped
    ep = table.endpoints[0]
    assert not table.apply([Change(endpoint_key(etcd_prefix, ep), None, revision)]).changed
    assert len(table.endpoints) == 2
