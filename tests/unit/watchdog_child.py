"""A Daemon with a real UDP backend on loopback (no tun, no etcd, no root), run as a child by
test_watchdog.py to watch its sd_notify datagrams and its /healthz.

``python watchdog_child.py UDP_PORT HEALTHZ_PORT`` with NOTIFY_SOCKET and WATCHDOG_USEC in the
environment. The data plane runs on uvloop in its own thread (the real
``UserspaceBackend.run``, heartbeat included) with a data plane that forwards nothing. SIGUSR1
wedges only that thread (a blocking call on its loop); SIGUSR2 wedges the control loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import signal
import sys
import time

from overlayd import health
from overlayd.backend import create_backend
from overlayd.backend.base import NodeOptions, Underlay
from overlayd.cli.common import setup_logging
from overlayd.daemon import Daemon, DaemonOptions, supervise
from overlayd.lease.model import Lease, LeaseAttrs
from overlayd.netconf import parse_config
from overlayd.watchdog import LoopHeartbeat, SystemdNotifier, watchdog_interval

LEASE = Lease(ipaddress.IPv4Network("10.244.3.0/24"), LeaseAttrs(ipaddress.IPv4Address("127.0.0.1"), "udp"),
              expiration=time.time() + 3600, handle=7)
WEDGE = 60.0  # seconds a wedged loop blocks (the test kills the child long before)


class IdleDataPlane:
    """Forwards nothing; remembers the loop it runs on, so SIGUSR1 can wedge that loop."""

    loop: asyncio.AbstractEventLoop | None = None
    ended: asyncio.Future | None = None

    def start(self, loop):
        self.loop = loop
        self.ended = loop.create_future()  # as DataPlane's: never fails here

    def stop(self):
        pass


class WatchedDaemon(Daemon):
    """As ``Daemon._main`` once ready, with the backend's data plane idle."""

    async def _main(self):
        loop = asyncio.get_running_loop()
        config = parse_config(json.dumps({"Network": "10.244.0.0/16",
                                          "Backend": {"Type": "udp", "Port": int(sys.argv[1])}}))
        backend = create_backend(config, Underlay("lo", ipaddress.IPv4Address("127.0.0.1"), 1500),
                                 NodeOptions(use_uvloop=True))
        dp = IdleDataPlane()
        backend._dataplane = lambda: dp
        self.liveness.watch("control loop", LoopHeartbeat().start(loop))
        self.health = health.HealthServer(("127.0.0.1", int(sys.argv[2])), self)
        await backend.preflight()
        self.liveness.watch("data plane", backend.heartbeat)
        self.backend, self.lease, self.ready = backend, LEASE, True
        peer = Lease(ipaddress.IPv4Network("10.244.7.0/24"), LeaseAttrs(ipaddress.IPv4Address("127.0.0.2"), "udp"))
        backend.table.set(peer.subnet, backend.peer_for(peer))
        self.peers_seen[peer.subnet] = (peer, time.time())
        loop.add_signal_handler(signal.SIGUSR1, lambda: dp.loop.call_soon_threadsafe(time.sleep, WEDGE))
        loop.add_signal_handler(signal.SIGUSR2, time.sleep, WEDGE)
        await supervise({
            "data plane": backend.run(),
            "systemd notifier": SystemdNotifier(self.liveness, lambda: health.status_line(self),
                                                watchdog_interval()).run(),
        })


def main() -> int:
    setup_logging(0, "overlayd")
    daemon = WatchedDaemon(DaemonOptions(etcd_endpoints="http://127.0.0.1:9", etcd_prefix="/t",
                                         status_file="/nonexistent/status.json"))
    return asyncio.run(daemon.serve())


if __name__ == "__main__":
    sys.exit(main())
