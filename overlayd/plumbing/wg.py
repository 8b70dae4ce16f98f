"""WireGuard devices, keys and peers: the kernel's WireGuard where it exists, ``wireguard-go`` where not.

One configuration path for both kinds of device: the ``wg`` tool (wireguard-tools), which
speaks netlink to the kernel's device and the UAPI socket (``/var/run/wireguard/<dev>.sock``)
to wireguard-go's. Nothing here implements the protocol.

* Keys: :func:`load_or_create_key` keeps the private key in a file of mode 0600 that
  outlives restarts and reboots (flannel keeps its key under /run, so a reboot makes a new
  key and other nodes keep stale peers: k3s-io/k3s#5216). It is generated (``wg genkey``)
  only when the file is absent; a file that is not a key is an error, never replaced.
* Devices: :func:`create_device` tries ``ip link add <dev> type wireguard``; a kernel
  without the module answers "Unknown device type" (this machine's does), and then
  ``wireguard-go -f <dev>`` runs as our child, under ``setpriv --pdeathsig TERM`` so that
  it dies with us, and stops (removing its device) when we stop it by its PID. It is ready
  when its tun exists and its UAPI socket answers (a SIGKILLed one leaves the socket file).
  :meth:`Device.died` is an awaitable that raises the moment the child exits.
* Caution: wireguard-go's UAPI socket lives in the file system, not the network namespace:
  two namespaces sharing one ``/var/run`` (the lab's nodes) cannot both run a device of one name.
* Peers: :func:`set_peers` sends one batch of additions, changes and removals in one
  ``wg set`` invocation; :func:`show` reads ``wg show <dev> dump`` (:func:`parse_dump`, pure)
  for each peer's endpoint, last handshake and bytes. The preshared key reaches ``wg``
  through a memfd (``/proc/self/fd/N``), never a file on disk or the command line.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
import logging
import os
import socket
import stat
from typing import Iterable

from ..atomicfile import write_atomic
from ..errors import PlumbingError

log = logging.getLogger(__name__)

KEY_LEN = 32
UAPI_DIR = "/var/run/wireguard"
START_TIMEOUT = 10.0  # seconds for wireguard-go to make its device and socket
STOP_TIMEOUT = 5.0  # seconds after SIGTERM before SIGKILL


def decode_key(text: str) -> bytes | None:
    """The 32 bytes of a WireGuard key in base64 (as ``wg genkey`` prints it), or None if ``text``
    is not one. Pure."""
    text = text.strip()
    if len(text) != 44:
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == KEY_LEN else None


async def _run(argv: list[str], stdin: bytes | None = None, pass_fds: tuple = ()) -> str:
    """Run ``argv``; its stdout, or PlumbingError with the last line of its stderr."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, pass_fds=pass_fds)
    except FileNotFoundError:
        raise PlumbingError(f"{argv[0]}: not installed (Debian: apt-get install wireguard-tools "
                            "wireguard-go)") from None
    out, err = await proc.communicate(stdin)
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        raise PlumbingError(f"{' '.join(argv[:3])}: {lines[-1] if lines else f'exit {proc.returncode}'}")
    return out.decode()


# -- keys ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class KeyPair:
    """A node's WireGuard keys: the file holding the private key, and the public key (base64)."""

    path: str
    public: str


async def load_or_create_key(path: str) -> KeyPair:
    """The private key in ``path`` (mode 0600, made 0600 if it was wider), generated with
    ``wg genkey`` only when ``path`` does not exist; PlumbingError (one line) when the file
    holds anything but a key. The key itself never leaves the file but for ``wg pubkey``."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read(200)
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        text = (await _run(["wg", "genkey"])).strip()
        try:
            write_atomic(path, text + "\n", mode=0o600)
        except OSError as exc:
            raise PlumbingError(f"cannot write the WireGuard key {path}: {exc.strerror} "
                                "(is --state-dir writable?)") from None
        log.info("generated a WireGuard private key in %s", path)
    except OSError as exc:
        raise PlumbingError(f"cannot read the WireGuard key {path}: {exc.strerror}") from None
    else:
        if decode_key(text) is None:
            raise PlumbingError(f"{path} is not a WireGuard private key (44 base64 characters); "
                                "delete it to generate a new key, which every peer then learns")
        if mode & 0o077:
            os.chmod(path, 0o600)
            log.warning("%s was readable by others (mode %o): now 0600", path, mode)
    public = (await _run(["wg", "pubkey"], stdin=text.strip().encode() + b"\n")).strip()
    return KeyPair(path, public)


# -- the dump --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PeerState:
    """One peer as ``wg show <dev> dump`` lists it."""

    public_key: str
    has_psk: bool
    endpoint: str | None  # "198.18.0.2:51820"
    allowed_ips: tuple[str, ...]
    latest_handshake: int  # seconds since the epoch; 0: never
    rx_bytes: int
    tx_bytes: int
    keepalive: int  # seconds; 0: off


@dataclasses.dataclass(frozen=True)
class DeviceDump:
    """A device as ``wg show <dev> dump`` lists it (the private key left out)."""

    public_key: str | None
    listen_port: int
    peers: dict[str, PeerState]


def parse_dump(text: str) -> DeviceDump:
    """Parse ``wg show <dev> dump``: the device's line (private key, public key, listen port,
    fwmark), then one line per peer (public key, preshared key, endpoint, allowed IPs, latest
    handshake, rx bytes, tx bytes, keepalive), tab-separated, "(none)" or "off" for nothing.
    PlumbingError on a line of another shape. Pure."""
    lines = [line for line in text.splitlines() if line]
    if not lines:
        raise PlumbingError("wg show dump: empty output")
    head = lines[0].split("\t")
    if len(head) != 4:
        raise PlumbingError(f"wg show dump: device line has {len(head)} fields, not 4")
    peers = {}
    for line in lines[1:]:
        f = line.split("\t")
        if len(f) != 8:
            raise PlumbingError(f"wg show dump: peer line has {len(f)} fields, not 8")
        try:
            peers[f[0]] = PeerState(
                public_key=f[0], has_psk=f[1] != "(none)", endpoint=None if f[2] == "(none)" else f[2],
                allowed_ips=() if f[3] == "(none)" else tuple(f[3].split(",")),
                latest_handshake=int(f[4]), rx_bytes=int(f[5]), tx_bytes=int(f[6]),
                keepalive=0 if f[7] == "off" else int(f[7]))
        except ValueError:
            raise PlumbingError(f"wg show dump: a number field of peer {f[0]} is not a number") from None
    try:
        port = int(head[2])
    except ValueError:
        raise PlumbingError("wg show dump: listen port is not a number") from None
    return DeviceDump(None if head[1] == "(none)" else head[1], port, peers)


async def show(dev: str) -> DeviceDump:
    """``dev`` as ``wg show <dev> dump`` reads it now."""
    return parse_dump(await _run(["wg", "show", dev, "dump"]))


# -- configuration ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PeerConfig:
    """What we want of one peer."""

    public_key: str
    allowed_ips: tuple[str, ...]
    endpoint: str  # "198.18.0.2:51820"
    keepalive: int = 0  # seconds; 0: off


async def configure(dev: str, key: KeyPair, listen_port: int) -> None:
    """Give ``dev`` its private key (read by ``wg`` from the key file) and listen port."""
    await _run(["wg", "set", dev, "listen-port", str(listen_port), "private-key", key.path])


def peer_args(add: Iterable[PeerConfig], remove: Iterable[str], psk_path: str | None) -> list[str]:
    """The ``wg set`` arguments that remove the peers ``remove`` (public keys) and add or
    change the peers ``add``, each peer's allowed IPs replaced by the given ones (``wg set``'s
    rule), its preshared key read from ``psk_path`` (None: none). Pure."""
    args: list[str] = []
    for public_key in remove:
        args += ["peer", public_key, "remove"]
    for peer in add:
        args += ["peer", peer.public_key, "endpoint", peer.endpoint,
                 "persistent-keepalive", str(peer.keepalive) if peer.keepalive else "off",
                 "allowed-ips", ",".join(peer.allowed_ips),
                 "preshared-key", psk_path or "/dev/null"]
    return args


async def set_peers(dev: str, add: Iterable[PeerConfig] = (), remove: Iterable[str] = (),
                    psk: str | None = None) -> None:
    """Apply one batch to ``dev`` in one ``wg set``: peers ``remove`` (public keys) go, peers
    ``add`` are added or changed. ``psk`` (base64) is every added peer's preshared key
    (``/dev/null`` clears it). Nothing is run for an empty batch."""
    add, remove = list(add), list(remove)
    if not add and not remove:
        return
    fd = None
    try:
        if psk is not None and add:
            fd = os.memfd_create("overlayd-wg-psk", os.MFD_CLOEXEC)
            os.write(fd, psk.encode() + b"\n")
        # wg opens the path once per peer; a memfd reopened through /proc starts at offset 0 each time
        await _run(["wg", "set", dev, *peer_args(add, remove, f"/proc/self/fd/{fd}" if fd is not None else None)],
                   pass_fds=(fd,) if fd is not None else ())
    finally:
        if fd is not None:
            os.close(fd)


async def greet(dev: str, public_keys: Iterable[str], keepalive: int = 0) -> None:
    """Start a session with the peers ``public_keys`` of ``dev`` now, before any traffic: turning a
    persistent keepalive on sends one at once (the kernel and wireguard-go alike), and with no
    session that starts a handshake, retried by WireGuard's own timers; the keepalive is then set
    back to ``keepalive`` (0: off). Nothing is run for no peers."""
    keys = list(public_keys)
    if not keys:
        return
    await _run(["wg", "set", dev, *(arg for key in keys for arg in ("peer", key, "persistent-keepalive", "25"))])
    back = str(keepalive) if keepalive else "off"
    await _run(["wg", "set", dev, *(arg for key in keys for arg in ("peer", key, "persistent-keepalive", back))])


# -- devices ---------------------------------------------------------------------------------

class Device:
    """A WireGuard device we made: the kernel's (:attr:`proc` None) or wireguard-go's."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process | None = None):
        self.name = name
        self.proc = proc
        self._stderr: list[str] = []
        self._reader = asyncio.ensure_future(self._read_stderr()) if proc is not None else None

    @property
    def userspace(self) -> bool:
        """True when wireguard-go carries the device."""
        return self.proc is not None

    @property
    def pid(self) -> int | None:
        """wireguard-go's PID (None for a kernel device)."""
        return self.proc.pid if self.proc is not None else None

    async def _read_stderr(self) -> None:
        async for line in self.proc.stderr:  # kept short: the last lines explain a death
            self._stderr = (self._stderr + [line.decode(errors="replace").rstrip()])[-5:]

    async def died(self) -> None:
        """Wait for wireguard-go to exit, then raise PlumbingError saying how; a kernel device
        never returns here (cancel it)."""
        if self.proc is None:
            await asyncio.Future()
        code = await self.proc.wait()
        if self._reader is not None:
            await asyncio.wait([self._reader], timeout=1.0)
        last = next((line for line in reversed(self._stderr) if line), "")
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        raise PlumbingError(f"wireguard-go for {self.name} (PID {self.proc.pid}) {how}"
                            + (f": {last}" if last else ""))

    async def stop(self) -> None:
        """Stop wireguard-go by its PID (SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT`): it
        removes its device and socket. A kernel device is left as it is (see :func:`delete_device`)."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await asyncio.wait([self._reader], timeout=1.0)


async def _link_kind(name: str) -> str | None:
    """``name``'s link kind ("wireguard", "tun", "" for none given), or None when there is no such link."""
    proc = await asyncio.create_subprocess_exec("ip", "-d", "-j", "link", "show", "dev", name,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        return None
    info = json.loads(out or b"[{}]")[0].get("linkinfo", {})
    return info.get("info_kind", "")


async def create_device(name: str, mtu: int, prefer: str = "auto") -> Device:
    """Make WireGuard device ``name`` with ``mtu``, up: the kernel's (kept if it is there already)
    or, where the kernel has no WireGuard (or ``prefer`` is "userspace"), wireguard-go as our
    child. A link of that name that is not a kernel WireGuard device (a dead wireguard-go's
    tun) is deleted first."""
    kind = await _link_kind(name)
    if kind == "wireguard" and prefer != "userspace":
        dev = Device(name)
    else:
        if kind is not None:
            await _run(["ip", "link", "del", "dev", name])
            log.info("%s: removed a stale %s link", name, kind or "unknown")
        dev = None
        if prefer != "userspace":
            try:
                await _run(["ip", "link", "add", "dev", name, "type", "wireguard"])
                dev = Device(name)
            except PlumbingError as exc:
                if "Unknown device type" not in str(exc) and "not supported" not in str(exc):
                    raise
                log.info("%s: the kernel has no WireGuard; starting wireguard-go", name)
        if dev is None:
            dev = await _start_wireguard_go(name)
    await _run(["ip", "link", "set", "dev", name, "mtu", str(mtu), "up"])
    return dev


def _uapi_answers(path: str) -> bool:
    """True when something accepts connections on the UAPI socket ``path``: the file alone is not
    enough, since a wireguard-go killed by SIGKILL leaves it behind (refusing connections)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


async def _start_wireguard_go(name: str) -> Device:
    sock = os.path.join(UAPI_DIR, f"{name}.sock")
    try:
        proc = await asyncio.create_subprocess_exec(
            "setpriv", "--pdeathsig", "TERM", "wireguard-go", "-f", name,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, "LOG_LEVEL": "error"})
    except FileNotFoundError:
        raise PlumbingError("wireguard-go: not installed (Debian: apt-get install wireguard-go)") from None
    dev = Device(name, proc)
    died = asyncio.ensure_future(dev.died())
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while not (_uapi_answers(sock) and await _link_kind(name) is not None):
            if died.done():
                died.result()  # raises: it exited while starting
            if loop.time() > deadline:
                raise PlumbingError(f"wireguard-go for {name} made no device in {START_TIMEOUT:.0f} s")
            await asyncio.wait([died], timeout=0.02)
    except BaseException:
        died.cancel()
        await dev.stop()
        raise
    died.cancel()
    return dev


async def delete_device(name: str) -> None:
    """Delete link ``name`` if it exists (a kernel WireGuard device outlives us)."""
    if await _link_kind(name) is not None:
        await _run(["ip", "link", "del", "dev", name])
