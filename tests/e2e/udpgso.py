"""Send or receive UDP datagrams for the UDP GSO test: ``udpgso.py send HOST PORT COUNT SIZE SEGMENT``
sends COUNT buffers of SIZE bytes with UDP_SEGMENT = SEGMENT (each leaves the pod as one GSO
superpacket that the kernel cuts into SIZE / SEGMENT datagrams); ``udpgso.py recv PORT`` prints
"listening", then the sizes of the datagrams it gets until 2 s pass without one, space-separated."""

import socket
import sys
import time

UDP_SEGMENT = 103  # linux/udp.h

if sys.argv[1] == "send":
    host, port, count, size, segment = sys.argv[2], *map(int, sys.argv[3:7])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        s.setsockopt(socket.SOL_UDP, UDP_SEGMENT, segment)
        for _ in range(count):
            s.send(bytes(size))
            time.sleep(0.05)
else:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", int(sys.argv[2])))
        s.settimeout(2)
        print("listening", flush=True)
        sizes = []
        try:
            while True:
                sizes.append(len(s.recv(65535)))
        except socket.timeout:
            pass
        print(" ".join(map(str, sizes)), flush=True)
