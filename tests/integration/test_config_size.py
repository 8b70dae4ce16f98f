"""overlayctl's config size limit against a real etcd (default --max-request-bytes): the largest
config 'config set' lets through is one etcd stores, even under a long prefix (issue 16.4)."""

from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner

from overlayd.cli.ctl import MAX_CONFIG_BYTES, cli as ctl
from overlayd.errors import StoreError
from overlayd.lease.etcd import EtcdStore

pytestmark = pytest.mark.etcd


@pytest.mark.parametrize("extra_prefix", ["", "/" + "p" * 3000])
def test_the_largest_config_allowed_is_one_etcd_stores(etcd_server, etcd_prefix, extra_prefix):
    prefix = etcd_prefix + extra_prefix
    base = b'{"Network": "10.244.0.0/16"}'
    config = base[:-1] + b" " * (MAX_CONFIG_BYTES - len(base)) + base[-1:]
    result = CliRunner().invoke(ctl, ["--etcd-endpoints", etcd_server.endpoint, "--etcd-prefix", prefix,
                                      "config", "set", "-"], input=config, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    got = CliRunner().invoke(ctl, ["--etcd-endpoints", etcd_server.endpoint, "--etcd-prefix", prefix,
                                   "config", "get", "--json"], catch_exceptions=False)
    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout)["effective"]["Network"] == "10.244.0.0/16"


def test_etcd_refuses_what_overlayctl_refuses(etcd_server, etcd_prefix):
    """The limit is etcd's (default --max-request-bytes, 1.5 MiB), not one of ours."""
    async def put():
        store = EtcdStore(etcd_server.endpoint, etcd_prefix)
        try:
            await store.put_config(b" " * (1572864 + 1))
        finally:
            await store.close()
    with pytest.raises(StoreError, match="request is too large"):
        asyncio.run(put())
