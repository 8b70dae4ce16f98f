"""A real etcd reached at an IPv6 literal (issue 17): the lab's server listens on ``http://[::1]:PORT``
and the store reads and writes through it."""

from __future__ import annotations

import pytest

from overlayd.lab.etcd import EtcdServer
from overlayd.lease.etcd import EtcdStore

pytestmark = pytest.mark.etcd


async def test_store_over_an_ipv6_endpoint(tmp_path, etcd_prefix):
    server = EtcdServer(str(tmp_path / "data"), host="::1", name="overlayd-ipv6").start()
    store = EtcdStore(server.endpoint, etcd_prefix, timeout=5)
    try:
        assert server.endpoint.startswith("http://[::1]:")
        await store.put_config(b'{"Network": "10.244.0.0/16"}')
        assert await store.get_config() == b'{"Network": "10.244.0.0/16"}'
    finally:
        await store.close()
        server.stop()
