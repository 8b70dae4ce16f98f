"""etcd endpoints with IPv6 literals (issue 17): ``http://[2001:db8::2]:2379`` is parsed, dialled and
named in messages with its brackets (without them ``2001:db8::2:2379`` is an address, not an
address and a port)."""

from __future__ import annotations

import re

import pytest

from overlayd.errors import StoreUnavailable
from overlayd.hostport import host_port
from overlayd.lab.etcd import EtcdServer, free_port
from overlayd.lease.etcd import EtcdStore, parse_endpoints


@pytest.mark.parametrize("host, port, text", [
    ("2001:db8::2", 2379, "[2001:db8::2]:2379"),
    ("::1", 1, "[::1]:1"),
    ("198.18.0.2", 2379, "198.18.0.2:2379"),
    ("etcd.example", 2379, "etcd.example:2379"),
])
def test_host_port(host, port, text):
    assert host_port(host, port) == text


def test_ipv6_endpoints_parse():
    assert parse_endpoints("http://[2001:db8::2]:2379, [2001:DB8::3] ,http://[fd00::4]") == (
        False, [("2001:db8::2", 2379), ("2001:db8::3", 2379), ("fd00::4", 2379)])
    assert parse_endpoints(["https://[2001:db8::2]:4001"]) == (True, [("2001:db8::2", 4001)])


def test_lab_etcd_server_urls_bracket_an_ipv6_host(tmp_path):
    server = EtcdServer(str(tmp_path / "data"), host="2001:db8::2", port=2379, peer_port=2380)
    assert (server.endpoint, server.peer_url) == ("http://[2001:db8::2]:2379", "http://[2001:db8::2]:2380")


async def test_an_unreachable_ipv6_endpoint_is_named_as_given():
    endpoint = f"http://[::1]:{free_port('::1')}"  # nothing listens there
    store = EtcdStore(endpoint, "/overlayd-test/ipv6", timeout=1)
    try:
        with pytest.raises(StoreUnavailable, match="etcd unreachable at " + re.escape(endpoint)):
            await store.list_leases()
    finally:
        await store.close()
