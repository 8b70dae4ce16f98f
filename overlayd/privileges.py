"""What overlayd needs from this host, checked before it writes anything to etcd (issue 21).

Started without CAP_NET_ADMIN, overlayd used to renew the node's lease in etcd
(new TTL) and only then die on "cannot create tun0: Operation not permitted".
So the daemon checks what it can check locally first: CAP_NET_ADMIN in its
effective set (read from /proc/self/status, so a non-root user with the
capability, e.g. systemd's AmbientCapabilities=CAP_NET_ADMIN, passes), that
the subnet file can be written, and, once the network config names a
userspace backend, that /dev/net/tun opens. What is missing is said in one line.
"""

from __future__ import annotations

import os

from .errors import PlumbingError

CAP_NET_ADMIN = 12  # linux/capability.h
NO_ETCD_WRITE = "nothing was written to etcd"


def effective_caps(proc_status: str) -> int:
    """The ``CapEff`` bit mask from the text of ``/proc/<pid>/status``; 0 when absent. Pure."""
    for line in proc_status.splitlines():
        name, _, value = line.partition(":")
        if name == "CapEff":
            return int(value.strip(), 16)
    return 0


def cap_problem(capeff: int, uid: int) -> str | None:
    """What is missing from effective capabilities ``capeff`` (of a process running as ``uid``),
    in words, or None. Pure."""
    if capeff >> CAP_NET_ADMIN & 1:
        return None
    return (f"overlayd needs CAP_NET_ADMIN (it runs as uid {uid} without it): run it as root, or "
            "give it the capability (systemd: AmbientCapabilities=CAP_NET_ADMIN)")


def _writable(flag: str, path: str) -> str | None:
    """Whether ``path`` can be created or replaced: its nearest existing directory must be writable."""
    directory = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(directory) and directory != os.path.dirname(directory):
        directory = os.path.dirname(directory)
    if os.access(directory, os.W_OK | os.X_OK):
        return None
    return f"{flag} {path}: cannot write in {directory}"


def check_start(subnet_file: str) -> None:
    """Before etcd is contacted: CAP_NET_ADMIN, and the subnet file's directory writable.

    Raises :class:`PlumbingError` naming everything that is missing, in one line.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            problem = cap_problem(effective_caps(f.read()), os.geteuid())
    except OSError as exc:
        problem = f"cannot read /proc/self/status to check for CAP_NET_ADMIN: {exc.strerror}"
    problems = [p for p in (problem, _writable("--subnet-file", subnet_file)) if p]
    if problems:
        raise PlumbingError(f"{'; '.join(problems)}; {NO_ETCD_WRITE}")


def check_tun() -> None:
    """Before the lease, for the userspace backends (udp, vxlan --vxlan-impl user): /dev/net/tun opens."""
    try:
        os.close(os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC))
    except FileNotFoundError:
        raise PlumbingError("/dev/net/tun does not exist (load the tun module: 'modprobe tun'; in a "
                            f"container, pass the device in); {NO_ETCD_WRITE}") from None
    except OSError as exc:
        raise PlumbingError(f"cannot open /dev/net/tun: {exc.strerror} (the udp and vxlan user backends "
                            f"need it); {NO_ETCD_WRITE}") from None
