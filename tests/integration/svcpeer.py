"""Run in a namespace for the services traffic tests (issue 22). Bounded: 2 s socket timeouts.

``serve NAME``: answer ``NAME PEER-IP`` to every line on TCP 8080 (per connection, in a
thread) and to every datagram on UDP 5353; prints ``listening`` once both are bound.
``tcp HOST PORT COUNT`` / ``udp HOST PORT COUNT``: COUNT new connections (sockets), one
question each; prints a JSON list of the answers ("refused", "timeout" for failures) and the
seconds each took. ``hold HOST PORT``: one connection; answers one question per line on stdin.
``flow HOST PORT``: the same for UDP: one socket (one flow), a datagram per line on stdin.
"""

import json
import socket
import sys
import threading
import time


def serve(name: str) -> None:
    tcp = socket.create_server(("0.0.0.0", 8080), backlog=64)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", 5353))

    def answer(conn, peer):
        with conn, conn.makefile("rwb") as f:
            for _ in f:
                f.write(f"{name} {peer[0]}\n".encode())
                f.flush()

    def udp_loop():
        while True:
            _, peer = udp.recvfrom(2048)
            udp.sendto(f"{name} {peer[0]}".encode(), peer)

    threading.Thread(target=udp_loop, daemon=True).start()
    print("listening", flush=True)
    while True:
        conn, peer = tcp.accept()
        threading.Thread(target=answer, args=(conn, peer), daemon=True).start()


def ask_tcp(host: str, port: int) -> str:
    try:
        with socket.create_connection((host, port), timeout=2) as conn, conn.makefile("rwb") as f:
            f.write(b"who\n")
            f.flush()
            return f.readline().decode().strip() or "closed"
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return "timeout" if isinstance(exc, TimeoutError) else f"error {exc.errno}"


def ask_udp(host: str, port: int) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a new source port: a new flow
        s.settimeout(2)
        s.sendto(b"who", (host, port))
        try:
            return s.recv(2048).decode()
        except TimeoutError:
            return "timeout"
        except ConnectionRefusedError:
            return "refused"


def hold(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=2) as conn, conn.makefile("rwb") as f:
        for _ in sys.stdin:
            f.write(b"who\n")
            f.flush()
            print(f.readline().decode().strip() or "closed", flush=True)


def flow(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.connect((host, port))
        for _ in sys.stdin:
            s.send(b"who")
            try:
                answer = s.recv(2048).decode()
            except TimeoutError:
                answer = "timeout"
            except ConnectionRefusedError:
                answer = "refused"
            print(answer, flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "serve":
        serve(sys.argv[2])
    elif mode == "hold":
        hold(sys.argv[2], int(sys.argv[3]))
    elif mode == "flow":
        flow(sys.argv[2], int(sys.argv[3]))
    else:
        ask = ask_tcp if mode == "tcp" else ask_udp
        answers = []
        for _ in range(int(sys.argv[4])):
            started = time.monotonic()
            answers.append([ask(sys.argv[2], int(sys.argv[3])), round(time.monotonic() - started, 3)])
        print(json.dumps(answers))
