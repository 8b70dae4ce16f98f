"""Shared fixtures: a private etcd on loopback, root/etcd availability marks."""

from __future__ import annotations

import os
import uuid

import pytest

from overlayd.lab.etcd import ETCD_BIN, EtcdServer


def pytest_sessionstart(session):
    """With OVERLAYD_REQUIRE_FASTPATH=1 (scripts/test sets it) a C engine that was not built or does
    not load fails the run at once, instead of its ~900 tests skipping."""
    if os.environ.get("OVERLAYD_REQUIRE_FASTPATH") == "1":
        from overlayd.dataplane import fast

        if not fast.available():
            pytest.exit(f"OVERLAYD_REQUIRE_FASTPATH=1: the C engine does not load: {fast.IMPORT_ERROR}", returncode=1)


def pytest_configure(config):
    config.addinivalue_line("markers", "run_first: a long test, collected first (see pytest_collection_modifyitems)")


def pytest_collection_modifyitems(config, items):
    """Skip what this machine cannot run; put ``run_first`` tests first (the rest keeps its order):
    scripts/test's ``--dist worksteal`` deals the collection out in contiguous chunks and steals from
    their ends, so they start at once on the first worker and overlap the rest of the suite instead
    of trailing it."""
    is_root = os.geteuid() == 0
    has_etcd = os.path.exists(ETCD_BIN)
    for item in items:
        if "root" in item.keywords and not is_root:
            item.add_marker(pytest.mark.skip(reason="needs root and network namespaces"))
        if "etcd" in item.keywords and not has_etcd:
            item.add_marker(pytest.mark.skip(reason=f"needs etcd at {ETCD_BIN} (scripts/install)"))
    items.sort(key=lambda item: item.get_closest_marker("run_first") is None)


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory):
    """One etcd on 127.0.0.1 for the session, on a free port, stopped at the end."""
    server = EtcdServer(str(tmp_path_factory.mktemp("etcd") / "data"), name="overlayd-test")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def etcd_prefix():
    """A fresh key prefix per test, so tests sharing one etcd never see each other."""
    return f"/overlayd-test/{uuid.uuid4().hex[:12]}"
