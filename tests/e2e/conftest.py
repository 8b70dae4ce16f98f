"""End-to-end fixtures: labs of real nodes and pods in network namespaces.

Every lab gets its own namespace prefix and state directory and is torn down
by the fixture's finalizer, also when the test fails.
"""

from __future__ import annotations

import os
import signal
import uuid

import pytest

from overlayd.lab.topology import Lab

from .tools import lab_diagnostics


def _lab_factory(directory, failed):
    """The factory behind :func:`make_lab` and :func:`make_module_lab`: labs under ``directory``, each
    torn down afterwards (with the nodes' logs printed first when ``failed()``)."""
    labs: list[Lab] = []

    def make(backend: str = "udp", nodes: int = 3, pods: int = 1, variants=None, lease_ttl: int = 3600,
             **options) -> Lab:
        prefix = "t" + uuid.uuid4().hex[:6]
        lab = Lab(str(directory / prefix), prefix, backend=backend, lease_ttl=lease_ttl, **options)
        labs.append(lab)
        lab.up(nodes=nodes, pods_per_node=pods, variants=variants)
        return lab

    yield make
    leftovers = []
    for lab in labs:
        if failed():
            print(lab_diagnostics(lab))
        lab.down()
        leftovers += lab.leftover_processes()
    for pid in leftovers:  # only PIDs the lab itself started
        os.kill(pid, signal.SIGKILL)
    assert not leftovers, f"processes outlived lab.down(): {leftovers}"


@pytest.fixture
def make_lab(tmp_path, request):
    """``make_lab(backend=..., nodes=..., pods=..., variants=..., lease_ttl=..., **Lab options)`` -> an up Lab
    (``ip_family="dual"`` or ``"ipv6"`` for a network with IPv6: a Lab option)."""
    def failed() -> bool:
        rep = getattr(request.node, "rep_call", None)
        return rep is not None and rep.failed

    yield from _lab_factory(tmp_path, failed)


@pytest.fixture(scope="module")
def make_module_lab(tmp_path_factory, request):
    """:func:`make_lab` for a lab the tests of one module share (built once per module and pytest
    worker, torn down after the module's last test; logs printed if any test failed meanwhile)."""
    failures = request.session.testsfailed
    yield from _lab_factory(tmp_path_factory.mktemp("labs"), lambda: request.session.testsfailed > failures)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item, so fixtures can print diagnostics on failure."""
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep
