"""ServiceProxy's loops against a fake store and a recording kernel (issue 22): list, watch,
re-list after a reset, no table without services, readiness published by the owner, the UDP
flows of endpoints that left cut after the table changed."""

import asyncio
import dataclasses
import ipaddress
import logging

import pytest

from overlayd.errors import PlumbingError, WatchReset
from overlayd.lease.connectivity import Connectivity
from overlayd.lease.model import Lease, LeaseAttrs
from overlayd.plumbing.kernelwatch import KernelWatch
from overlayd.service import spool
from overlayd.service.conntrack import Backend
from overlayd.service.health import HealthSettings
from overlayd.service.model import Change, Endpoint, Service, ServicePort, endpoint_key, service_key
from overlayd.service.proxy import KernelTable, ServiceProxy
from overlayd.service.render import NodeView

A = ipaddress.IPv4Address
N = ipaddress.IPv4Network
P = "/t"
HERE = N("10.244.1.0/24")
NODE = NodeView(N("10.244.0.0/16"), HERE, (A("198.18.0.11"),))
WEB = Service("web", A("10.96.0.10"), (ServicePort(80, 8080),))


def put(value, revision):
    key = service_key(P, value.name) if isinstance(value, Service) else endpoint_key(P, value)
    return Change(key, value, revision)


class FakeStore:
    """list() gives ``listing``; watch() yields what the test queues (an exception ends it)."""

    def __init__(self, listing=(), revision=10):
        self.listing, self.revision = list(listing), revision
        self.queue: asyncio.Queue = asyncio.Queue()
        self.lists = 0
        self.ready: list[tuple[str, bool]] = []
        self.added: list[tuple] = []
        self.deleted: list[tuple] = []

    async def list(self):
        self.lists += 1
        return list(self.listing), self.revision

    async def watch(self, revision):
        while True:
            item = await self.queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    async def set_ready(self, ep, ready):
        self.ready.append((ep.address, ready))
        return ep

    async def add_endpoint(self, service, ip, port=None, ready=True, owner=None, source=None):
        self.added.append((service, str(ip), ready, owner.handle, source))
        return Endpoint(service, owner.subnet, ip, port, ready, owner.handle, source=source)

    async def delete_endpoint(self, ep):
        self.deleted.append((ep.service, ep.address))
        return True


class Kernel(KernelTable):
    def __init__(self):
        super().__init__(run=self.record, listing=lambda: None)
        self.scripts: list[str] = []
        self.changed = asyncio.Event()

    def record(self, script):
        self.scripts.append(script)
        self.changed.set()


class Flows:
    """A recording conntrack flusher: each cut as (kernel scripts applied by then, backends)."""

    def __init__(self, kernel: Kernel, error: str | None = None):
        self.kernel, self.error = kernel, error
        self.cuts: list[tuple[int, list[Backend]]] = []

    def flush(self, backends):
        self.cuts.append((len(self.kernel.scripts), list(backends)))
        if self.error:
            raise PlumbingError(self.error)
        return len(self.cuts[-1][1])


async def until(predicate, timeout=5.0):
    async def wait():
        while not predicate():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(wait(), timeout)


@pytest.fixture
async def running():
    tasks = []

    async def start(store, health=None, flush_error=None):
        kernel = Kernel()
        conn = Connectivity(lambda: asyncio.sleep(0))
        proxy = ServiceProxy(store, NODE, conn, resync_interval=3600, health=health, kernel=kernel, spool_dir=None,
                             conntrack=Flows(kernel, flush_error))
        tasks.append(asyncio.create_task(proxy.run()))
        return proxy, kernel
    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_list_then_watch_then_relist_after_a_reset(running):
    first = Endpoint("web", HERE, A("10.244.1.5"))
    store = FakeStore([put(WEB, 5), put(first, 6)])
    proxy, kernel = await running(store)
    await asyncio.wait_for(proxy.synced.wait(), 5)
    assert len(kernel.scripts) == 1 and "delete table ip overlayd-svc" in kernel.scripts[0]
    assert "chain ep-web-tcp-80-10.244.1.5-8080" in kernel.scripts[0]

    second = Endpoint("web", HERE, A("10.244.1.6"))
    store.queue.put_nowait([put(second, 11)])
    await until(lambda: len(kernel.scripts) == 2)
    assert "add chain ip overlayd-svc ep-web-tcp-80-10.244.1.6-8080" in kernel.scripts[1]
    assert "delete table" not in kernel.scripts[1]  # incremental

    store.queue.put_nowait([put(second, 11)])  # stale repeat: nothing to do
    store.listing, store.revision = [put(WEB, 5), put(second, 11)], 20  # first went while we were away
    store.queue.put_nowait(WatchReset("compacted"))
    await until(lambda: store.lists == 2 and len(kernel.scripts) == 3)
    assert "delete chain ip overlayd-svc ep-web-tcp-80-10.244.1.5-8080" in kernel.scripts[2]
    assert proxy.stats() == {"services": 1, "endpoints": 1, "endpoints_ready": 1, "nft_applies": 3,
                             "nft_repairs": 0}


async def test_no_services_no_table(running):
    store = FakeStore()
    proxy, kernel = await running(store)
    await asyncio.wait_for(proxy.synced.wait(), 5)
    assert kernel.scripts == [] and kernel.applied is None
    store.queue.put_nowait([put(WEB, 11)])
    await until(lambda: kernel.applied is not None)
    store.queue.put_nowait([Change(service_key(P, "web"), None, 12)])
    await until(lambda: kernel.applied is None)
    assert kernel.scripts[-1] == "table ip overlayd-svc\ndelete table ip overlayd-svc\n"


async def test_the_owner_publishes_readiness_changes():
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop_node = NodeView(N("10.244.0.0/16"), N("127.0.0.0/8"))
    svc = Service("web", A("10.96.0.10"), (ServicePort(80, port),))
    mine = Endpoint("web", N("127.0.0.0/8"), A("127.0.0.1"), None, ready=False)
    theirs = Endpoint("web", HERE, A("10.244.1.5"), None, ready=False)  # another node's: not ours to check
    store = FakeStore([put(svc, 5), put(mine, 6), put(theirs, 7)])
    proxy = ServiceProxy(store, loop_node, Connectivity(lambda: asyncio.sleep(0)), resync_interval=3600,
                         health=HealthSettings(period=0.05, timeout=0.5), kernel=Kernel(), spool_dir=None)
    task = asyncio.create_task(proxy.run())
    try:
        await until(lambda: store.ready == [("127.0.0.1", True)])
        store.queue.put_nowait([put(Endpoint("web", N("127.0.0.0/8"), A("127.0.0.1")), 12)])  # the echo
        server.close()
        await server.wait_closed()
        await until(lambda: store.ready == [("127.0.0.1", True), ("127.0.0.1", False)])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        server.close()


async def test_the_cni_spool_is_published_bound_to_our_lease(tmp_path):
    dns = Service("dns", A("10.96.0.53"), (ServicePort(53, 53, "UDP"),))
    store = FakeStore([put(WEB, 5), put(dns, 6)])
    lease = Lease(HERE, LeaseAttrs(A("198.18.0.11"), "udp"), handle=77)
    path = spool.entry_path(str(tmp_path), "c1", "eth0")
    spool.write_entry(path, spool.Entry(A("10.244.1.5"), ("web", "dns")))
    proxy = ServiceProxy(store, NODE, Connectivity(lambda: asyncio.sleep(0)), resync_interval=3600,
                         health=HealthSettings(period=3600), kernel=Kernel(), lease=lambda: lease,
                         spool_dir=str(tmp_path), sleep=lambda _: asyncio.sleep(0.01))
    task = asyncio.create_task(proxy.run())
    try:
        # a TCP service's endpoint starts not ready (its health check decides), a UDP-only one ready
        await until(lambda: set(store.added) == {("dns", "10.244.1.5", True, 77, "cni"),
                                                 ("web", "10.244.1.5", False, 77, "cni")})
        store.queue.put_nowait([put(Endpoint("web", HERE, A("10.244.1.5"), None, False, 77, source="cni"), 11)])
        spool.remove_entry(path)  # the pod went
        await until(lambda: ("web", "10.244.1.5") in store.deleted)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def stopping_sleep(pauses: list, after: int):
    """A sleep that records each pause and stops the loop (CancelledError) at the ``after``-th."""
    async def sleep(seconds):
        pauses.append(seconds)
        if len(pauses) == after:
            raise asyncio.CancelledError
        await asyncio.sleep(0)
    return sleep


async def test_drift_checks_pause_for_their_own_cost():
    """A check that took 2 s (a huge table) waits 100 s for the next, not resync_interval's 10."""
    now = [0.0]
    pauses = []

    class Slow(Kernel):
        def repair(self):
            now[0] += 2.0
            return None

    proxy = ServiceProxy(FakeStore(), NODE, Connectivity(lambda: asyncio.sleep(0)), resync_interval=10,
                         health=None, kernel=Slow(), spool_dir=None, clock=lambda: now[0],
                         sleep=stopping_sleep(pauses, 3),
                         watch=KernelWatch(full_every=1))
    with pytest.raises(asyncio.CancelledError):
        await proxy.repair_drift()
    assert pauses == [10, 100.0, 100.0]


async def test_drift_checks_wait_for_a_change_notice():
    """Without a change notice, the table is checked first and then every full_every periods only."""
    checked, pauses = [], []

    class Counting(Kernel):
        def repair(self):
            checked.append(len(pauses))
            return None

    watch = KernelWatch(full_every=3)
    watch.open = lambda: None  # no notices
    proxy = ServiceProxy(FakeStore(), NODE, Connectivity(lambda: asyncio.sleep(0)), resync_interval=10,
                         health=None, kernel=Counting(), spool_dir=None, sleep=stopping_sleep(pauses, 8),
                         watch=watch)
    with pytest.raises(asyncio.CancelledError):
        await proxy.repair_drift()
    assert checked == [1, 4, 7]  # after the first period, then every third


DNS = Service("dns", A("10.96.0.53"), (ServicePort(53, 5353, "UDP", 30053), ServicePort(80, 8080)))
DNS_A, DNS_B = Endpoint("dns", HERE, A("10.244.1.5")), Endpoint("dns", HERE, A("10.244.1.6"))


def backends(ip: str) -> list[Backend]:
    """DNS's UDP backends of the endpoint ``ip``: its ClusterIP port and its NodePort."""
    return [Backend(53, A(ip), 5353, A("10.96.0.53")), Backend(30053, A(ip), 5353)]


async def test_udp_flows_of_endpoints_that_left_are_cut_after_the_table_changed(running):
    store = FakeStore([put(DNS, 5), put(DNS_A, 6), put(DNS_B, 7)])
    proxy, kernel = await running(store)
    await asyncio.wait_for(proxy.synced.wait(), 5)
    assert proxy.conntrack.cuts == []
    store.queue.put_nowait([Change(endpoint_key(P, DNS_A), None, 11)])  # removed
    await until(lambda: proxy.conntrack.cuts)
    assert proxy.conntrack.cuts == [(2, backends("10.244.1.5"))]  # after the second script, not before
    store.queue.put_nowait([put(dataclasses.replace(DNS_B, ready=False), 12)])  # not ready
    await until(lambda: len(proxy.conntrack.cuts) == 2)
    assert proxy.conntrack.cuts[1] == (3, backends("10.244.1.6"))
    store.queue.put_nowait([put(DNS_A, 13)])  # back: nothing to cut
    await until(lambda: len(kernel.scripts) == 4)
    store.queue.put_nowait([Change(service_key(P, "dns"), None, 14)])  # the service went, with A's flows
    await until(lambda: kernel.applied is None)
    await until(lambda: len(proxy.conntrack.cuts) == 3)
    assert proxy.conntrack.cuts[2] == (5, backends("10.244.1.5"))


async def test_tcp_endpoints_leaving_cut_nothing(running):
    first = Endpoint("web", HERE, A("10.244.1.5"))
    store = FakeStore([put(WEB, 5), put(first, 6)])
    proxy, kernel = await running(store)
    await asyncio.wait_for(proxy.synced.wait(), 5)
    store.queue.put_nowait([Change(endpoint_key(P, first), None, 11)])
    await until(lambda: len(kernel.scripts) == 2)
    assert proxy.conntrack.cuts == []


async def test_a_failed_cut_is_one_warning_and_the_proxy_goes_on(running, caplog):
    store = FakeStore([put(DNS, 5), put(DNS_A, 6), put(DNS_B, 7)])
    proxy, kernel = await running(store, flush_error="cannot delete conntrack entries: no such module")
    await asyncio.wait_for(proxy.synced.wait(), 5)
    with caplog.at_level(logging.WARNING, logger="overlayd.service.proxy"):
        store.queue.put_nowait([Change(endpoint_key(P, DNS_A), None, 11)])
        await until(lambda: proxy.conntrack.cuts)
        store.queue.put_nowait([Change(endpoint_key(P, DNS_B), None, 12)])
        await until(lambda: len(kernel.scripts) == 3)
    assert ("UDP flows to endpoints that left (10.96.0.53:53 -> 10.244.1.5:5353, NodePort:30053 -> "
            "10.244.1.5:5353) stay until they time out: cannot delete conntrack entries") in caplog.text
