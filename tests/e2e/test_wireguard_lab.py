"""The wireguard backend in the netns lab (issue 18 §3), with wireguard-go (this machine's kernel has
no WireGuard module): every pod reaches every other; the underlay carries nothing but WireGuard
messages on the listen port, no pod address in the clear; datagrams forged with a member's outer
source (the attack that puts packets into a pod on the udp backend, tests/e2e/test_wire.py) deliver
nothing, from a rogue host or from the member itself; a large TCP transfer crosses the MTU (1500 -
80); a restarted node keeps its key; a node restarted without its key file makes a new key, which
every peer has within seconds, none keeping the old one; with overlayd or its wireguard-go SIGKILLed,
no pod packet leaves in the clear (the guard route; without it the same ping leaks, on a default route
to a lab host) and traffic returns when the daemon is back."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct

import pytest
from scapy.layers.inet import ICMP, IP, UDP

from overlayd.lab.topology import PREFIX, network_config, run

from .crafted import send_udp
from .tools import Capture, tcp_transfer, wait_for

pytestmark = [pytest.mark.root, pytest.mark.etcd,
              pytest.mark.skipif(not (shutil.which("wireguard-go") and shutil.which("wg")),
                                 reason="needs wireguard-go and wireguard-tools (scripts/install)")]

PORT = 51820  # flannel's ListenPort, the lab's default for wireguard
DEVICE = "flannel-wg"
FORGED_ID = 0x4242
# WireGuard's message types and their lengths (transport data: at least a header and a tag)
SIZES = {1: 148, 2: 92, 3: 64}


def keys(lab) -> dict[str, str]:
    """Node IP -> the public key its lease publishes."""
    leases = json.loads(lab.overlayctl("subnets", "--json").stdout)["leases"]
    return {lease["public_ip"]: lease["public_key"] for lease in leases}


def device_peers(lab, node) -> set[str]:
    """The public keys of the peers on ``node``'s WireGuard device, as ``wg`` reads them (in the
    daemon's mount namespace, where its wireguard-go's socket is)."""
    return set(run(lab.node_argv(node, ["wg", "show", DEVICE, "peers"])).stdout.split())


def sessions(lab, node) -> set[str]:
    """The public keys of the peers ``node``'s device has completed a handshake with."""
    lines = run(lab.node_argv(node, ["wg", "show", DEVICE, "latest-handshakes"])).stdout.split("\n")
    return {key for key, _, when in (line.partition("\t") for line in lines if line) if when.strip() != "0"}


def is_wireguard(payload: bytes) -> bool:
    """A WireGuard message by its framing: type 1-4, three zero bytes, the length of its type."""
    if len(payload) < 32 or payload[0] not in (1, 2, 3, 4) or payload[1:4] != b"\0\0\0":
        return False
    return len(payload) == SIZES[payload[0]] if payload[0] in SIZES else (len(payload) - 16) % 16 == 0


def test_wireguard_lab_encrypts_and_authenticates(make_lab, tmp_path):
    # --ip-masq: pod addresses stay the inner source inside the Network, as on the udp test
    lab = make_lab("wireguard", nodes=3, variants=[{"ip_masq": True}] * 3)
    node1, node2, node3 = lab.nodes
    pod1, pod2 = node1.pods[0], node2.pods[0]
    # each pair has a session before any pod sends (the later node started it): first packets
    # sent both ways at once no longer cross handshakes and wait 5 s or more (a CI failure)
    assert wait_for(lambda: all(len(sessions(lab, node)) == 2 for node in lab.nodes), 10), \
        {node.name: sessions(lab, node) for node in lab.nodes}
    matrix = lab.reachability()
    assert all(matrix.values()), {k: v for k, v in matrix.items() if not v}
    assert lab.node_status(node1)["mtu"] == 1500 - 80  # flannel's overhead rule
    published = keys(lab)
    assert len(set(published.values())) == 3
    assert device_peers(lab, node1) == {published[node2.ip], published[node3.ip]}

    # the underlay: only WireGuard on the listen port (etcd's TCP aside), no pod address in the clear
    pod_addresses = [socket.inet_aton(p.ip) for p in lab.pods()]
    with Capture(node1.netns, "eth0", f"ip and not tcp port {lab.etcd_port}", tmp_path / "wg.pcap", count=40) as cap:
        assert lab.ping(pod1, pod2.ip) and lab.ping(pod2, node3.pods[0].ip)
    assert cap.packets
    for p in cap.packets:
        assert p.haslayer(UDP) and p[UDP].sport == PORT and p[UDP].dport == PORT, p.summary()
        payload = bytes(p[UDP].payload)
        assert is_wireguard(payload), p.summary()
        assert not any(address in bytes(p) for address in pod_addresses), p.summary()
    assert any(bytes(p[UDP].payload)[0] == 4 for p in cap.packets)  # transport data, not only handshakes

    # forged datagrams with node1's outer source and port: the bare inner packet (what the udp
    # backend takes), and WireGuard framing around it (transport data for a made-up session, a
    # handshake initiation of garbage). From a rogue host, then from node1 itself: nothing arrives.
    inner = bytes(IP(src=pod1.ip, dst=pod2.ip) / ICMP(id=FORGED_ID, seq=1) / b"forged")
    data = struct.pack("<IIQ", 4, 0x1234, 0) + inner + os.urandom(16 - len(inner) % 16) + os.urandom(16)
    initiation = struct.pack("<II", 1, 0x1234) + os.urandom(140)
    rogue = lab.add_host("rogue")
    with Capture(pod2.netns, "eth0", f"icmp[4:2] == {FORGED_ID:#x}", tmp_path / "forged.pcap") as cap:
        for netns in (rogue.netns, node1.netns):
            send_udp(netns, node1.ip, node2.ip, [(PORT, inner), (PORT, data), (PORT, initiation)],
                     dport=PORT, count=10)
    assert cap.packets == []
    assert lab.ping(pod1, pod2.ip)  # the real session is untouched

    # a large TCP transfer: segments at the pods' MTU (1420) cross encrypted, whole and in order
    sent, received = tcp_transfer(lab, pod1, pod2, tmp_path)
    assert sent == received


def test_wireguard_keys_survive_restarts_and_rotate(make_lab):
    lab = make_lab("wireguard", nodes=3)
    node1, node2, node3 = lab.nodes
    key_file = os.path.join(lab.daemon_state_dir(node1), "wireguard", "private.key")
    assert oct(os.stat(key_file).st_mode & 0o777) == "0o600"
    before = keys(lab)[node1.ip]

    lab.restart_node(node1)  # kept: the same key, and peers need no change
    assert keys(lab)[node1.ip] == before
    # the restarted node (a new wireguard-go, no session) starts its sessions itself: node2 does not
    # send on its stale one for up to 5 s (REKEY_TIMEOUT) before pods on both sides talk again
    assert wait_for(lambda: len(sessions(lab, node1)) == 2, 5), sessions(lab, node1)
    assert lab.ping(node2.pods[0], node1.pods[0].ip, tries=2) and lab.ping(node1.pods[0], node2.pods[0].ip, tries=2)

    lab.stop_node(node1)  # rotation: no key file, so a new key, which every peer learns from the lease
    os.unlink(key_file)
    lab.start_node(node1)
    after = keys(lab)[node1.ip]
    assert after != before and os.path.exists(key_file)
    for peer in (node2, node3):
        assert wait_for(lambda: after in device_peers(lab, peer), timeout=10), peer.name
        assert before not in device_peers(lab, peer), peer.name
    assert lab.ping(node2.pods[0], node1.pods[0].ip) and lab.ping(node1.pods[0], node3.pods[0].ip)


def children(pid: int) -> list[int]:
    """The PIDs of ``pid``'s children (its wireguard-go, for a node's overlayd)."""
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
        return [int(each) for each in f.read().split()]


def test_nothing_leaks_in_the_clear_while_the_daemon_or_wireguard_go_is_killed(make_lab, tmp_path):
    lab = make_lab("wireguard", nodes=2, variants=[{"ip_masq": True}] * 2)
    node1, node2 = lab.nodes
    pod1, pod2 = node1.pods[0], node2.pods[0]
    # a default route out of node1, to a host on the lab's underlay: what a pod packet would follow
    # in the clear if nothing stopped it
    gateway = lab.add_host("gateway")
    run(["ip", "-n", node1.netns, "route", "add", "default", "via", gateway.ip])
    assert lab.ping(pod1, pod2.ip)
    pod_addresses = [socket.inet_aton(p.ip) for p in lab.pods()]

    def leaked(name: str) -> bool:
        """Whether a pod address crosses node1's underlay while pod1 pings pod2 (which fails)."""
        with Capture(node1.netns, "eth0", f"ip and not tcp port {lab.etcd_port}", tmp_path / f"{name}.pcap",
                     count=20) as cap:
            assert not lab.ping(pod1, pod2.ip, tries=2)
        return any(address in bytes(p) for p in cap.packets for address in pod_addresses)

    def kill_overlayd():
        lab.kill_node(node1)

    def kill_wireguard_go():
        (wg_go,) = children(node1.pid)  # started by the lab's overlayd: killed by its PID
        os.kill(wg_go, 9)
        assert wait_for(lambda: lab.node_status(node1).get("state") == "failed", timeout=10)
        assert "wireguard-go for flannel-wg" in lab.node_status(node1)["error"]
        lab.stop_node(node1)  # (it has exited: just forget its PID)

    guard = ["ip", "-n", node1.netns, "route", "show", "10.244.0.0/16"]
    for kill in (kill_overlayd, kill_wireguard_go):
        kill()
        # wireguard-go's device went with it (pdeathsig), and with the device its route: the guard
        # route answers pods at once, and the underlay sees nothing of theirs
        assert run(guard).stdout.split()[:2] == ["unreachable", "10.244.0.0/16"]
        assert not leaked(kill.__name__)
        if kill is kill_overlayd:  # the control: without the guard, the same ping leaks
            run(["ip", "-n", node1.netns, "route", "del", "unreachable", "10.244.0.0/16", "metric", "4294967295"])
            assert leaked("no_guard")
        lab.start_node(node1)
        assert lab.ping(pod1, pod2.ip), kill.__name__


def test_switching_to_wireguard_leaves_no_peer_route_in_the_clear(make_lab):
    """An operator switches the network's backend to wireguard and restarts the nodes. Kernel
    VXLAN's peer routes (on flannel.1, a device that outlives the daemon) and host-gw's (on the
    underlay) are more specific than WireGuard's Network route: left behind, they would carry pods
    unencrypted. After each switch no route to a peer's subnet is left, and pods talk."""
    lab = make_lab("vxlan", nodes=2, variants=[{"vxlan_impl": "kernel"}] * 2)

    def switch(backend: str) -> None:
        lab.etcdctl("put", f"{PREFIX}/config", json.dumps(network_config(backend, lab.network, lab.vni, lab.port)))
        for node in lab.nodes:
            lab.restart_node(node)

    for before in ("vxlan", "host-gw"):
        if before != "vxlan":
            switch(before)
        assert all(lab.reachability(tries=5).values()), before
        switch("wireguard")
        assert all(lab.reachability(tries=5).values()), before
        for node in lab.nodes:
            peers = [lab.node_status(other)["subnet"] for other in lab.nodes if other is not node]
            routes = run(["ip", "-n", node.netns, "-4", "route", "show", "table", "main"]).stdout
            assert not [line for line in routes.splitlines() if line.split()[0] in peers], (before, routes)
            assert run(["ip", "-n", node.netns, "link", "show", "flannel.1"], check=False).returncode != 0
