"""Run inside a pod namespace: ``recv PORT [4|6]`` prints the sha256 and length of one TCP
stream (on IPv4 or IPv6, default 4); ``send HOST PORT FILE`` sends a file. Bounded: 60 s socket timeouts."""

import hashlib
import socket
import sys


def recv(port: int, version: int = 4) -> None:
    family = socket.AF_INET6 if version == 6 else socket.AF_INET
    with socket.create_server(("::" if version == 6 else "0.0.0.0", port), family=family) as srv:
        srv.settimeout(60)
        print("listening", flush=True)
        conn, _ = srv.accept()
        conn.settimeout(60)
        digest, total = hashlib.sha256(), 0
        with conn:
            while chunk := conn.recv(1 << 16):
                digest.update(chunk)
                total += len(chunk)
    print(digest.hexdigest(), total, flush=True)


def send(host: str, port: int, path: str) -> None:
    with open(path, "rb") as f, socket.create_connection((host, port), timeout=60) as conn:
        conn.sendfile(f)
        conn.shutdown(socket.SHUT_WR)


if __name__ == "__main__":
    if sys.argv[1] == "recv":
        recv(int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 4)
    else:
        send(sys.argv[2], int(sys.argv[3]), sys.argv[4])
