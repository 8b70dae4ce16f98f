"""The machines lab: each lab node a booted Debian 12 machine running the shipped systemd unit.

``scripts/lab up --machines`` (``Lab(machines=True)``) builds the namespace lab
as usual (underlay, etcd, one network namespace per node), then boots a Debian
12 container with its own systemd in each node's namespace and provisions it
with ``vagrant/provision-node.sh``, the script the Vagrant VMs run: it installs
overlayd from the checkout with ``scripts/install``, writes
``/etc/default/overlayd`` and starts ``systemd/overlayd.service`` through
``systemctl``. So the unit's readiness (Type=notify), watchdog, restarts and
sandbox meet a real systemd, and the node's own CNI plugin
(``/opt/cni/bin/overlayd``, put there by ``scripts/install``) makes its pods.

Design notes:

* The image: ``mmdebstrap`` (minbase bookworm from Debian's archive) with
  systemd, dbus and every package ``scripts/install --list-packages`` names,
  so that its apt step finds nothing missing in a node (which has no route
  out), plus a venv at /opt/overlayd/venv with overlayd's Python requirements,
  and their wheels with an /etc/pip.conf pointing pip at them (offline), so
  that the node's ``pip install -e`` finds its dependencies and build
  requirements. Built once into ``/var/cache/overlayd/machines/<key>``, the
  key hashing the recipe (mmdebstrap's arguments and hooks: packages,
  requirements): a changed recipe builds a new image, and images no lab has
  mounted are removed then. ``scripts/install --machines`` builds it ahead
  (``scripts/test`` does, so the suite never waits for it).
* A node's root is an overlayfs, the image below and ``<node>/machine/upper``
  above: nodes share one image, and a reboot keeps what provisioning wrote.
  The checkout is seen at /opt/overlayd/src, as in a Vagrant VM, through an
  overlayfs of its own, so the node builds its editable install and C engine
  there without touching the host's checkout. (The host's venv is not bound
  in: it may use a Python the node does not have, such as pyenv's under
  /root.)
* systemd-nspawn runs with ``--register=no --keep-unit`` (this host may have
  no systemd as PID 1) from a cgroup of its own per machine: nspawn makes
  ``payload`` and ``supervisor`` below the cgroup it starts in, so two
  machines must not share one. ``--network-namespace-path=`` puts it in the
  node's namespace; ``--private-network`` as well, for CAP_NET_ADMIN and a
  writable /proc/sys/net. The host's /run/netns is bound read-only at
  :data:`HOST_NETNS`: pod namespaces the lab makes later propagate there, and
  the node's CNI plugin is given them from there (CNI_NETNS).
* A reboot ends systemd-nspawn with status 133; the machine's supervisor (a
  shell loop, :data:`SUPERVISE`) starts it again, as systemd-nspawn@.service
  does. The network namespace outlives it, as a machine's NIC would.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Callable

import click

from .topology import Lab, LabError, Node, Pod, _alive, _wait_gone, run

CACHE_DIR = "/var/cache/overlayd/machines"  # node images, one directory per recipe key
SUITE = "bookworm"
BASE_PACKAGES = ("systemd-sysv", "dbus", "iproute2")  # a booting Debian with systemd
SRC = "/opt/overlayd/src"  # where a machine sees the checkout (where the Vagrant VMs have it)
VENV = "/opt/overlayd/venv"  # scripts/install's default venv
WHEELS = "/var/cache/overlayd/wheels"  # in the image: the requirements' wheels, pip's only source
HOST_NETNS = "/run/overlayd-lab/netns"  # in a machine: the host's /run/netns, read-only
PKI = "/etc/overlayd/lab-pki"  # in a machine: the lab's etcd certificates (etcd_tls)
PROVISION = f"{SRC}/vagrant/provision-node.sh"
CNI_CONFLIST = "/etc/cni/net.d/10-overlayd.conflist"  # written by scripts/cni-install
CNI_BIN = "/opt/cni/bin"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REBOOT_STATUS = 133  # systemd-nspawn's exit status when the container rebooted
CGROUP_ROOT = "/sys/fs/cgroup"
CGROUP_DIR = "overlayd-lab"  # machines' cgroups: <hierarchy>/overlayd-lab/<machine>
REPO = Path(__file__).resolve().parents[2]  # the checkout this package runs from

# The machine's supervisor: bash -c SUPERVISE overlayd-machine CGROUPS NSPAWN_ARGS...
# It moves itself into the machine's cgroups (colon-separated), then runs systemd-nspawn until it
# ends with anything but a reboot.
SUPERVISE = r"""
IFS=: read -r -a cgroups <<< "$1"; shift
for cg in "${cgroups[@]}"; do mkdir -p "$cg" && echo $$ > "$cg/cgroup.procs" || exit 1; done
while :; do systemd-nspawn "$@"; rc=$?; [ "$rc" -eq 133 ] || exit "$rc"; done
"""


def requirements(pyproject: dict) -> tuple[str, ...]:
    """The Python requirements a node's venv needs, from pyproject.toml's contents: overlayd's
    dependencies, its ``test`` extra (scripts/install installs ``overlayd[test]``) and its build
    requirements (the node's pip builds it, offline). Pure."""
    project = pyproject["project"]
    found = [*project.get("dependencies", []), *project.get("optional-dependencies", {}).get("test", []),
             *pyproject.get("build-system", {}).get("requires", [])]
    return tuple(dict.fromkeys(found))


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a node image is built: Debian packages and Python requirements (see the module notes)."""

    packages: tuple[str, ...]
    requirements: tuple[str, ...]
    suite: str = SUITE

    def hooks(self, wheels: str) -> list[str]:
        """mmdebstrap's customize hooks (``$1`` is the new tree), with the wheels downloaded to ``wheels``."""
        # no-build-isolation = false turns build isolation off (pip's own inversion): the node builds
        # overlayd with the venv's setuptools and wheel, not with copies installed anew every time
        pip_conf = f"[global]\nno-index = true\nfind-links = {WHEELS}\nno-build-isolation = false\n"
        return [
            'rm -f "$1/etc/hostname"',  # the name comes from systemd-nspawn --hostname
            'systemctl --root="$1" disable etcd.service',  # nodes run no etcd server: the lab's etcd does
            f'mkdir -p "$1{os.path.dirname(WHEELS)}" && cp -r {shlex.quote(wheels)} "$1{WHEELS}"',
            f'printf %s {shlex.quote(pip_conf)} > "$1/etc/pip.conf"',
            f'chroot "$1" python3 -m venv {VENV}',
            # env -i: the build host's PIP_* variables must not override the image's pip.conf
            f'chroot "$1" env -i PATH={PATH} {VENV}/bin/pip install -q '
            + " ".join(shlex.quote(r) for r in self.requirements),
        ]

    def mmdebstrap_argv(self, target: str, wheels: str) -> list[str]:
        """The command that builds the image's tree into ``target``. Pure."""
        packages = ",".join(dict.fromkeys(BASE_PACKAGES + self.packages))
        return ["mmdebstrap", "--mode=root", "--variant=minbase", f"--include={packages}",
                *(f"--customize-hook={hook}" for hook in self.hooks(wheels)), self.suite, target]

    def key(self) -> str:
        """The image's name in the cache: a hash of everything that makes it. Pure."""
        text = json.dumps(self.mmdebstrap_argv("TARGET", "WHEELS"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def recipe_for(repo: Path = REPO) -> Recipe:
    """The recipe of the checkout at ``repo``: scripts/install's packages, pyproject's requirements."""
    packages = run([str(repo / "scripts" / "install"), "--list-packages"]).stdout.split()
    with open(repo / "pyproject.toml", "rb") as f:
        return Recipe(tuple(packages), requirements(tomllib.load(f)))


def _mounts() -> list[tuple[str, str]]:
    """``(mount point, super options)`` of every mount of this process's mount namespace."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            separator = fields.index("-")
            point = fields[4].encode().decode("unicode_escape")  # \040 for a space
            found.append((point, fields[separator + 3]))
    return found


def ensure_image(recipe: Recipe, cache_dir: str = CACHE_DIR,
                 progress: Callable[[str], None] = lambda message: None) -> str:
    """The root tree of ``recipe``'s image, built first if the cache has none (see the module notes).

    Builds are serialized by a lock in ``cache_dir`` (labs brought up side by side wait for one
    build); a build goes to a temporary directory renamed into place when complete. Images of
    other recipes that no mount uses are removed after a build.
    """
    os.makedirs(cache_dir, exist_ok=True)
    image = os.path.join(cache_dir, recipe.key())
    with open(os.path.join(cache_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isdir(image):
            _build(recipe, cache_dir, image, progress)
    return os.path.join(image, "rootfs")


def need(*commands: str) -> None:
    """:class:`LabError` naming the first of ``commands`` this host lacks."""
    for command in commands:
        if shutil.which(command) is None:
            raise LabError(f"{command} not found: the machines lab needs it (run scripts/install)")


def _build(recipe: Recipe, cache_dir: str, image: str, progress: Callable[[str], None]) -> None:
    need("mmdebstrap")
    progress(f"building the node image {image} (Debian {recipe.suite}, once per recipe: about a minute)")
    started = time.monotonic()
    build = tempfile.mkdtemp(prefix=".build-", dir=cache_dir)
    log = os.path.join(cache_dir, "build.log")
    try:
        wheels = os.path.join(build, "wheels")
        run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary=:all:",
             "-d", wheels, *recipe.requirements], timeout=600)
        with open(log, "w", encoding="utf-8") as out:
            try:
                code = subprocess.run(recipe.mmdebstrap_argv(os.path.join(build, "rootfs"), wheels), stdout=out,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=1800).returncode
            except subprocess.TimeoutExpired:
                code = "timed out after 1800s"
        if code != 0:
            raise LabError(f"building the node image failed (mmdebstrap: {code}); its output is in {log}")
        shutil.rmtree(wheels)  # copied into the tree
        with open(os.path.join(build, "recipe.json"), "w", encoding="utf-8") as f:
            json.dump(dataclasses.asdict(recipe), f, indent=2)
        os.rename(build, image)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    progress(f"node image built in {time.monotonic() - started:.0f}s")
    in_use = " ".join(options for _, options in _mounts())
    for entry in os.listdir(cache_dir):
        path = os.path.join(cache_dir, entry)
        if path != image and os.path.isdir(path) and f"{path}/rootfs" not in in_use:
            shutil.rmtree(path, ignore_errors=True)  # another recipe's image, or a build that died


def flag_settings(args: list[str]) -> list[str]:
    """``overlayd`` flags as lines of /etc/default/overlayd, each flag's environment variable:
    ``--resync-interval 1`` is ``OVERLAYD_RESYNC_INTERVAL=1``, a switch is ``=true``; a repeated
    flag's values are joined by spaces, as the variable takes them. :class:`LabError` for a flag
    overlayd does not have."""
    from ..cli.daemon import cli  # click's own view of the daemon's flags

    options = {name: param for param in cli.params if isinstance(param, click.Option) for name in param.opts}
    settings: dict[str, list[str]] = {}
    i = 0
    while i < len(args):
        name, has_value, value = args[i].partition("=")
        param = options.get(name)
        if param is None:
            raise LabError(f"{args[i]!r} is not a flag of overlayd (overlayd --help)")
        if param.is_flag:
            value = "true"
        elif not has_value:
            if i + 1 == len(args):
                raise LabError(f"{name} needs a value")
            i += 1
            value = args[i]
        settings.setdefault(param.envvar or f"OVERLAYD_{param.name.upper()}", []).append(value)
        i += 1
    return [f"{var}={' '.join(values)}" for var, values in settings.items()]


def daemon_settings(node: Node, lease_ttl: int, tls: bool) -> list[str]:
    """The lines of ``node``'s /etc/default/overlayd beyond the etcd endpoints and the public IP
    (``provision-node.sh`` writes those): the lab's daemon settings (``--iface eth0``, its lease
    TTL, the node's variant and ``extra_args``), as the namespace lab gives them as flags. Pure."""
    lines = ["OVERLAYD_IFACE=eth0", f"OVERLAYD_LEASE_TTL={lease_ttl}", f"OVERLAYD_VXLAN_IMPL={node.vxlan_impl}",
             f"OVERLAYD_EVENT_LOOP={node.event_loop}"]
    if node.ip6:
        lines.append(f"OVERLAYD_PUBLIC_IPV6={node.ip6}")
    if node.ip_masq:
        lines.append("OVERLAYD_IP_MASQ=true")
    if node.datapath:
        lines.append(f"OVERLAYD_DATAPATH={node.datapath}")
    if tls:
        lines += [f"OVERLAYD_ETCD_CAFILE={PKI}/ca.crt", f"OVERLAYD_ETCD_CERTFILE={PKI}/client.crt",
                  f"OVERLAYD_ETCD_KEYFILE={PKI}/client.key"]
    return lines + flag_settings(node.extra_args)


def cgroup_hierarchies(root: str = CGROUP_ROOT) -> list[str]:
    """The cgroup hierarchies systemd-nspawn uses here: the unified one alone, or (hybrid, as on
    this CI machine) the unified one and systemd's named v1 hierarchy."""
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        return [root]
    found = [os.path.join(root, name) for name in ("unified", "systemd") if os.path.isdir(os.path.join(root, name))]
    if not found:
        raise LabError(f"no cgroup hierarchy for systemd-nspawn under {root}")
    return found


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="utf-8") as f:
            return [int(child) for child in f.read().split()]
    except OSError:
        return []


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return ""


class Machine:
    """One node's machine: its overlay root, systemd-nspawn under its supervisor, commands inside.

    Everything it makes on the host lives in ``directory`` (root and checkout overlays, the
    console log), in its cgroups (:meth:`cgroups`) and in its mounts, all removed by :meth:`stop`.
    """

    def __init__(self, name: str, hostname: str, netns: str, directory: str):
        self.name = name  # systemd-nspawn's machine name: unique on this host (the lab prefix is in it)
        self.hostname = hostname
        self.netns = netns
        self.directory = directory
        self.root = os.path.join(directory, "root")
        self.src = os.path.join(directory, "src")
        self.console = os.path.join(directory, "console.log")

    @property
    def provisioned(self) -> bool:
        """Whether provisioning wrote the node's settings (kept in the root's upper layer)."""
        return os.path.exists(os.path.join(self.directory, "upper", "etc", "default", "overlayd"))

    def cgroups(self) -> list[str]:
        return [os.path.join(h, CGROUP_DIR, self.name) for h in cgroup_hierarchies()]

    def _mount_overlay(self, lower: str, target: str, layer: str) -> None:
        upper, work = (os.path.join(self.directory, f"{layer}{part}") for part in ("upper", "work"))
        for directory in (upper, work, target):
            os.makedirs(directory, exist_ok=True)
        if not os.path.ismount(target):
            run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}",
                 target])

    def start(self, image: str, repo: str, binds: list[str]) -> int:
        """Mount the machine's root and checkout overlays and boot it; the supervisor's PID.
        ``binds`` are more ``--bind-ro=`` arguments of systemd-nspawn."""
        need("systemd-nspawn", "nsenter")
        self._mount_overlay(image, self.root, "")
        self._mount_overlay(repo, self.src, "src-")
        nspawn = ["--quiet", "--boot", f"--directory={self.root}", f"--machine={self.name}",
                  f"--hostname={self.hostname}", "--register=no", "--keep-unit", "--console=read-only",
                  "--private-network", f"--network-namespace-path=/run/netns/{self.netns}",
                  f"--bind={self.src}:{SRC}", f"--bind-ro=/run/netns:{HOST_NETNS}", *(f"--bind-ro={b}" for b in binds)]
        with open(self.console, "ab") as log:
            proc = subprocess.Popen(["bash", "-c", SUPERVISE, "overlayd-machine", ":".join(self.cgroups()), *nspawn],
                                    stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        return proc.pid

    def supervises(self, pid: int | None) -> bool:
        """Whether ``pid`` is this machine's supervisor (it runs, and its command line names our
        root: a PID the lab recorded may have been reused since)."""
        if not _alive(pid):
            return False
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f"--directory={self.root}".encode() in f.read().split(b"\0")
        except OSError:
            return False

    def nspawn(self, supervisor: int | None) -> int | None:
        """The supervisor's systemd-nspawn (None between two boots, or when it is not running)."""
        if not self.supervises(supervisor):
            return None
        return next((pid for pid in _children(supervisor) if _comm(pid) == "systemd-nspawn"), None)

    def leader(self, supervisor: int | None) -> int | None:
        """The machine's PID 1 (its systemd) as this host sees it, once it runs systemd."""
        nspawn = self.nspawn(supervisor)
        if nspawn is None:
            return None
        return next((pid for pid in _children(nspawn) if _comm(pid) == "systemd"), None)

    def argv(self, supervisor: int | None, argv: list[str], env: dict | None = None) -> list[str]:
        """``argv`` to run inside the machine (all its namespaces), with a clean environment plus ``env``."""
        leader = self.leader(supervisor)
        if leader is None:
            raise LabError(f"machine {self.name} is not running")
        variables = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", **({"TERM": os.environ["TERM"]}
                     if "TERM" in os.environ else {}), **(env or {})}
        return ["nsenter", f"--target={leader}", "--all", "--", "env", "-i",
                *(f"{k}={v}" for k, v in variables.items()), *argv]

    def path(self, supervisor: int | None, path: str) -> str:
        """``path`` inside the running machine as this host reaches it (under /proc/PID/root), or
        where it would be in the stopped machine's root."""
        leader = self.leader(supervisor)
        return f"/proc/{leader}/root{path}" if leader else os.path.join(self.root, path.lstrip("/"))

    def console_tail(self) -> str:
        try:
            with open(self.console, encoding="utf-8", errors="replace") as f:
                lines = [line.strip() for line in f if line.strip()]
            return lines[-1] if lines else "(empty console log)"
        except OSError:
            return "(no console log)"

    def wait_booted(self, supervisor: int, timeout: float = 90) -> None:
        """Wait until the machine's systemd has finished booting (``running``); :class:`LabError`
        naming the failed units if it booted ``degraded``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(supervisor):
                raise LabError(f"machine {self.name} exited: {self.console_tail()}")
            if self.leader(supervisor) is not None:
                res = run(self.argv(supervisor, ["systemctl", "is-system-running", "--wait"]), check=False,
                          timeout=max(1.0, deadline - time.monotonic()))
                state = res.stdout.strip()
                if state == "running":
                    return
                if state == "degraded":
                    failed = run(self.argv(supervisor, ["systemctl", "--failed", "--plain", "--no-legend"]),
                                 check=False).stdout.split()
                    raise LabError(f"machine {self.name} booted degraded: failed units {failed[:1] or '?'}")
            time.sleep(0.1)
        raise LabError(f"machine {self.name} not booted after {timeout:.0f}s: {self.console_tail()}")

    def stop(self, supervisor: int | None, timeout: float = 60) -> None:
        """Power the machine off (SIGTERM to systemd-nspawn: a clean shutdown), SIGKILL what is left
        of it after ``timeout``, then remove its mounts, cgroups and nspawn's leftovers."""
        if not self.supervises(supervisor):
            supervisor = None  # gone (what is left in its cgroups is killed below)
        deadline = time.monotonic() + timeout
        while _alive(supervisor) and time.monotonic() < deadline:
            nspawn = self.nspawn(supervisor)
            if nspawn is not None:  # again after a reboot in between
                os.kill(nspawn, signal.SIGTERM)
            _wait_gone(supervisor, 1)
        if _alive(supervisor):
            self._kill_all()
            if not _wait_gone(supervisor, 10):
                raise LabError(f"machine {self.name} (supervisor pid {supervisor}) outlived SIGKILL by 10 s")
        self._kill_all()  # nothing should be left; a container init reparented to us would be
        for target in (self.src, self.root):
            if os.path.ismount(target):
                run(["umount", target])
        for cgroup in self.cgroups():
            _remove_cgroup(cgroup)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(cgroup))  # the lab's parent, once no machine is left
        propagate = f"/run/systemd/nspawn/propagate/{self.name}"
        if os.path.isdir(propagate) and not any(p.startswith(propagate) for p, _ in _mounts()):
            shutil.rmtree(propagate, ignore_errors=True)  # left where /run is not a tmpfs

    def _kill_all(self) -> None:
        for cgroup in self.cgroups():
            for directory, _, _ in os.walk(cgroup):
                try:
                    with open(os.path.join(directory, "cgroup.procs"), encoding="utf-8") as f:
                        pids = [int(pid) for pid in f.read().split()]
                except OSError:
                    continue
                for pid in pids:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
        for cgroup in self.cgroups():
            for directory, _, _ in os.walk(cgroup):
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and _read(os.path.join(directory, "cgroup.procs")).strip():
                    time.sleep(0.05)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""


def _remove_cgroup(cgroup: str) -> None:
    """Remove ``cgroup`` and the cgroups below it (empty once their processes are gone)."""
    if not os.path.isdir(cgroup):
        return
    for directory, _, _ in sorted(os.walk(cgroup), key=lambda entry: -entry[0].count("/")):
        with contextlib.suppress(OSError):
            os.rmdir(directory)


class MachineNodes:
    """What a machines lab's :class:`~overlayd.lab.topology.Lab` does with its nodes.

    A node's ``pid`` is its machine's supervisor; its overlayd is the unit's main process,
    driven through ``systemctl`` inside the machine.
    """

    def __init__(self, lab: Lab):
        self.lab = lab

    def machine(self, node: Node) -> Machine:
        return Machine(node.netns, node.name, node.netns, os.path.join(self.lab.node_dir(node), "machine"))

    def image(self) -> str:
        """The node image's root tree (built first if the cache has none)."""
        return ensure_image(recipe_for(), progress=self.lab.progress)

    def running(self, node: Node) -> bool:
        return self.machine(node).leader(node.pid) is not None

    def argv(self, node: Node, argv: list[str]) -> list[str]:
        """``argv`` to run inside ``node``'s machine, with the etcd settings its overlayd has."""
        return self.machine(node).argv(node.pid, argv, self.etcd_env())

    def run(self, node: Node, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        return run(self.argv(node, argv), **kwargs)

    def path(self, node: Node, path: str) -> str:
        """``path`` of ``node``'s machine as this host reaches it."""
        return self.machine(node).path(node.pid, path)

    def etcd_env(self) -> dict:
        """The OVERLAYD_ETCD_* variables for commands in a machine (certificates at :data:`PKI`)."""
        env = {"OVERLAYD_ETCD_ENDPOINTS": self.lab.etcd_endpoints}
        if self.lab.etcd_tls:
            env.update(OVERLAYD_ETCD_CAFILE=f"{PKI}/ca.crt", OVERLAYD_ETCD_CERTFILE=f"{PKI}/client.crt",
                       OVERLAYD_ETCD_KEYFILE=f"{PKI}/client.key")
        return env

    def boot_all(self, nodes: list[Node]) -> None:
        """Boot and provision ``nodes`` side by side (each started as :meth:`start` does)."""
        image = self.image()
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
            for future in [pool.submit(self.boot, node, image) for node in nodes]:
                future.result()

    def boot(self, node: Node, image: str | None = None) -> None:
        """Boot ``node``'s machine, provision it the first time (which starts overlayd), and wait
        until overlayd is ready."""
        machine = self.machine(node)
        binds = [f"{self.lab.pki.directory}:{PKI}"] if self.lab.pki else []
        self.lab.progress(f"{node.name}: booting machine {machine.name}")
        node.pid = machine.start(image or self.image(), str(REPO), binds)
        self.lab._children.add(node.pid)  # noqa: SLF001 - ours, for leftover_processes()
        self.lab.save()
        machine.wait_booted(node.pid)
        if not machine.provisioned:
            self.lab.progress(f"{node.name}: provisioning (vagrant/provision-node.sh: scripts/install, the unit)")
            self.provision(node)
        self.wait_ready(node)

    def provision(self, node: Node) -> None:
        settings = daemon_settings(node, self.lab.lease_ttl, self.lab.etcd_tls)
        res = self.run(node, [PROVISION, self.lab.etcd_endpoints, node.ip, *settings], check=False, timeout=600)
        log = os.path.join(self.lab.node_dir(node), "provision.log")
        with open(log, "w", encoding="utf-8") as f:
            f.write(res.stdout + res.stderr)
        if res.returncode != 0:
            lines = (res.stderr or res.stdout).strip().splitlines()
            raise LabError(f"{node.name}: provisioning failed ({log}): {lines[-1] if lines else res.returncode}")

    def systemctl(self, node: Node, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.run(node, ["systemctl", *args], timeout=timeout)

    def start(self, node: Node, wait: bool = True) -> None:
        """Boot ``node``'s machine if it is not running, else ``systemctl start overlayd`` (which
        returns once overlayd sent READY=1; ``--no-block`` without ``wait``)."""
        if not self.running(node):
            self.boot(node)
            return
        self.systemctl(node, "start", *([] if wait else ["--no-block"]), "overlayd")
        if wait:
            self.wait_ready(node)

    def signal(self, node: Node, sig: signal.Signals) -> None:
        """``sig`` to overlayd's main process (``systemctl kill``): what systemd then does is the unit's."""
        self.systemctl(node, "kill", "--kill-who=main", f"--signal={sig.name}", "overlayd")

    def wait_ready(self, node: Node, timeout: float = 60) -> None:
        """Wait until overlayd's unit is active (READY=1 came) and its status file says ``running``."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.run(node, ["systemctl", "is-active", "overlayd"], check=False).stdout.strip()
            if state == "active":
                try:
                    if self.lab.node_status(node).get("state") == "running":
                        return
                except (OSError, ValueError):
                    pass
            time.sleep(0.1)
        last = self.run(node, ["journalctl", "-u", "overlayd", "-n", "1", "-o", "cat"], check=False).stdout.strip()
        raise LabError(f"overlayd on {node.name} not ready after {timeout:.0f}s (unit {state or '?'}): {last}")

    def reboot(self, node: Node, timeout: float = 120) -> None:
        """``systemctl reboot`` in ``node``'s machine; back once it booted again and overlayd is ready."""
        machine = self.machine(node)
        before = machine.leader(node.pid)
        self.run(node, ["systemctl", "reboot"], check=False)
        deadline = time.monotonic() + timeout
        while machine.leader(node.pid) in (None, before):
            if not _alive(node.pid):
                raise LabError(f"machine {machine.name} did not come back: {machine.console_tail()}")
            if time.monotonic() > deadline:
                raise LabError(f"machine {machine.name} not back {timeout:.0f}s after its reboot")
            time.sleep(0.1)
        machine.wait_booted(node.pid, timeout=max(1.0, deadline - time.monotonic()))
        self.wait_ready(node)

    def cni(self, node: Node, pod: Pod, env: dict) -> tuple[list[str], dict]:
        """The node's own CNI plugin, as a runtime in the machine would call it for ``pod``: the
        command and the network config (the first plugin of the node's conflist)."""
        with open(self.path(node, CNI_CONFLIST), encoding="utf-8") as f:
            conflist = json.load(f)
        conf = {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **conflist["plugins"][0]}
        env = {**env, "CNI_NETNS": f"{HOST_NETNS}/{pod.netns}", "CNI_PATH": CNI_BIN}
        return self.machine(node).argv(node.pid, [f"{CNI_BIN}/{conf['type']}"], env), conf

    def down(self, node: Node) -> None:
        """Power ``node``'s machine off and remove what it left on this host."""
        self.machine(node).stop(node.pid)
        node.pid = None

    def down_all(self, nodes: list[Node]) -> None:
        """:meth:`down` for every node, side by side; then :class:`LabError` naming the first
        failure, or anything still mounted in the lab's directory (which must then stay: it is
        never removed through a mount)."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
            futures = [pool.submit(self.down, node) for node in nodes]
        self.lab.save()
        failed = [future.exception() for future in futures if future.exception() is not None]
        if failed:
            raise LabError(f"powering the machines off: {failed[0]}")
        left = [point for point, _ in _mounts() if point.startswith(self.lab.state_dir + "/")]
        if left:
            raise LabError(f"still mounted after the machines stopped: {', '.join(left)}")
