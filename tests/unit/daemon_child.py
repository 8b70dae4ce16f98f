"""A Daemon without etcd or root, run as a child process by test_lifecycle.py.

``python daemon_child.py MODE STATUS_FILE``, MODE one of:
  waiting     the real startup, against a store that never has a config (no lease)
  leased      a node with a lease and a fake backend, writing its status file
  slow-close  as leased, but closing the backend blocks for 30 s (a stuck cleanup)
  uvloop-fail a userspace backend whose data plane fails to start in the uvloop thread
"""

from __future__ import annotations

import asyncio
import ipaddress
import sys
import time

from overlayd.backend import create_backend
from overlayd.backend.base import NodeOptions, Underlay
from overlayd.cli.common import setup_logging
from overlayd.daemon import Daemon, DaemonOptions
from overlayd.lease.model import Lease, LeaseAttrs
from overlayd.netconf import parse_config

LEASE = Lease(ipaddress.IPv4Network("10.244.3.0/24"),
              LeaseAttrs(ipaddress.IPv4Address("198.18.0.11"), "udp"))


class NoConfigStore:
    """etcd answering, without a network config (yet)."""

    async def get_config(self):
        return None

    async def close(self):
        return None


class FakeBackend:
    """Just what the status file and the stop path read."""

    type_name, device, mtu = "udp", "tun0", 1472

    def __init__(self, close_blocks: bool):
        self.close_blocks = close_blocks

    def peer_subnets(self):
        return ["10.244.7.0/24"]

    def stats(self):
        return {"tx_packets": 10}

    def peer_stats(self):
        return []

    async def close(self):
        if self.close_blocks:
            time.sleep(30)  # blocking on purpose: the event loop cannot run meanwhile


class LeasedDaemon(Daemon):
    """Skips etcd and the kernel: holds LEASE and keeps its status file fresh until stopped."""

    close_blocks = False

    async def _main(self):
        self.backend, self.lease, self.ready = FakeBackend(self.close_blocks), LEASE, True
        self.phase = "running"
        await self._status_loop()


class SlowCloseDaemon(LeasedDaemon):
    close_blocks = True


class BrokenDataPlane:
    def start(self, loop):
        raise OSError(9, "Bad file descriptor")


def uvloop_fail() -> None:
    config = parse_config(b'{"Network": "10.244.0.0/16"}')
    backend = create_backend(config, Underlay("lo", ipaddress.IPv4Address("127.0.0.1"), 1500),
                             NodeOptions(use_uvloop=True))
    try:
        asyncio.run(backend._run_on_uvloop(BrokenDataPlane()))
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}")


def main(mode: str, status_file: str) -> int:
    setup_logging(0, "overlayd")
    if mode == "uvloop-fail":
        uvloop_fail()
        return 0
    cls = {"waiting": Daemon, "leased": LeasedDaemon, "slow-close": SlowCloseDaemon}[mode]
    daemon = cls(DaemonOptions(etcd_endpoints="http://127.0.0.1:9", etcd_prefix="/t", status_file=status_file))
    daemon.store = NoConfigStore()
    return asyncio.run(daemon.serve())


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
