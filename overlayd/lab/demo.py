"""The lab's demo service (issue 22): ``scripts/lab up`` shows services working.

Every pod joins the service :data:`SERVICE` through the CNI plugin (``OVERLAYD_SERVICES=demo``
in CNI_ARGS; the plugin's ``endpointsDir`` is its node daemon's spool, see
:meth:`overlayd.lab.topology.Lab.cni_conf`) and runs a tiny HTTP server (:func:`serve`, port
:data:`TARGET_PORT`) that answers every request with its pod's name and the client address
it saw. The service (a ClusterIP from the lab's ServiceNetwork, port 80 -> 8080/tcp, health
checked with an HTTP GET of :data:`HEALTH_PATH` by the node that owns each endpoint) spreads
new connections over them; ``up`` then asks it from a pod on every node (:func:`ask`) and
prints who answered.

Bounded: a server exits after ``--lifetime`` seconds (default a day) or once its lab's
``lab.json`` is gone, and ``scripts/lab down`` stops it by the PID the lab recorded (its
command line names the lab's state directory, as the lab's own check wants).

In a pod: ``python -m overlayd.lab.demo serve NAME LAB_JSON`` or ``ask HOST PORT COUNT`` (a
JSON list of answers: ``"NAME CLIENT-IP"``, or ``refused``, ``timeout``, ``error ERRNO``), or
``rate HOST PORT SECONDS LIMIT``: new connections one after another (``scripts/bench
--services`` measures the connection rate with it).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import json
import os
import socket
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the server runs in pods: it imports nothing of the lab
    from .topology import Lab, Pod

SERVICE = "demo"
PORT = 80
TARGET_PORT = 8080
HEALTH_PATH = "/healthz"
LIFETIME = 24 * 3600  # seconds a server lives at most
ASKS = 12  # connections from each node's pod in up's summary
ASK_TIMEOUT = 2.0  # seconds for one connection (connect and answer)


def response(name: str, peer: str) -> bytes:
    """The server's answer to any request: HTTP/1.0 200 with ``NAME PEER`` as the body. Pure."""
    body = f"{name} {peer}\n".encode()
    return (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % len(body)) + body


async def serve(name: str, lab_file: str, lifetime: float = LIFETIME, host: str = "0.0.0.0",
                port: int = TARGET_PORT) -> None:
    """Answer HTTP requests on ``host:port`` with :func:`response` until ``lifetime`` seconds
    have passed or ``lab_file`` is gone; a connection closed before its request (a TCP health
    check) is just closed."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ASK_TIMEOUT)
            writer.write(response(name, writer.get_extra_info("peername")[0]))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, host, port, reuse_address=True)
    print(f"{name}: listening on {host}:{port}", flush=True)
    deadline = time.monotonic() + lifetime
    async with server:
        while time.monotonic() < deadline and os.path.exists(lab_file):
            await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    print(f"{name}: {'lifetime over' if os.path.exists(lab_file) else 'lab gone'}, exiting", flush=True)


def ask_once(host: str, port: int, timeout: float = ASK_TIMEOUT) -> str:
    """One new connection to ``host:port``, one GET: the answer's body (``NAME PEER``), or
    ``refused``, ``timeout``, ``error ERRNO``."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return f"error {exc.errno}"
    _, _, body = data.partition(b"\r\n\r\n")
    return body.decode(errors="replace").strip() or "closed"


def rate(host: str, port: int, seconds: float, limit: int) -> dict:
    """:func:`ask_once` one after another for ``seconds`` or ``limit`` connections, whichever
    comes first: how many were answered, how many not, and the seconds it took."""
    answered = failed = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds and answered + failed < limit:
        if " " in ask_once(host, port):
            answered += 1
        else:
            failed += 1
    return {"answered": answered, "failed": failed, "seconds": round(time.monotonic() - started, 3)}


def tally(answers: list[str]) -> tuple[int, collections.Counter]:
    """How many ``answers`` came from a server, and how many from each (by pod name). Pure."""
    served = collections.Counter(a.split()[0] for a in answers if " " in a)
    return sum(served.values()), served


def describe(source: str, answers: list[str]) -> str:
    """One summary line: ``from POD: N/M answered, by A x3, B x2`` (failures named). Pure."""
    answered, served = tally(answers)
    line = f"from {source}: {answered}/{len(answers)} answered"
    if served:
        line += ", by " + ", ".join(f"{name} x{count}" for name, count in sorted(served.items()))
    failures = collections.Counter(a for a in answers if " " not in a)
    if failures:
        line += "; " + ", ".join(f"{count} {what}" for what, count in sorted(failures.items()))
    return line


def pod_services(lab: "Lab") -> tuple[str, ...]:
    """What the lab's pods join through CNI: the demo service, in a network with IPv4
    (services are IPv4; an IPv6-only pod cannot join one)."""
    return (SERVICE,) if 4 in lab.versions else ()


def start_servers(lab: "Lab", pods: list["Pod"]) -> None:
    """A server in each of ``pods`` that has none yet (recorded by PID in the lab's state)."""
    lab_file = os.path.join(lab.state_dir, "lab.json")
    for pod in pods:
        if pod.server_pid is None:
            lab.start_pod_server(pod, [sys.executable, "-m", __name__, "serve", pod.name, lab_file])


def ask(lab: "Lab", pod: "Pod", host: str, port: int = PORT, count: int = ASKS) -> list[str]:
    """:func:`ask_once` ``count`` times from inside ``pod``."""
    from .topology import run

    res = run(["ip", "netns", "exec", pod.netns, sys.executable, "-m", __name__, "ask", host, str(port), str(count)],
              timeout=count * (ASK_TIMEOUT + 1) + 10)
    return json.loads(res.stdout)


def _record(lab: "Lab") -> dict | None:
    """The demo service's ``overlayctl service show --json`` record, None if there is none."""
    res = lab.overlayctl("service", "show", SERVICE, "--json", check=False)
    return json.loads(res.stdout)["service"] if res.returncode == 0 else None


def show(lab: "Lab", timeout: float = 30) -> tuple[list[str], bool, str | None]:
    """Start what is missing (servers in the pods, the service) and show it working: once every
    pod's endpoint is ready, :data:`ASKS` connections to the ClusterIP from a pod on each node.
    The summary lines, whether every connection was answered, and the ClusterIP (None: no demo)."""
    if not pod_services(lab):
        return [f"no demo service: services are IPv4 and this network is {lab.ip_family}"], True, None
    pods = lab.pods()
    if not pods:
        return ["no demo service: no pods"], True, None
    start_servers(lab, pods)
    if _record(lab) is None:
        lab.overlayctl("service", "create", SERVICE, "--port", f"{PORT}:{TARGET_PORT}/tcp",
                       "--health-check-path", HEALTH_PATH, "-q")
    deadline = time.monotonic() + timeout
    while True:  # every pod joined through CNI (its node publishes it) and passed its health check
        record = _record(lab) or {"cluster_ip": None, "endpoints": []}
        ready = {e["ip"] for e in record["endpoints"] if e["ready"]}
        if ready >= {p.ip for p in pods} or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    vip = record["cluster_ip"]
    if vip is None:
        return [f"service {SERVICE} is gone (deleted meanwhile?)"], False, None
    lines = [f"service {SERVICE}: ClusterIP {vip}, port {PORT} -> {TARGET_PORT}/tcp, "
             f"{len(ready)}/{len(record['endpoints'])} endpoints ready",
             f"  (each pod joined it through CNI and runs a tiny HTTP server; health check GET {HEALTH_PATH})",
             f"{ASKS} new connections to {vip}:{PORT} from a pod on each node:"]
    clients = [node.pods[0] for node in lab.nodes if node.pods]
    while True:  # a node's table may lag etcd's last change by a few milliseconds: ask again
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(clients)) as pool:
            answers = list(pool.map(lambda pod: ask(lab, pod, vip), clients))
        ok = all(tally(a)[0] == len(a) for a in answers)
        if ok or time.monotonic() > deadline:
            break
    lines += [f"  {describe(pod.name, a)}" for pod, a in zip(clients, answers)]
    return lines, ok, vip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m overlayd.lab.demo", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("serve", help="answer HTTP requests with NAME and the client's address")
    s.add_argument("name")
    s.add_argument("lab_file", help="exit once this file is gone")
    s.add_argument("--lifetime", type=float, default=LIFETIME, help="exit after this many seconds")
    s.add_argument("--host", default="0.0.0.0")
    s.add_argument("--port", type=int, default=TARGET_PORT)
    a = sub.add_parser("ask", help="COUNT new connections to HOST:PORT; a JSON list of the answers")
    a.add_argument("host")
    a.add_argument("port", type=int)
    a.add_argument("count", type=int)
    r = sub.add_parser("rate", help="new connections one after another; a JSON object of counts")
    r.add_argument("host")
    r.add_argument("port", type=int)
    r.add_argument("seconds", type=float)
    r.add_argument("limit", type=int)
    args = parser.parse_args(argv)
    if args.mode == "serve":
        asyncio.run(serve(args.name, args.lab_file, args.lifetime, args.host, args.port))
    elif args.mode == "rate":
        print(json.dumps(rate(args.host, args.port, args.seconds, args.limit)))
    else:
        print(json.dumps([ask_once(args.host, args.port) for _ in range(args.count)]))


if __name__ == "__main__":
    main()
