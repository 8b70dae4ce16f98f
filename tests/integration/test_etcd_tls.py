"""The etcd store over TLS with client certificates, with an etcd user, and across a
3-member cluster with a hung member: real etcd (Debian's etcd-server) on loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import subprocess
import time

import pytest

from overlayd.errors import StoreError, StoreUnavailable, WatchReset
from overlayd.lab.etcd import EtcdServer, LabPKI, free_port
from overlayd.lease.etcd import EtcdCredentials, EtcdStore
from overlayd.lease.model import LeaseAttrs

pytestmark = pytest.mark.etcd

SUBNET = ipaddress.IPv4Network("10.244.9.0/24")
ATTRS = LeaseAttrs(ipaddress.IPv4Address("198.18.0.11"), "udp")


def credentials(pki: LabPKI, client: bool = True, **kw) -> EtcdCredentials:
    if client:
        return EtcdCredentials(pki.ca, pki.client_cert, pki.client_key, **kw)
    return EtcdCredentials(pki.ca, **kw)


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    """Three etcd members on 127.0.0.1 with https client URLs and --client-cert-auth."""
    root = tmp_path_factory.mktemp("tls-cluster")
    names = ["m1", "m2", "m3"]
    pki = LabPKI.create(str(root / "pki"), {n: "127.0.0.1" for n in names})
    peers = {n: free_port() for n in names}
    cluster = {n: f"http://127.0.0.1:{p}" for n, p in peers.items()}
    servers = [EtcdServer(str(root / n / "data"), port=free_port(), peer_port=peers[n], name=n,
                          cluster=cluster, pki=pki) for n in names]
    try:
        for server in servers:
            server.start(wait=False)
        for server in servers:
            server.wait_healthy(30)
        yield pki, servers
    finally:
        for server in servers:
            if server.pid:
                os.kill(server.pid, signal.SIGCONT)
            server.stop()


def endpoints(servers) -> str:
    return ",".join(s.endpoint for s in servers)


async def test_store_works_over_tls_with_a_client_certificate(tls_cluster, etcd_prefix):
    pki, servers = tls_cluster
    store = EtcdStore(endpoints(servers), etcd_prefix, credentials=credentials(pki))
    try:
        await store.put_config(b'{"Network": "10.244.0.0/16"}')
        assert await store.get_config() == b'{"Network": "10.244.0.0/16"}'
        lease = await store.create_lease(SUBNET, ATTRS, 30)
        assert lease is not None
        assert (await store.renew_lease(lease)).handle == lease.handle
    finally:
        await store.close()


async def test_no_client_certificate_is_one_clear_line(tls_cluster, etcd_prefix):
    pki, servers = tls_cluster
    store = EtcdStore(endpoints(servers), etcd_prefix, credentials=credentials(pki, client=False), timeout=2)
    try:
        with pytest.raises(StoreUnavailable) as info:
            await store.get_config()
    finally:
        await store.close()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("etcd TLS handshake failed")
    assert "etcd refused our client certificate" in message
    assert all(s.endpoint in message for s in servers)


async def test_untrusted_server_certificate_names_the_ca_flag(tls_cluster, etcd_prefix, tmp_path):
    pki, servers = tls_cluster
    other = LabPKI.create(str(tmp_path / "other"), {})
    creds = EtcdCredentials(other.ca, pki.client_cert, pki.client_key)
    store = EtcdStore(servers[0].endpoint, etcd_prefix, credentials=creds, timeout=2)
    try:
        with pytest.raises(StoreUnavailable, match="not signed by --etcd-cafile"):
            await store.get_config()
    finally:
        await store.close()


async def test_a_hung_member_is_left_quickly_and_the_watch_moves_too(tls_cluster, etcd_prefix):
    """SIGSTOP the member both channels use: a call fails over within seconds, and the
    watch stream (stuck on the frozen member) is dropped and re-created on a live one."""
    pki, servers = tls_cluster
    store = EtcdStore(endpoints(servers), etcd_prefix, credentials=credentials(pki))
    writer = EtcdStore(endpoints(servers[1:]), etcd_prefix, credentials=credentials(pki))
    frozen = servers[0]
    try:
        _, revision = await store.list_leases()
        watch = store.watch_leases(revision)
        first = asyncio.ensure_future(watch.__anext__())
        await asyncio.sleep(0.5)  # the watch stream is open on member 1
        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            await store.probe()
            assert time.monotonic() - t0 < 5, "failover took too long"
            assert store._endpoint_str(store._current) != frozen.endpoint
            with pytest.raises(WatchReset, match="does not answer: the watch moves to"):
                await asyncio.wait_for(first, 5)  # the stuck watch was dropped, not left hanging
            _, revision = await store.list_leases()
            watch = store.watch_leases(revision)
            await writer.create_lease(SUBNET, ATTRS, 30)
            batch = await asyncio.wait_for(watch.__anext__(), 10)
            assert batch[0].subnet == SUBNET and batch[0].lease is not None
            await watch.aclose()
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
    finally:
        await store.close()
        await writer.close()


@pytest.fixture
def auth_etcd(tmp_path):
    """A single etcd with auth enabled (user root, password 'secret') and 2 s tokens."""
    server = EtcdServer(str(tmp_path / "data"), name="auth", extra_args=["--auth-token-ttl", "2"]).start()
    etcdctl = ["etcdctl", "--endpoints", server.endpoint]
    env = dict(os.environ, ETCDCTL_API="3")
    try:
        subprocess.run([*etcdctl, "user", "add", "root:secret"], check=True, capture_output=True, env=env)
        subprocess.run([*etcdctl, "auth", "enable"], check=True, capture_output=True, env=env)
        yield server
    finally:
        server.stop()


async def test_an_expired_auth_token_is_renewed(auth_etcd, etcd_prefix):
    store = EtcdStore(auth_etcd.endpoint, etcd_prefix, timeout=2,
                      credentials=EtcdCredentials(username="root", password="secret"))
    try:
        await store.put_config(b"{}")
        _, revision = await store.list_leases()
        await asyncio.sleep(3.5)  # both channels' tokens expire while idle
        assert await store.get_config() == b"{}"
        watch = store.watch_leases(revision)  # a new watch on the old watch channel
        await store.create_lease(SUBNET, ATTRS, 30)
        batch = await asyncio.wait_for(watch.__anext__(), 5)
        assert batch[0].subnet == SUBNET
        await watch.aclose()
    finally:
        await store.close()


async def test_a_wrong_password_is_an_error_not_an_outage(auth_etcd, etcd_prefix):
    store = EtcdStore(auth_etcd.endpoint, etcd_prefix, timeout=2,
                      credentials=EtcdCredentials(username="root", password="wrong"))
    try:
        with pytest.raises(StoreError, match="authentication failed") as info:
            await store.get_config()
        assert not isinstance(info.value, StoreUnavailable)
    finally:
        await store.close()


async def test_a_cert_file_missing_at_reconnect_is_retried_not_fatal(tls_cluster, etcd_prefix, tmp_path):
    """Certificates are re-read on every reconnect; one caught mid-rotation (the file briefly
    absent) used to raise ConfigError out of the renew or watch loop and kill the daemon."""
    import shutil
    pki, servers = tls_cluster
    key = tmp_path / "client.key"
    shutil.copy(pki.client_key, key)
    store = EtcdStore(endpoints(servers), etcd_prefix,
                      credentials=EtcdCredentials(pki.ca, pki.client_cert, str(key)))
    try:
        await store.put_config(b"{}")
        key.unlink()  # rotation: the old file is gone, the new one not yet there
        for role in list(store._clients):
            await store._drop_client(role)  # the next call reconnects (as after a failover)
        with pytest.raises(StoreUnavailable, match="client.key"):
            await store.get_config()
        shutil.copy(pki.client_key, key)
        assert await store.get_config() == b"{}"
    finally:
        await store.close()
