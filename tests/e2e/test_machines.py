"""The shipped systemd unit under a real systemd: the machines lab (issue 19, section 1).

Two labs of booted Debian 12 machines (``Lab(machines=True)``, as ``scripts/lab
up --machines``), brought up side by side once for the module: a udp lab and a
vxlan lab whose node1 runs the userspace VXLAN and node2 the kernel's. Every
node was provisioned by vagrant/provision-node.sh and runs
systemd/overlayd.service, driven here with systemctl inside the machine. Each
scenario leaves its node as it found it (overlayd active, pods reaching each
other), so the scenarios do not depend on their order.

The scenarios run in one test, :func:`test_the_unit_under_systemd`, which
reports each failing one: scripts/test's ``--dist worksteal`` moves tests
between workers freely, and a module of several tests split over workers (as
seen here) builds one pair of labs per worker. Its ``run_first`` mark starts
it first, so its minute overlaps the rest of the suite.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import subprocess
import time
import traceback
import uuid

import pytest

from overlayd.lab.machines import cgroup_hierarchies
from overlayd.lab.topology import Lab, Node, network_config, run

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.run_first]

# What a sandbox that refuses the daemon something leaves in its journal.
REFUSED = re.compile(r"EPERM|EROFS|EACCES|Operation not permitted|Permission denied|Read-only file system",
                     re.IGNORECASE)
PRIORITIES = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}  # syslog's, by level word
SLACK = 5.0  # seconds beyond systemd's own timers for the daemon to start and report ready
SCENARIOS = []  # what test_the_unit_under_systemd runs, in this order


def scenario(check):
    """A check of the unit taking the labs: one of :data:`SCENARIOS`."""
    SCENARIOS.append(check)
    return check


@pytest.fixture(scope="module")
def machines(tmp_path_factory):
    """``{"udp": Lab, "vxlan": Lab}``, each two machines with a pod, up side by side; down afterwards."""
    directory = tmp_path_factory.mktemp("machines")
    plans = {"udp": None, "vxlan": [{"vxlan_impl": "user"}, {"vxlan_impl": "kernel"}]}
    labs = {}
    for backend in plans:
        prefix = "m" + uuid.uuid4().hex[:6]
        labs[backend] = Lab(str(directory / prefix), prefix, backend=backend, machines=True)
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(labs)) as pool:
            futures = [pool.submit(lab.up, nodes=2, pods_per_node=1, variants=plans[backend])
                       for backend, lab in labs.items()]
            for future in futures:
                future.result()
        yield labs
    finally:
        errors, leftovers = [], []
        for lab in labs.values():
            try:
                if os.path.exists(os.path.join(lab.state_dir, "lab.json")):
                    lab.down()
            except Exception as exc:  # noqa: BLE001 - the other lab still goes down
                errors.append(f"{lab.prefix}: {exc}")
            leftovers += lab.leftover_processes()
            leftovers += [f"mount {point}" for point in mount_points() if point.startswith(lab.state_dir)]
            leftovers += [f"cgroup {c}" for c in cgroups() if os.path.basename(c).startswith(lab.prefix + "-")]
            leftovers += [f"netns {ns}" for ns in os.listdir("/run/netns") if ns.startswith(lab.prefix + "-")]
        for pid in (p for p in leftovers if isinstance(p, int)):  # only PIDs the labs started
            os.kill(pid, signal.SIGKILL)
        assert not errors and not leftovers, f"lab.down(): {errors}; left behind: {leftovers}"


def mount_points() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [line.split()[4] for line in f]


def cgroups() -> list[str]:
    """The machines' cgroups this host has (``<hierarchy>/overlayd-lab/<machine>``)."""
    return [os.path.join(h, "overlayd-lab", m) for h in cgroup_hierarchies()
            if os.path.isdir(os.path.join(h, "overlayd-lab")) for m in os.listdir(os.path.join(h, "overlayd-lab"))]


def inside(lab: Lab, node: Node, *argv: str, check: bool = True, timeout: float = 60) -> str:
    """Run ``argv`` inside ``node``'s machine; its stdout."""
    return run(lab.node_argv(node, list(argv)), check=check, timeout=timeout).stdout


def unit(lab: Lab, node: Node, *properties: str) -> dict[str, str]:
    """``systemctl show overlayd`` properties of ``node``'s unit."""
    out = inside(lab, node, "systemctl", "show", "overlayd", *(f"--property={p}" for p in properties))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


TIMESPAN = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}


def seconds(span: str) -> float:
    """A time span as ``systemctl show`` prints it (``30s``, ``1min 30s``, ``100ms``), in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|min|h)", span)
    assert parts, f"not a time span: {span!r}"
    return sum(float(number) * TIMESPAN[unit] for number, unit in parts)


def journal(lab: Lab, node: Node, *args: str) -> list[dict]:
    """overlayd's journal entries on ``node`` (``journalctl -u overlayd -o json ARGS``)."""
    out = inside(lab, node, "journalctl", "-u", "overlayd", "-o", "json", "--no-pager", *args)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def messages(entries: list[dict]) -> list[str]:
    return [entry["MESSAGE"] if isinstance(entry["MESSAGE"], str) else bytes(entry["MESSAGE"]).decode()
            for entry in entries]


def cursor(lab: Lab, node: Node) -> str:
    """Where overlayd's journal on ``node`` ends now (``--after-cursor`` reads what comes next)."""
    entries = journal(lab, node, "-n", "1")
    return entries[-1]["__CURSOR"]


def wait_for(condition, timeout: float, what: str, step: float = 0.2):
    """Poll ``condition()`` until it returns something true; that value. Fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        time.sleep(step)


def subnet(lab: Lab, node: Node) -> str:
    with open(lab.subnet_file(node), encoding="utf-8") as f:
        return next(line.split("=", 1)[1].strip() for line in f if line.startswith("FLANNEL_SUBNET="))


def assert_traffic(lab: Lab) -> None:
    """Every pod of ``lab`` reaches every other across the overlay."""
    result = lab.reachability(tries=15)
    assert all(result.values()), f"unreachable pod pairs: {[pair for pair, ok in result.items() if not ok]}"


def restarted(lab: Lab, node: Node, main_pid: str):
    """The unit's properties once a new main process runs and is ready (active), else None."""
    now = unit(lab, node, "MainPID", "ActiveState", "NRestarts")
    return now if now["ActiveState"] == "active" and now["MainPID"] not in ("0", main_pid) else None


@scenario
def start_returns_only_after_ready(machines):
    """``systemctl start overlayd`` blocks while the daemon waits for etcd (Type=notify, no start
    timeout) and returns once READY=1 came: subnet.env, the status file and STATUS= are there."""
    lab = machines["udp"]
    node = lab.nodes[0]
    inside(lab, node, "systemctl", "stop", "overlayd")
    mark = cursor(lab, node)
    lab.pause_etcd()
    try:
        start = subprocess.Popen(lab.node_argv(node, ["systemctl", "start", "overlayd"]),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: any(" starting: " in m for m in messages(journal(lab, node, f"--after-cursor={mark}"))),
                 30, "overlayd started by systemctl")
        time.sleep(2)  # etcd answers nothing meanwhile: the start must still be pending
        assert start.poll() is None, f"systemctl start returned before READY: {start.communicate()}"
        assert unit(lab, node, "ActiveState")["ActiveState"] == "activating"
    finally:
        lab.resume_etcd()
    out, err = start.communicate(timeout=60)
    assert start.returncode == 0, err
    assert unit(lab, node, "ActiveState")["ActiveState"] == "active"
    assert lab.node_status(node)["state"] == "running"
    leased = subnet(lab, node)
    status = inside(lab, node, "systemctl", "status", "--no-pager", "overlayd", check=False)
    network = leased.rsplit(".", 1)[0] + ".0/24"
    assert f'Status: "leased {network}' in status, status
    assert_traffic(lab)


@scenario
def the_sandbox_allows_what_the_daemon_does(machines):
    """Under ProtectSystem=strict and the unit's other settings the daemon writes subnet.env and
    its status file, sets its sysctls, its nft table and its device (tun, tap, the kernel's VXLAN
    device), and refuses nothing: its journal has no EPERM, EROFS or EACCES. The node's CNI
    plugin kept its state; pods talk."""
    for lab in machines.values():
        for node in lab.nodes:
            lines = messages(journal(lab, node, "-b"))
            refused = [line for line in lines if REFUSED.search(line)]
            assert not refused, (node.netns, refused)
            status = lab.node_status(node)
            assert status["state"] == "running"
            assert subnet(lab, node).rsplit(".", 1)[0] + ".0/24" == status["subnet"]
            assert inside(lab, node, "cat", "/proc/sys/net/ipv4/ip_forward").strip() == "1"
            assert "table ip overlayd" in inside(lab, node, "nft", "list", "tables")
            inside(lab, node, "ip", "link", "show", status["device"])
            for pod in node.pods:  # the plugin's delegate config, and host-local's reservation of the address
                inside(lab, node, "test", "-s", f"/var/lib/cni/overlayd/{pod.container_id}-eth0.json")
                reserved = inside(lab, node, "cat", f"/var/lib/cni/overlayd/ipam/overlayd/{pod.ip}")
                assert reserved.startswith(pod.container_id)
        assert_traffic(lab)


def switch_backend(lab: Lab, backend: str) -> None:
    """What an operator does to change the network's backend: the config in etcd, then ``systemctl
    restart overlayd`` on every node; returns once every node runs ``backend`` and is active."""
    lab.overlayctl("config", "set", "-", input=json.dumps(network_config(backend, lab.network, lab.vni, lab.port)))
    for node in lab.nodes:
        inside(lab, node, "systemctl", "restart", "overlayd")
    for node in lab.nodes:
        wait_for(lambda: unit(lab, node, "ActiveState")["ActiveState"] == "active"
                 and lab.node_status(node).get("backend") == backend, 30, f"{node.name} running {backend}")


@scenario
def every_backend_runs_under_the_sandbox(machines):
    """host-gw and wireguard under the unit too (udp and vxlan are the labs'): wireguard-go with its
    tun, its UAPI socket in the unit's RuntimeDirectory and its key in the StateDirectory. The
    backend is switched as an operator would; no refusal in the journal, pods talk, and nothing of
    the previous backend carries pods (no host-gw route left under wireguard). Back to udp after."""
    lab = machines["udp"]
    try:
        for backend in ("host-gw", "wireguard"):
            marks = {node.name: cursor(lab, node) for node in lab.nodes}
            switch_backend(lab, backend)
            assert_traffic(lab)
            for node in lab.nodes:
                lines = messages(journal(lab, node, f"--after-cursor={marks[node.name]}"))
                refused = [line for line in lines if REFUSED.search(line)]
                assert not refused, (backend, node.netns, refused)
                routes = inside(lab, node, "ip", "-4", "route", "show")
                peers = [subnet(lab, other).rsplit(".", 1)[0] + ".0/24" for other in lab.nodes if other is not node]
                if backend == "wireguard":  # no peer route through any device: only flannel-wg's Network route
                    assert not [line for line in routes.splitlines() if line.split()[0] in peers], routes
        key = inside(lab, lab.nodes[0], "stat", "-c", "%a %U", "/var/lib/overlayd/wireguard/private.key").split()
        assert key == ["600", "root"], key
    finally:
        switch_backend(lab, "udp")
    assert_traffic(lab)


@scenario
def a_wedged_daemon_is_killed_by_the_watchdog_and_restarted(machines):
    """SIGSTOP: the WATCHDOG=1 pings stop, systemd kills the daemon (SIGABRT) after WatchdogSec
    and starts it again after RestartSec, on the same subnet; traffic comes back."""
    lab = machines["udp"]
    node = lab.nodes[1]
    before = unit(lab, node, "MainPID", "NRestarts", "WatchdogUSec", "RestartUSec")
    limit = seconds(before["WatchdogUSec"]) + seconds(before["RestartUSec"])
    assert limit > 0, before
    leased, mark = subnet(lab, node), cursor(lab, node)
    lab.pause_node(node)
    started = time.monotonic()
    after = wait_for(lambda: restarted(lab, node, before["MainPID"]), limit + 3 * SLACK, "restart", step=0.5)
    took = time.monotonic() - started
    assert took <= limit + SLACK, f"restarted {took:.1f}s after SIGSTOP (WatchdogSec + RestartSec = {limit:.0f}s)"
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    lines = messages(journal(lab, node, f"--after-cursor={mark}"))
    assert any("Watchdog timeout" in line for line in lines), lines
    assert any("Failed with result 'watchdog'" in line for line in lines), lines
    assert subnet(lab, node) == leased
    assert_traffic(lab)


@scenario
def a_crashed_daemon_is_restarted(machines):
    """SIGKILL (a crash): Restart=on-failure starts it again after RestartSec, on the same subnet."""
    lab = machines["vxlan"]
    node = lab.nodes[0]
    before = unit(lab, node, "MainPID", "NRestarts", "RestartUSec")
    leased = subnet(lab, node)
    lab.kill_node(node)
    started = time.monotonic()
    limit = seconds(before["RestartUSec"])
    after = wait_for(lambda: restarted(lab, node, before["MainPID"]), limit + 3 * SLACK, "restart")
    assert time.monotonic() - started <= limit + SLACK
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    assert subnet(lab, node) == leased
    assert_traffic(lab)


@scenario
def systemctl_stop_leaves_the_node_as_documented(machines):
    """docs/operator-guide.md ("Under systemd", "While overlayd is down"): a clean stop, not
    restarted; the lease, subnet.env, cni0, the nft table and the guard route stay, the tun goes,
    the status file says stopped; a start gets the same subnet back."""
    lab = machines["udp"]
    node = lab.nodes[0]
    leased = subnet(lab, node)
    lab.stop_node(node)
    try:
        state = unit(lab, node, "ActiveState", "Result", "ExecMainStatus")
        assert state == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
        assert lab.node_status(node)["state"] == "stopped"
        assert subnet(lab, node) == leased  # RuntimeDirectoryPreserve=yes keeps /run/flannel
        network = leased.rsplit(".", 1)[0] + ".0/24"
        assert network in lab.overlayctl("subnets").stdout  # the lease stays in etcd
        links = inside(lab, node, "ip", "-br", "link")
        assert "cni0" in links and "tun0" not in links, links
        assert "table ip overlayd" in inside(lab, node, "nft", "list", "tables")
        routes = inside(lab, node, "ip", "route")
        assert f"unreachable {lab.network}" in routes, routes
    finally:
        lab.start_node(node)
    assert subnet(lab, node) == leased
    assert_traffic(lab)


@scenario
def the_unit_runs_a_venv_whose_python_lives_under_root(machines):
    """scripts/install makes the venv with the ``python3`` on PATH: on this CI machine pyenv's, under
    /root. The unit must start overlayd from such a venv too (ProtectHome=yes hid it: 203/EXEC)."""
    lab = machines["udp"]
    node = lab.nodes[1]
    venv_python = "/opt/overlayd/venv/bin/python3"
    system_python = inside(lab, node, "readlink", venv_python).strip()
    inside(lab, node, "sh", "-c", f"mkdir -p /root/py/bin && cp {system_python} /root/py/bin/python3 && "
                                  f"ln -sfn /root/py/bin/python3 {venv_python}")
    try:
        inside(lab, node, "systemctl", "restart", "overlayd", check=False)
        state = unit(lab, node, "ActiveState", "ExecMainStatus", "ExecMainCode")
        assert state["ActiveState"] == "active", state
        assert inside(lab, node, "readlink", "-f", f"/proc/{unit(lab, node, 'MainPID')['MainPID']}/exe").strip() \
            == "/root/py/bin/python3"
    finally:
        inside(lab, node, "sh", "-c", f"ln -sfn {system_python} {venv_python} && rm -r /root/py")
        lab.restart_node(node)
    assert_traffic(lab)


@scenario
def a_reboot_brings_the_node_back_on_its_subnet(machines):
    """``systemctl reboot`` in the machine: its systemd starts the enabled unit at boot, the
    daemon takes its lease back (same subnet), the pods reach each other again."""
    lab = machines["vxlan"]
    node = lab.nodes[1]
    leased = subnet(lab, node)
    boot = inside(lab, node, "cat", "/proc/sys/kernel/random/boot_id")
    lab.reboot_node(node)
    assert inside(lab, node, "cat", "/proc/sys/kernel/random/boot_id") != boot
    assert unit(lab, node, "ActiveState", "UnitFileState") == {"ActiveState": "active", "UnitFileState": "enabled"}
    assert subnet(lab, node) == leased
    assert_traffic(lab)


@scenario
def logs_land_in_the_journal_with_their_priorities(machines):
    """Each line's syslog priority is the daemon's level (the ``<N>`` prefix under JOURNAL_STREAM):
    an etcd outage's warning is priority 4 and in ``journalctl -p warning``, its end (info) is not."""
    lab = machines["vxlan"]
    node = lab.nodes[0]
    mark = cursor(lab, node)
    lab.stop_etcd()
    try:
        wait_for(lambda: [m for m in messages(journal(lab, node, f"--after-cursor={mark}")) if m.startswith("WARNING")],
                 60, "a warning about etcd", step=0.5)
    finally:
        lab.start_etcd()
    wait_for(lambda: [m for m in messages(journal(lab, node, f"--after-cursor={mark}")) if "etcd back" in m],
             60, "etcd back", step=0.5)
    entries = [e for e in journal(lab, node, f"--after-cursor={mark}") if e.get("SYSLOG_IDENTIFIER") == "overlayd"]
    levels = {}
    for entry, line in zip(entries, messages(entries)):
        word = line.split(" ", 1)[0]
        assert word in PRIORITIES, f"a line without its level: {line!r}"
        assert int(entry["PRIORITY"]) == PRIORITIES[word], (entry["PRIORITY"], line)
        levels.setdefault(word, []).append(line)
    assert {"WARNING", "INFO"} <= set(levels), levels
    warnings = messages(journal(lab, node, "-b", "-p", "warning"))  # as an operator asks for them
    assert set(levels["WARNING"]) <= set(warnings)
    assert not [line for line in warnings if line.startswith("INFO")]
    assert_traffic(lab)


def test_the_unit_under_systemd(machines):
    """Every scenario above against the shipped unit (see the module docstring), each reported."""
    failures = []
    for check in SCENARIOS:
        started = time.monotonic()
        try:
            check(machines)
            result = "ok"
        except Exception:  # noqa: BLE001 - reported below, the next scenario still runs
            failures.append(f"{check.__name__}:\n{traceback.format_exc()}")
            result = "FAILED"
        print(f"{check.__name__}: {result} in {time.monotonic() - started:.1f}s")
    assert not failures, f"{len(failures)} of {len(SCENARIOS)} scenarios failed:\n\n" + "\n\n".join(failures)
