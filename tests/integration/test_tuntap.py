"""Opening tun/tap devices (overlayd.plumbing.tuntap) in a network namespace of its own: a device
whose MTU or MAC cannot be set is not left open behind the error (issue 16: the fd leaked)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.root

SCRIPT = r'''
import json, os, socket
from overlayd.errors import PlumbingError
from overlayd.plumbing.tuntap import open_tap, open_tun

def exists(dev):
    try:
        return socket.if_nametoindex(dev) > 0
    except OSError:
        return False

def fds():
    return sorted(os.listdir("/proc/self/fd"))

seen = {}
for name, dev, call in [("tun mtu", "ovt0", lambda: open_tun("ovt0", 70000)),
                        ("tap mtu", "ovt1", lambda: open_tap("ovt1", "0e:11:22:33:44:55", 70000)),
                        ("tap mac", "ovt2", lambda: open_tap("ovt2", "ff:11:22:33:44:55", 1450))]:
    before = fds()
    try:
        call()
        seen[name] = "opened"
    except PlumbingError as exc:
        seen[name] = [str(exc), fds() == before, exists(dev)]
print(json.dumps(seen))
'''


def test_a_device_whose_mtu_or_mac_cannot_be_set_is_closed():
    res = subprocess.run(["unshare", "--net", sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    seen = json.loads(res.stdout)
    assert seen["tun mtu"][0] == "cannot set MTU 70000 on ovt0: Invalid argument"
    assert seen["tap mtu"][0] == "cannot set MTU 70000 on ovt1: Invalid argument"
    assert seen["tap mac"][0].startswith("cannot set MAC ff:11:22:33:44:55 on ovt2:")
    # the fd is closed, and with it the (non-persistent) device
    assert all(fds_unchanged and not device_left for _, fds_unchanged, device_left in seen.values()), seen
