"""Transmit checksum offload on kernel VTEPs next to userspace ones (issue 10 item 5).

On this veth/bridge underlay the kernel backend leaves offload off (the
underlay does not finish checksums). Forced on, a kernel VTEP sends inner
checksums partial (checked on the wire) and TCP as GSO superpackets: the
userspace receiver completes the partial checksums (the kernel's ACKs of a
user -> kernel transfer), and cannot deliver superpackets yet (kernel ->
user), the reason offload stays off here."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest
from scapy.layers.inet import IP, TCP, in4_pseudoheader
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import checksum

from overlayd.lab.topology import run

from .tools import TCPCHECK, Capture, tcp_transfer

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


def test_offload_off_on_veth_and_partial_checksums_from_a_kernel_vtep_are_completed(make_lab, tmp_path):
    lab = make_lab("vxlan", nodes=2, variants=VARIANTS)
    user, kernel = lab.nodes
    assert tx_offload(kernel.netns, "flannel.1") == "off"  # a veth underlay does not finish checksums
    assert tx_offload(kernel.netns, "flannel.1", "on") == "on"

    with Capture(user.netns, "eth0", f"udp port 8472 and src host {kernel.ip}", tmp_path / "acks.pcap",
                 count=200) as cap:
        sent, received = tcp_transfer(lab, user.pods[0], kernel.pods[0], tmp_path)
    assert sent == received  # the kernel's ACKs reached the user pod
    assert partial_tcp_checksums(cap.packets) > 0, "no partial checksum on the wire: the case is not exercised"
    assert checksum_errors(user.pods[0].netns) == 0  # none was delivered unfinished, none retried
    assert tx_offload(kernel.netns, "flannel.1") == "on"  # drift repair left the operator's setting


@pytest.mark.parametrize("datapath", [
    pytest.param("python", marks=pytest.mark.xfail(strict=True, reason=(
        "the userspace VXLAN receive path cannot deliver a kernel VTEP's GSO superpacket yet (cut it to the "
        "MTU, or write it to a vnet_hdr tap as GSO)"))),
    pytest.param("c", marks=pytest.mark.xfail(strict=False, reason=(
        "on the C engine the 4 MB transfer often arrives intact, but not reliably (stalled past 20 s in 2 of 6 "
        "runs here; why it passes at all, and why not always, is not investigated yet)")))])
def test_tcp_from_a_kernel_vtep_with_offload_on_reaches_a_userspace_node(make_lab, tmp_path, datapath):
    lab = make_lab("vxlan", nodes=2, variants=[{**VARIANTS[0], "datapath": datapath}, VARIANTS[1]])
    user, kernel = lab.nodes
    tx_offload(kernel.netns, "flannel.1", "on")
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
