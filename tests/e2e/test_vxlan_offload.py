"""Transmit checksum offload on kernel VTEPs next to userspace ones (issue 10 item 5).

The kernel backend leaves offload as the kernel sets it, on, on every
underlay (this lab's is a veth). A kernel VTEP then sends inner checksums
partial (checked on the wire) and TCP as GSO superpackets (one VXLAN datagram
past the MTU): the userspace receiver completes the partial checksums (the
kernel's ACKs of a user -> kernel transfer) and delivers the superpackets
(kernel -> user: the Python path cuts them to the tap's MTU, the C engine
writes them to its tap as GSO). An operator's setting stays while the device
lives; a device recreated by drift repair is back on the kernel's default."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, in4_pseudoheader
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import checksum

from overlayd.lab.topology import run

from .tools import TCPCHECK, Capture, tcp_transfer, wait_for

UDPGSO = str(Path(__file__).with_name("udpgso.py"))

pytestmark = [pytest.mark.root, pytest.mark.etcd]

VARIANTS = [{"vxlan_impl": "user", "ip_masq": True}, {"vxlan_impl": "kernel", "ip_masq": True}]


def tx_offload(netns: str, dev: str, *setting: str) -> str:
    """``on``/``off`` for ``dev`` in ``netns`` (after setting it, when ``setting`` is given)."""
    return run(["ip", "netns", "exec", netns, sys.executable, "-m", "overlayd.plumbing.ethtool", dev,
                *setting]).stdout.strip()


def checksum_errors(netns: str) -> int:
    """TCP segments the kernel of ``netns`` refused for a bad checksum, since it was created."""
    out = run(["ip", "netns", "exec", netns, "nstat", "-az", "TcpInCsumErrors"]).stdout
    return int(out.split("TcpInCsumErrors")[1].split()[0])


def partial_tcp_checksums(packets) -> int:
    """How many captured VXLAN frames carry an inner TCP checksum that is only the pseudo-header sum."""
    count = 0
    for p in packets:
        if not p.haslayer(VXLAN) or not p[VXLAN].haslayer(TCP):
            continue
        ip = p[VXLAN][Ether][IP]
        count += ip[TCP].chksum == ~checksum(in4_pseudoheader(6, ip, ip.len - ip.ihl * 4)) & 0xFFFF
    return count


def offload_or_none(netns: str, dev: str) -> str | None:
    """``on``/``off`` for ``dev``, None while it does not exist."""
    res = run(["ip", "netns", "exec", netns, sys.executable, "-m", "overlayd.plumbing.ethtool", dev], check=False)
    return res.stdout.strip() if res.returncode == 0 else None


def test_offload_on_over_veth_partial_checksums_completed_and_an_operators_off_stays(make_lab, tmp_path):
    kernel_variant = {**VARIANTS[1], "extra_args": ["--resync-interval", "1"]}
    lab = make_lab("vxlan", nodes=2, variants=[VARIANTS[0], kernel_variant])
    user, kernel = lab.nodes
    assert tx_offload(kernel.netns, "flannel.1") == "on"  # the kernel's default, on a veth underlay too

    with Capture(user.netns, "eth0", f"udp port 8472 and src host {kernel.ip}", tmp_path / "acks.pcap",
                 count=200) as cap:
        sent, received = tcp_transfer(lab, user.pods[0], kernel.pods[0], tmp_path)
    assert sent == received  # the kernel's ACKs reached the user pod
    assert partial_tcp_checksums(cap.packets) > 0, "no partial checksum on the wire: the case is not exercised"
    assert checksum_errors(user.pods[0].netns) == 0  # none was delivered unfinished, none retried

    assert tx_offload(kernel.netns, "flannel.1", "off") == "off"  # the operator's way out
    time.sleep(3)  # three resync periods
    assert tx_offload(kernel.netns, "flannel.1") == "off"  # drift repair left the operator's setting
    run(["ip", "netns", "exec", kernel.netns, "ip", "link", "del", "flannel.1"])
    assert wait_for(lambda: offload_or_none(kernel.netns, "flannel.1") == "on", timeout=10), \
        "flannel.1 not recreated with offload on"


@pytest.mark.parametrize("datapath", ["python", "c"])
def test_tcp_from_a_kernel_vtep_with_offload_on_reaches_a_userspace_node(make_lab, tmp_path, datapath):
    lab = make_lab("vxlan", nodes=2, variants=[{**VARIANTS[0], "datapath": datapath}, VARIANTS[1]])
    user, kernel = lab.nodes
    assert tx_offload(kernel.netns, "flannel.1") == "on"
    data = os.urandom(4 << 20)
    path = tmp_path / "payload"
    path.write_bytes(data)
    dst = user.pods[0]
    server = subprocess.Popen(["ip", "netns", "exec", dst.netns, "timeout", "30", sys.executable, TCPCHECK,
                               "recv", "5201"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "listening"
        sent = run(["ip", "netns", "exec", kernel.pods[0].netns, "timeout", "20", sys.executable, TCPCHECK,
                    "send", dst.ip, "5201", str(path)], check=False, timeout=30)
        assert sent.returncode == 0, f"exit {sent.returncode}: 4 MB not sent within 20 s"
        out, _ = server.communicate(timeout=15)
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(10)
    assert out.split() == [hashlib.sha256(data).hexdigest(), str(len(data))]
    if datapath == "python":  # the case was exercised: superpackets arrived and were cut
        assert wait_for(lambda: lab.node_status(user)["stats"].get("rx_superpackets", 0) > 0, timeout=10)


@pytest.mark.parametrize("datapath", ["python", "c"])
def test_udp_gso_from_a_kernel_node_pod_reaches_a_userspace_node_as_its_datagrams(make_lab, datapath):
    """A pod sending with UDP_SEGMENT (QUIC stacks do) behind a kernel VTEP: the VXLAN datagram holds
    one inner UDP superpacket, whose segment size only the skb carries. The userspace node's socket
    must let its kernel cut it (a UDP_GRO socket takes it whole, reports that inner size in the
    UDP_GRO cmsg, and splitting the datagram at it turned every piece into garbage)."""
    lab = make_lab("vxlan", nodes=2, variants=[{**VARIANTS[0], "datapath": datapath}, VARIANTS[1]])
    user, kernel = lab.nodes
    receiver = subprocess.Popen(["ip", "netns", "exec", user.pods[0].netns, "timeout", "20", sys.executable,
                                 UDPGSO, "recv", "9999"], stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout.readline().strip() == "listening"
        run(["ip", "netns", "exec", kernel.pods[0].netns, sys.executable, UDPGSO, "send", user.pods[0].ip,
             "9999", "5", "8000", "1000"], timeout=20)
        out, _ = receiver.communicate(timeout=20)
    finally:
        if receiver.poll() is None:
            receiver.kill()
        receiver.wait(10)
    assert out.split() == ["1000"] * 40
