"""systemd/overlayd.service passes ``systemd-analyze verify`` (issue 11, section 3).

systemd-analyze comes with Debian's ``systemd`` package (scripts/install installs it)
and verifies a unit without a running systemd, but it checks that ExecStart's
binary exists: /usr/local/bin/overlayd, the link scripts/install makes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

UNIT = Path(__file__).parents[2] / "systemd" / "overlayd.service"


def test_the_unit_verifies_without_a_warning():
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: run scripts/install (it installs Debian's systemd package)"
    res = subprocess.run([analyze, "verify", str(UNIT)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), res.stdout + res.stderr


def test_the_unit_has_a_watchdog():
    lines = UNIT.read_text().splitlines()
    assert "Type=notify" in lines and "WatchdogSec=30s" in lines
