"""Start and stop a private etcd server (Debian's ``etcd-server``) for the lab and tests.

The server listens only where it is told (loopback, or the lab underlay inside
a namespace), on a port the caller picks, with its own data directory: it
never depends on, or touches, a system etcd service that may hold 2379.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

ETCD_BIN = os.environ.get("OVERLAYD_ETCD_BIN") or shutil.which("etcd") or "/usr/bin/etcd"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (on loopback of this namespace)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EtcdServer:
    """One single-member etcd, optionally inside a network namespace.

    ``start()`` waits until ``/health`` answers; ``stop()`` kills it (by its
    own PID) and ``restart()`` keeps the data directory, as an etcd restart does.
    """

    def __init__(self, data_dir: str, host: str = "127.0.0.1", port: int | None = None,
                 peer_port: int | None = None, netns: str | None = None, name: str = "overlayd-lab"):
        self.data_dir = data_dir
        self.host = host
        self.port = port or free_port()
        self.peer_port = peer_port or free_port()
        self.netns = netns
        self.name = name
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(os.path.dirname(os.path.abspath(data_dir)), f"{name}.etcd.log")

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _argv(self) -> list[str]:
        client = f"http://{self.host}:{self.port}"
        peer = f"http://{self.host}:{self.peer_port}"
        argv = [
            ETCD_BIN, "--name", self.name, "--data-dir", self.data_dir,
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}", "--initial-cluster-state", "new",
            "--log-level", "warn", "--logger", "zap",
        ]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        return argv

    def start(self, timeout: float = 20.0) -> "EtcdServer":
        """Start etcd and wait for it to be healthy."""
        os.makedirs(self.data_dir, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self._argv(), stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}; see {self.log_path}")
            if self.healthy():
                return
            time.sleep(0.1)
        raise RuntimeError(f"etcd not healthy after {timeout}s; see {self.log_path}")

    def healthy(self) -> bool:
        """True when ``/health`` answers (checked from inside the namespace if any)."""
        if self.netns:
            res = subprocess.run(
                ["ip", "netns", "exec", self.netns, "etcdctl", "--endpoints", self.endpoint,
                 "--dial-timeout", "1s", "endpoint", "health"],
                capture_output=True, env=dict(os.environ, ETCDCTL_API="3"))
            return res.returncode == 0
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """Kill the server (SIGTERM, then SIGKILL) and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self, timeout: float = 20.0) -> None:
        """Stop and start again on the same ports and data directory."""
        self.stop()
        self.start(timeout)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None
