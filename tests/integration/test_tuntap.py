"""Opening tun/tap devices (overlayd.plumbing.tuntap) in a network namespace of its own: a device
whose MTU or MAC cannot be set is not left open behind the error (issue 16: the fd leaked), and the
kernel cuts the UDP superpackets the engine writes back into the datagrams (issue 20)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from overlayd.encap import gso
from tests.unit.test_gso_ipv6 import DST as DST6, U6
from tests.unit.test_gso_parity import flood

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


UDP_RUNS_SCRIPT = r'''
import json, os, socket, subprocess, sys
from overlayd.plumbing.tuntap import open_tun, takes_udp_superpackets

writes, local4, local6 = json.loads(sys.stdin.read())
fd = open_tun("ovt9", 1500, vnet_hdr=True, offload=True)
takes = takes_udp_superpackets(fd)
for argv in (["link", "set", "lo", "up"], ["link", "set", "ovt9", "up"],
             ["addr", "add", local4 + "/24", "dev", "ovt9"],
             ["addr", "add", local6 + "/64", "dev", "ovt9", "nodad"],
             ["route", "add", "10.244.0.0/16", "dev", "ovt9"]):
    subprocess.run(["ip", *argv], check=True)
socks = {4: socket.socket(socket.AF_INET, socket.SOCK_DGRAM), 6: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)}
socks[4].bind((local4, 5201))
socks[6].bind((local6, 5201))
got = {4: [], 6: []}
for version, write in writes:
    os.write(fd, bytes.fromhex(write))
for version, sock in socks.items():
    sock.settimeout(2)
    try:
        while True:
            got[version].append(sock.recv(65535).hex())
    except socket.timeout:
        pass
print(json.dumps({"takes": takes, "got": got}))
'''


def test_the_kernel_cuts_a_udp_superpacket_back_into_the_datagrams():
    """Issue 20: a run of datagrams written as one UDP_L4 GSO write (gso.coalesce) reaches a socket
    behind a real tun as the very datagrams, IPv4 and IPv6; the probe says this kernel takes them."""
    v4 = flood(12, src="10.244.2.7", dst="10.244.1.1")
    writes = [(version, (h.pack() + p).hex()) for version, dgrams in ((4, v4), (6, U6))
              for h, p in gso.coalesce(dgrams)]
    assert len(writes) == 2
    res = subprocess.run(["unshare", "--net", sys.executable, "-c", UDP_RUNS_SCRIPT], capture_output=True, text=True,
                         timeout=60, input=json.dumps([writes, "10.244.1.1", DST6]))
    assert res.returncode == 0, res.stderr
    seen = json.loads(res.stdout)
    assert seen["takes"] == (tuple(map(int, os.uname().release.split(".")[:2])) >= (6, 2))
    assert [bytes.fromhex(p) for p in seen["got"]["4"]] == [d[28:] for d in v4]
    assert [bytes.fromhex(p) for p in seen["got"]["6"]] == [d[48:] for d in U6]
