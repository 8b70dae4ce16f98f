"""The data-plane device deleted under a running daemon (docs: design.md, operator-guide.md).

A userspace data plane whose tun or tap is deleted cannot go on: its fd no
longer reaches any device, and drift repair cannot give it one back (it does
not recreate the device, and a recreated device would not be the one the fd
holds: a silent black hole). So the daemon must end with exit status 1 and
one log line naming the cause, and systemd's restart (here: the lab's)
brings up a node that forwards again. Drift repair runs every second here, so
a repair that recreated the device under a data plane still holding the old
fd would happen inside the window in which the daemon must exit.
"""

from __future__ import annotations

import os
import time

import pytest

from overlayd.lab.topology import Lab, Node, run

from .tools import wait_for

pytestmark = [pytest.mark.root, pytest.mark.etcd]

EXIT_WITHIN = 10.0  # seconds from the deletion to the daemon's exit


def wait_exit_status(pid: int, timeout: float) -> int | None:
    """Reap ``pid`` (a child of this process, as the lab's daemons are) and return its exit status,
    or None if it still runs after ``timeout`` seconds. No subprocess may be started meanwhile:
    :mod:`subprocess` reaps forgotten children whenever it starts one, and the status would be lost."""
    deadline = time.monotonic() + timeout
    while True:
        reaped, status = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def errors_logged(lab: Lab, node: Node, offset: int) -> list[str]:
    """The ERROR lines ``node``'s log gained past byte ``offset``."""
    with open(lab.log_file(node), "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    return [line for line in text.splitlines() if " ERROR " in line]


@pytest.mark.parametrize("backend,device", [("udp", "tun0"), ("vxlan", "overlay0")])
@pytest.mark.parametrize("datapath,event_loop", [("c", "asyncio"), ("python", "asyncio"), ("python", "uvloop")])
def test_deleted_device_ends_the_daemon_and_a_restart_forwards_again(make_lab, backend, device, datapath,
                                                                      event_loop):
    lab = make_lab(backend, nodes=2, variants=[{"datapath": datapath, "event_loop": event_loop,
                                                "extra_args": ["--resync-interval", "1"]}] * 2)
    node, other = lab.nodes
    a, b = node.pods[0], other.pods[0]
    assert lab.ping(a, b.ip), "no traffic before the device was deleted"
    pid, offset = node.pid, os.path.getsize(lab.log_file(node))

    run(["ip", "netns", "exec", node.netns, "ip", "link", "del", device])
    status = wait_exit_status(pid, EXIT_WITHIN)
    if status is None:
        back = run(["ip", "netns", "exec", node.netns, "ip", "link", "show", device], check=False)
        pytest.fail(f"overlayd still runs {EXIT_WITHIN:g}s after {device} was deleted "
                    f"({device} {'recreated' if back.returncode == 0 else 'still gone'}; "
                    f"pod ping {'works' if lab.ping(a, b.ip, tries=2) else 'fails'}); "
                    f"errors: {errors_logged(lab, node, offset)}")
    assert status == 1, status
    errors = errors_logged(lab, node, offset)
    assert len(errors) == 1 and "data plane" in errors[0] and "gone" in errors[0], errors
    final = lab.node_status(node)
    assert final["state"] == "failed" and final["error"] in errors[0], final

    lab.restart_node(node)
    assert wait_for(lambda: lab.ping(a, b.ip, tries=2), timeout=20), "no traffic after the restart"
    assert lab.ping(b, a.ip)
