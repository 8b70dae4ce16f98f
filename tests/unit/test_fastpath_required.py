"""A C engine that was not built or does not load (issue 16): the test run fails when it must have
it (OVERLAYD_REQUIRE_FASTPATH=1, as scripts/test sets), and a daemon falling back to the Python data
path says so in its log and in /metrics."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import overlayd.daemon
from overlayd.cli.daemon import cli as daemon_cli
from overlayd.dataplane import fast
from tests.unit.test_health import metrics, server, state  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_engine(monkeypatch):
    """The extension as if it did not load."""
    monkeypatch.setattr(fast, "_fastpath", None)
    monkeypatch.setattr(fast, "IMPORT_ERROR", "undefined symbol: engine_start")


def run_daemon(monkeypatch, *args: str):
    seen = []
    monkeypatch.setattr(overlayd.daemon, "run", lambda options: seen.append(options) or 0)
    result = CliRunner().invoke(daemon_cli, ["--etcd-endpoints", "http://127.0.0.1:2379", *args])
    assert result.exit_code == 0, result.output
    return seen[-1], result.output


def test_the_fallback_to_python_is_a_warning_in_the_log(monkeypatch, no_engine):
    options, output = run_daemon(monkeypatch)
    assert options.node.datapath == "python"
    assert "WARNING the C engine (overlayd._fastpath) does not load (undefined symbol: engine_start)" in output
    _, output = run_daemon(monkeypatch, "--datapath", "python")  # asked for: no fallback, no warning
    assert "WARNING" not in output


def test_no_warning_when_the_engine_loads(monkeypatch):
    monkeypatch.setattr(fast, "_fastpath", object())
    options, output = run_daemon(monkeypatch)
    assert options.node.datapath == "c" and "WARNING" not in output


def test_metrics_say_whether_the_engine_loads(server, monkeypatch):  # noqa: F811 (a fixture)
    monkeypatch.setattr(fast, "_fastpath", object())
    assert metrics(server)["overlayd_c_engine_available"] == {("overlayd_c_engine_available", ()): 1}
    monkeypatch.setattr(fast, "_fastpath", None)
    assert metrics(server)["overlayd_c_engine_available"] == {("overlayd_c_engine_available", ()): 0}


@pytest.mark.parametrize("required", [False, True])
def test_a_run_that_requires_the_engine_fails_without_it(tmp_path, required):
    (tmp_path / "sitecustomize.py").write_text('import sys\nsys.modules["overlayd._fastpath"] = None\n')
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    env.pop("OVERLAYD_REQUIRE_FASTPATH", None)
    if required:
        env["OVERLAYD_REQUIRE_FASTPATH"] = "1"
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                          "tests/unit/test_gso_parity.py"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    if required:
        assert res.returncode == 1 and "OVERLAYD_REQUIRE_FASTPATH=1: the C engine does not load" in res.stdout, \
            res.stdout + res.stderr
        assert "passed" not in res.stdout and "skipped" not in res.stdout
    else:  # what an end user without a compiler gets: the C tests skip (5: nothing else was collected)
        assert res.returncode == 5 and "1 skipped" in res.stdout, res.stdout + res.stderr
