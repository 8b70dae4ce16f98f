"""The lab's demo service (issue 22): what the pods join and how, the server's answers and its
bounded life (on loopback), and the summary lines ``scripts/lab up`` prints."""

import json
import os
import socket
import subprocess
import sys

import pytest

from overlayd.daemon import DaemonOptions
from overlayd.lab import demo
from overlayd.lab.topology import Lab, Node, Pod


def test_pods_join_the_demo_service_in_a_network_with_ipv4():
    assert demo.pod_services(Lab("/nonexistent", "x")) == ("demo",)
    assert demo.pod_services(Lab("/nonexistent", "x", ip_family="dual")) == ("demo",)
    assert demo.pod_services(Lab("/nonexistent", "x", ip_family="ipv6")) == ()


def test_the_cni_config_spools_where_the_nodes_daemon_reads(tmp_path):
    lab = Lab(str(tmp_path), "x")
    node = Node("node1", "x-n1", "198.18.0.11")
    conf = lab.cni_conf(node)
    assert conf["endpointsDir"] == str(tmp_path / "node1" / "endpoints")
    assert conf["endpointsDir"] == DaemonOptions("http://e", "/p", status_file=lab.status_file(node)).endpoints_dir


def test_pods_name_the_labs_services_in_cni_args(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr("overlayd.lab.topology.run", lambda argv, **kw: seen.append(kw["env"]) or
                        subprocess.CompletedProcess(argv, 0, "{}", ""))
    monkeypatch.setattr("overlayd.lab.topology._bin", lambda name: name)
    lab = Lab(str(tmp_path), "x")
    node, pod = Node("node1", "x-n1", "198.18.0.11"), Pod("node1-pod1", "x-n1p1", "node1")
    lab.cni(node, pod, "ADD")
    lab.pod_services = ("demo",)
    lab.cni(node, pod, "ADD")
    assert "CNI_ARGS" not in seen[0] and seen[1]["CNI_ARGS"] == "IgnoreUnknown=1;OVERLAYD_SERVICES=demo"


def test_pod_services_and_server_pids_are_kept_in_lab_json(tmp_path):
    lab = Lab(str(tmp_path), "x")
    lab.pod_services = ("demo",)
    lab.nodes.append(Node("node1", "x-n1", "198.18.0.11", pods=[Pod("node1-pod1", "x-n1p1", "node1", server_pid=42)]))
    lab.save()
    loaded = Lab.load(str(tmp_path))
    assert loaded.pod_services == ("demo",) and loaded.pods()[0].server_pid == 42
    text = (tmp_path / "lab.json").read_text()  # a lab saved before the demo loads without one
    (tmp_path / "lab.json").write_text(text.replace('"pod_services": [\n    "demo"\n  ],', ""))
    assert Lab.load(str(tmp_path)).pod_services == ()


def test_response_is_http_with_the_pod_and_the_client():
    head, _, body = demo.response("node1-pod1", "10.244.2.2").partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK\r\n") and b"Content-Length: 22" in head
    assert body == b"node1-pod1 10.244.2.2\n"


def test_describe_counts_who_answered_and_what_failed():
    answers = ["node1-pod1 10.244.1.2", "node2-pod1 10.244.1.2", "node1-pod1 10.244.1.2", "timeout", "refused"]
    assert demo.tally(answers) == (3, {"node1-pod1": 2, "node2-pod1": 1})
    assert demo.describe("node1-pod1", answers) == (
        "from node1-pod1: 3/5 answered, by node1-pod1 x2, node2-pod1 x1; 1 refused, 1 timeout")
    assert demo.describe("node2-pod1", ["timeout"]) == "from node2-pod1: 0/1 answered; 1 timeout"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """``start(lifetime)``: the demo server on a loopback port, until ``tmp_path/lab.json`` goes;
    (process, port). Killed at the end if still running."""
    procs = []

    def start(lifetime: float = 60):
        lab_file = tmp_path / "lab.json"
        lab_file.write_text("{}")
        port = _free_port()
        proc = subprocess.Popen([sys.executable, "-m", "overlayd.lab.demo", "serve", "pod-a", str(lab_file),
                                 "--host", "127.0.0.1", "--port", str(port), "--lifetime", str(lifetime)],
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == f"pod-a: listening on 127.0.0.1:{port}"
        return proc, port
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_server_answers_health_checks_and_requests_and_leaves_with_its_lab(server, tmp_path):
    proc, port = server()
    with socket.create_connection(("127.0.0.1", port), timeout=2):  # a TCP health check: connect, close
        pass
    out = subprocess.run([sys.executable, "-m", "overlayd.lab.demo", "ask", "127.0.0.1", str(port), "3"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert json.loads(out) == ["pod-a 127.0.0.1"] * 3
    os.unlink(tmp_path / "lab.json")
    assert proc.wait(5) == 0 and proc.stdout.read().strip() == "pod-a: lab gone, exiting"
    assert demo.ask_once("127.0.0.1", port) == "refused"


def test_server_lifetime_is_bounded(server):
    proc, _ = server(lifetime=0.3)
    assert proc.wait(5) == 0 and proc.stdout.read().strip() == "pod-a: lifetime over, exiting"


def test_rate_is_bounded_by_count_and_time(server):
    _, port = server()
    counted = demo.rate("127.0.0.1", port, seconds=30, limit=25)
    assert (counted["answered"], counted["failed"]) == (25, 0) and counted["seconds"] < 30
    timed = demo.rate("127.0.0.1", port, seconds=0.2, limit=10**9)
    assert timed["failed"] == 0 and 0.2 <= timed["seconds"] < 5
    assert demo.rate("127.0.0.1", _free_port(), seconds=30, limit=3) == {
        "answered": 0, "failed": 3, "seconds": pytest.approx(0, abs=5)}
