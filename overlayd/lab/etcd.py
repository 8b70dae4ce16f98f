"""Start and stop private etcd servers (Debian's ``etcd-server``) for the lab and tests.

A server listens only where it is told (loopback, or the lab underlay inside
a namespace), on a port the caller picks, with its own data directory: it
never depends on, or touches, a system etcd service that may hold 2379.

Several :class:`EtcdServer` objects sharing one ``cluster`` map form one etcd
cluster (start them all with ``wait=False``, then wait: one member alone has
no quorum). With a :class:`LabPKI` the client URLs are https and require a
client certificate (``--client-cert-auth``); peer URLs stay http, they never
leave the lab. The PKI is made on the fly with Debian's ``openssl`` (EC
P-256, valid two days): a CA, one server certificate per member naming its
IP (gRPC checks IP SANs), and one client certificate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request

from ..hostport import host_port

ETCD_BIN = os.environ.get("OVERLAYD_ETCD_BIN") or shutil.which("etcd") or "/usr/bin/etcd"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (on ``host``, loopback by default, of this namespace)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclasses.dataclass(frozen=True)
class LabPKI:
    """Certificates in ``directory``: ``ca.crt``, ``client.{crt,key}``, ``<member>.{crt,key}``."""

    directory: str

    @property
    def ca(self) -> str:
        return os.path.join(self.directory, "ca.crt")

    @property
    def client_cert(self) -> str:
        return os.path.join(self.directory, "client.crt")

    @property
    def client_key(self) -> str:
        return os.path.join(self.directory, "client.key")

    def server(self, name: str) -> tuple[str, str]:
        """``(cert, key)`` of member ``name`` (made by :meth:`create`)."""
        return os.path.join(self.directory, f"{name}.crt"), os.path.join(self.directory, f"{name}.key")

    @classmethod
    def create(cls, directory: str, members: dict[str, str]) -> "LabPKI":
        """A CA, a server certificate per ``{member name: IP}`` and a client certificate."""
        os.makedirs(directory, mode=0o700, exist_ok=True)
        pki = cls(directory)
        ca_key = os.path.join(directory, "ca.key")
        _openssl("req", "-x509", *_NEW_KEY, "-days", "2", "-keyout", ca_key, "-out", pki.ca,
                 "-subj", "/CN=overlayd-lab-ca", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign")
        for name, ip in members.items():
            pki._issue(name, ca_key, f"subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth,clientAuth\n")
        pki._issue("client", ca_key, "extendedKeyUsage=clientAuth\n")
        return pki

    def _issue(self, name: str, ca_key: str, extensions: str) -> None:
        cert, key = self.server(name)
        csr, ext = f"{cert}.csr", f"{cert}.ext"
        with open(ext, "w", encoding="utf-8") as f:
            f.write(extensions)
        _openssl("req", "-new", *_NEW_KEY, "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
        _openssl("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", ca_key, "-set_serial",
                 str(int.from_bytes(os.urandom(8), "big")), "-days", "2", "-out", cert, "-extfile", ext)
        for path in (csr, ext):
            os.unlink(path)

    def etcdctl_args(self) -> list[str]:
        """etcdctl's flags for this PKI."""
        return ["--cacert", self.ca, "--cert", self.client_cert, "--key", self.client_key]


_NEW_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args: str) -> None:
    res = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise RuntimeError(f"openssl {args[0]}: {res.stderr.strip().splitlines()[-1:]}")


class EtcdServer:
    """One etcd member, optionally inside a network namespace.

    Alone (``cluster`` None) it is a single-member cluster. ``cluster`` maps
    every member's name to its peer URL, this one's included, for a
    multi-member cluster. ``start()`` waits until ``/health`` answers (pass
    ``wait=False`` and call :meth:`wait_healthy` once all members run);
    ``stop()`` kills it (by its own PID) and ``restart()`` keeps the data
    directory, as an etcd restart does.
    """

    def __init__(self, data_dir: str, host: str = "127.0.0.1", port: int | None = None,
                 peer_port: int | None = None, netns: str | None = None, name: str = "overlayd-lab",
                 cluster: dict[str, str] | None = None, pki: LabPKI | None = None,
                 extra_args: list[str] | None = None):
        self.data_dir = data_dir
        self.host = host
        self.port = port or free_port()
        self.peer_port = peer_port or free_port()
        self.netns = netns
        self.name = name
        self.cluster = cluster or {name: self.peer_url}
        self.pki = pki
        self.extra_args = list(extra_args or [])  # more etcd flags, e.g. --auth-token-ttl
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(os.path.dirname(os.path.abspath(data_dir)), f"{name}.etcd.log")

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.pki else 'http'}://{host_port(self.host, self.port)}"

    @property
    def peer_url(self) -> str:
        return f"http://{host_port(self.host, self.peer_port)}"

    def _argv(self) -> list[str]:
        initial_cluster = ",".join(f"{n}={url}" for n, url in self.cluster.items())
        argv = [
            ETCD_BIN, "--name", self.name, "--data-dir", self.data_dir,
            "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", initial_cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", hashlib.sha256(initial_cluster.encode()).hexdigest()[:16],
            "--log-level", "warn", "--logger", "zap",
        ]
        if self.pki:
            cert, key = self.pki.server(self.name)
            argv += ["--cert-file", cert, "--key-file", key, "--trusted-ca-file", self.pki.ca,
                     "--client-cert-auth"]
        argv += self.extra_args
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        return argv

    def start(self, timeout: float = 20.0, wait: bool = True) -> "EtcdServer":
        """Start etcd and (with ``wait``) wait for it to be healthy."""
        os.makedirs(self.data_dir, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self._argv(), stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        if wait:
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
                 "--dial-timeout", "1s", "--command-timeout", "2s",
                 *(self.pki.etcdctl_args() if self.pki else []), "endpoint", "health"],
                capture_output=True, env=dict(os.environ, ETCDCTL_API="3"), timeout=10)
            return res.returncode == 0
        context = None
        if self.pki:
            context = ssl.create_default_context(cafile=self.pki.ca)
            context.load_cert_chain(self.pki.client_cert, self.pki.client_key)
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1, context=context) as resp:
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
