"""The wireguard backend without root: settings, the dump parser, the key file, peer batches."""

from __future__ import annotations

import ipaddress
import os
import shutil
import stat
import sys
import threading

import pytest

from overlayd.backend import wireguard
from overlayd.backend.base import NodeOptions, Underlay
from overlayd.backend.wireguard import (OVERHEAD, Tunnel, WireguardBackend, WireguardSettings, lease_peers,
                                        parse_settings, select_version, tunnels)
from overlayd.errors import ConfigError, PlumbingError
from overlayd.lease.model import Lease, LeaseAttrs
from overlayd.lease.watcher import Batch
from overlayd.netconf import parse_config
from overlayd.plumbing import wg
from tests.unit.test_backend_threads import churn, collecting

KEY_A = "kVUUlMuDvZ9Zi2qNFRIMjt4cdCzDb2BCctEsTserck4="
KEY_B = "3DxfDesZeuecffSJjwVBPRabup1y/18BGOMJ3P9FSVg="
PSK = "mSwaz4HyIYV8eF8ystfsMlcJLE8uzKjC3aMYNzp5/y8="
needs_wg = pytest.mark.skipif(shutil.which("wg") is None, reason="needs wg (wireguard-tools)")


# -- settings -----------------------------------------------------------------------------------

def test_defaults_are_flannels():
    notes = []
    s = parse_settings({"Type": "wireguard"}, notes)
    assert s == WireguardSettings(51820, 51821, None, None, 0, "separate") and notes == []
    assert OVERHEAD == 80


def test_every_setting_case_insensitive():
    s = parse_settings({"type": "wireguard", "listenport": 5000, "ListenPortV6": 5001, "mtu": 1400, "psk": PSK,
                        "PersistentKeepaliveInterval": 25, "mode": "auto"}, notes := [])
    assert (s.listen_port, s.listen_port_v6, s.mtu, s.psk, s.keepalive, s.mode) == (5000, 5001, 1400, PSK, 25, "auto")
    assert notes == ["Backend.ListenPortV6: no effect with Mode auto (one device, on ListenPort)"]
    assert parse_settings({"Type": "wireguard", "ListenPortV6": 5001}, notes := []).listen_port_v6 == 5001
    assert notes == []  # separate: the IPv6 device's port
    assert PSK not in repr(s)  # a secret stays out of logs


@pytest.mark.parametrize("raw", [{"ListenPort": 0}, {"MTU": 0}, {"PSK": ""}, {"Mode": ""},
                                 {"PersistentKeepaliveInterval": 0}])
def test_go_zero_values_mean_the_default(raw):
    assert parse_settings({"Type": "wireguard", **raw}, []) == WireguardSettings()


@pytest.mark.parametrize("raw, message", [
    ({"ListenPort": 70000}, "Backend.ListenPort: must be between 1 and 65535, got 70000"),
    ({"ListenPort": "51820"}, "Backend.ListenPort: must be an integer"),
    ({"MTU": 600}, "Backend.MTU: must be between 656 and 65535, got 600"),
    ({"PersistentKeepaliveInterval": "25s"}, "Backend.PersistentKeepaliveInterval: must be an integer"),
    ({"PersistentKeepaliveInterval": 2.5}, "Backend.PersistentKeepaliveInterval: must be an integer"),
    ({"PersistentKeepaliveInterval": -1}, "Backend.PersistentKeepaliveInterval: must be between 0 and 65535"),
    ({"PSK": "c2VjcmV0"}, "Backend.PSK: not a WireGuard key"),
    ({"PSK": 5}, "Backend.PSK: must be a string"),
    ({"Mode": "both"}, "Backend.Mode: unknown mode \"both\""),
    ({"Mode": 1}, "Backend.Mode: must be a string"),
    ({"VNI": 1}, "Backend.VNI: not a setting of the wireguard backend"),
    ({"MTU": 1400, "mtu": 1300}, "Backend.MTU: given twice"),
])
def test_bad_settings_are_one_line_naming_the_field(raw, message):
    with pytest.raises(ConfigError) as err:
        parse_settings({"Type": "wireguard", **raw}, [])
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_bad_psk_is_not_echoed():
    with pytest.raises(ConfigError) as err:
        parse_settings({"Type": "wireguard", "PSK": PSK[:-2]}, [])
    assert PSK[:-2] not in str(err.value)


# -- the dump -----------------------------------------------------------------------------------

DUMP = (f"PRIVATE\t{KEY_A}\t51820\toff\n"
        f"{KEY_B}\t{PSK}\t198.18.0.2:51820\t10.244.2.0/24,10.244.5.0/24\t1700000000\t1234\t5678\t25\n"
        f"{PSK}\t(none)\t(none)\t(none)\t0\t0\t0\toff\n")


def test_dump_is_parsed_per_peer():
    dump = wg.parse_dump(DUMP)
    assert dump.public_key == KEY_A and dump.listen_port == 51820
    b = dump.peers[KEY_B]
    assert (b.has_psk, b.endpoint, b.allowed_ips, b.latest_handshake, b.rx_bytes, b.tx_bytes, b.keepalive) == \
        (True, "198.18.0.2:51820", ("10.244.2.0/24", "10.244.5.0/24"), 1700000000, 1234, 5678, 25)
    other = dump.peers[PSK]
    assert (other.has_psk, other.endpoint, other.allowed_ips, other.latest_handshake, other.keepalive) == \
        (False, None, (), 0, 0)


@pytest.mark.parametrize("text", ["", "a\tb\tc\n", DUMP + "x\ty\n", DUMP.replace("1234", "lots")])
def test_a_malformed_dump_is_a_plumbing_error(text):
    with pytest.raises(PlumbingError):
        wg.parse_dump(text)


def test_one_wg_set_for_a_batch():
    args = wg.peer_args([wg.PeerConfig(KEY_B, ("10.244.2.0/24",), "198.18.0.2:51820", 25)], [KEY_A], "/proc/self/fd/7")
    assert args == ["peer", KEY_A, "remove",
                    "peer", KEY_B, "endpoint", "198.18.0.2:51820", "persistent-keepalive", "25",
                    "allowed-ips", "10.244.2.0/24", "preshared-key", "/proc/self/fd/7"]
    assert wg.peer_args([wg.PeerConfig(KEY_B, ("10.244.2.0/24",), "198.18.0.2:51820")], [], None) == [
        "peer", KEY_B, "endpoint", "198.18.0.2:51820", "persistent-keepalive", "off",
        "allowed-ips", "10.244.2.0/24", "preshared-key", "/dev/null"]


# -- the key file -------------------------------------------------------------------------------

@needs_wg
async def test_key_is_made_once_mode_0600_and_kept(tmp_path):
    path = str(tmp_path / "state" / "wireguard.key")
    first = await wg.load_or_create_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = open(path).read()
    again = await wg.load_or_create_key(path)
    assert again == first and open(path).read() == text and wg.decode_key(first.public)


@needs_wg
async def test_a_key_readable_by_others_is_made_0600(tmp_path):
    path = str(tmp_path / "wireguard.key")
    key = await wg.load_or_create_key(path)
    os.chmod(path, 0o644)
    assert await wg.load_or_create_key(path) == key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize("content", ["", "not a key\n", KEY_A[:-4] + "\n", "x" * 5000])
async def test_a_malformed_key_file_is_one_line_and_kept(tmp_path, content):
    path = tmp_path / "wireguard.key"
    path.write_text(content)
    with pytest.raises(PlumbingError) as err:
        await wg.load_or_create_key(str(path))
    assert "is not a WireGuard private key" in str(err.value) and "\n" not in str(err.value)
    assert path.read_text() == content


# -- peers --------------------------------------------------------------------------------------

def lease(subnet: str, ip: str, key=KEY_B, port=51820, btype="wireguard") -> Lease:
    data = {"PublicKey": key, "Port": port} if key is not None else {}
    return Lease(ipaddress.IPv4Network(subnet), LeaseAttrs(ipaddress.IPv4Address(ip), btype, data))


@pytest.mark.parametrize("bad", [lease("10.244.2.0/24", "198.18.0.2", btype="vxlan"),
                                 lease("10.244.2.0/24", "198.18.0.2", key=None),
                                 lease("10.244.2.0/24", "198.18.0.2", key="short"),
                                 lease("10.244.2.0/24", "198.18.0.2", port="51820"),
                                 lease("10.244.2.0/24", "198.18.0.2", port=70000)])
def test_unusable_peers(bad):
    assert lease_peers(bad, [Tunnel("flannel-wg", 51820, frozenset({4}))], "separate") is None


@pytest.fixture
def backend(monkeypatch):
    calls, devices = [], []

    async def set_peers(dev, add=(), remove=(), psk=None):
        add, remove = list(add), list(remove)
        if add or remove:
            calls.append(({p.public_key: (p.allowed_ips, p.endpoint, p.keepalive) for p in add}, remove, psk))
            devices.append(dev)

    monkeypatch.setattr(wg, "set_peers", set_peers)
    config = parse_config({"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}})
    b = WireguardBackend(config, Underlay("eth0", ipaddress.IPv4Address("198.18.0.1"), 1500), NodeOptions(),
                         settings=WireguardSettings(keepalive=25, psk=PSK))
    b.calls, b.devices = calls, devices
    return b


async def test_peers_come_change_key_and_go_in_one_call_per_batch(backend):
    await backend.apply(Batch(added=[lease("10.244.2.0/24", "198.18.0.2"),
                                     lease("10.244.3.0/24", "198.18.0.3", key=KEY_A, port=0)]))
    assert backend.calls == [({KEY_B: (("10.244.2.0/24",), "198.18.0.2:51820", 25),
                               KEY_A: (("10.244.3.0/24",), "198.18.0.3:51820", 25)}, [], PSK)]
    # node 2 lost its key file: its new key replaces the old peer, in the same wg set
    await backend.apply(Batch(added=[lease("10.244.2.0/24", "198.18.0.2", key=PSK)]))
    assert backend.calls[-1] == ({PSK: (("10.244.2.0/24",), "198.18.0.2:51820", 25)}, [KEY_B], PSK)
    await backend.apply(Batch(removed=[lease("10.244.3.0/24", "198.18.0.3", key=KEY_A)]))
    assert backend.calls[-1] == ({}, [KEY_A], PSK)
    assert backend.peer_subnets() == ["10.244.2.0/24"] and backend.stats() == {"peers": 1, "skipped_peers": 0}


async def test_two_subnets_under_one_key_are_one_peer(backend):
    await backend.apply(Batch(added=[lease("10.244.2.0/24", "198.18.0.2"), lease("10.244.7.0/24", "198.18.0.2")]))
    assert backend.calls == [({KEY_B: (("10.244.2.0/24", "10.244.7.0/24"), "198.18.0.2:51820", 25)}, [], PSK)]
    await backend.apply(Batch(removed=[lease("10.244.2.0/24", "198.18.0.2")]))  # the old lease expires
    assert backend.calls[-1] == ({KEY_B: (("10.244.7.0/24",), "198.18.0.2:51820", 25)}, [], PSK)


async def test_a_peer_turned_unusable_is_removed_and_counted(backend):
    await backend.apply(Batch(added=[lease("10.244.2.0/24", "198.18.0.2")]))
    await backend.apply(Batch(added=[lease("10.244.2.0/24", "198.18.0.2", btype="vxlan")]))
    assert backend.calls[-1] == ({}, [KEY_B], PSK)
    assert backend.stats() == {"peers": 0, "skipped_peers": 1}


async def test_an_unchanged_peer_is_not_written_again(backend):
    await backend.apply(Batch(added=[lease("10.244.2.0/24", "198.18.0.2")]))
    await backend.apply(Batch(added=[lease("10.244.2.0/24", "198.18.0.2")]))
    assert len(backend.calls) == 1


def test_mtu_and_lease_data(backend):
    assert backend.mtu == 1500 - 80
    backend.settings = WireguardSettings(mtu=1400)
    assert backend.mtu == 1320
    with pytest.raises(PlumbingError):
        backend.backend_data()  # before preflight read the key
    backend.key = wg.KeyPair("/x", KEY_A)
    assert backend.backend_data() == {"PublicKey": KEY_A, "Port": 51820}


async def test_mode_ipv6_without_an_ipv6_address_is_refused_before_the_key(backend, tmp_path):
    backend.settings = WireguardSettings(mode="ipv6")
    backend.key_path = str(tmp_path / "k")
    with pytest.raises(ConfigError, match="Backend.Mode"):
        await backend.preflight()
    assert not os.path.exists(backend.key_path)


def test_peer_stats(backend):
    net = ipaddress.IPv4Network("10.244.2.0/24")
    backend.peers = {net: {"flannel-wg": wireguard._Peer(KEY_B, (net,), "198.18.0.2:51820")}}
    backend.peer_counters = {"flannel-wg": wg.parse_dump(DUMP).peers}
    assert backend.peer_stats(now=1700000010) == [{
        "subnet": "10.244.2.0/24", "device": "flannel-wg", "public_key": KEY_B, "endpoint": "198.18.0.2:51820",
        "subnets": ["10.244.2.0/24"], "latest_handshake": 1700000000, "handshake_age": 10, "stalled": False,
        "rx_bytes": 1234, "tx_bytes": 5678}]


# -- dual stack (flannel's Mode) ------------------------------------------------------------------

V4, V6 = ipaddress.IPv4Network("10.244.2.0/24"), ipaddress.IPv6Network("fd00:10:244:2::/64")
BOTH, ONLY4, ONLY6 = frozenset({4, 6}), frozenset({4}), frozenset({6})
SEPARATE = [Tunnel("flannel-wg", 51820, ONLY4), Tunnel("flannel-wg-v6", 51821, ONLY6)]
SINGLE = [Tunnel("flannel-wg", 51820, BOTH)]


@pytest.mark.parametrize("mode, pools, addressed, expected", [
    ("separate", BOTH, BOTH, SEPARATE),
    ("separate", BOTH, ONLY4, SEPARATE[:1]),  # no IPv6 underlay address: no IPv6 device (as VXLAN's)
    ("separate", ONLY6, ONLY6, SEPARATE[1:]),
    ("auto", BOTH, ONLY4, SINGLE),  # IPv6 pods over IPv4 endpoints need no IPv6 underlay address
    ("ipv4", ONLY4, ONLY4, [Tunnel("flannel-wg", 51820, ONLY4)]),
    ("ipv6", ONLY6, ONLY6, [Tunnel("flannel-wg", 51820, ONLY6)]),
])
def test_devices_per_mode_are_flannels(mode, pools, addressed, expected):
    assert tunnels(WireguardSettings(mode=mode), pools, addressed) == expected


A4, A6 = ipaddress.IPv4Address, ipaddress.IPv6Address


@pytest.mark.parametrize("peer4, peer6, own4, own6, version", [
    ("198.18.0.2", None, "198.18.0.1", "2001:db8::1", 4),  # the peer has no IPv6
    (None, "2001:db8::2", "198.18.0.1", "2001:db8::1", 6),  # an IPv6-only peer
    ("198.18.0.2", "2001:db8::2", "198.18.0.1", "2001:db8::1", 4),  # not RFC 1918 (flannel's IsPrivate)
    ("10.0.0.2", "2001:db8::2", "10.0.0.1", "2001:db8::1", 6),  # private IPv4, global IPv6 at both ends
    ("10.0.0.2", "fd00::2", "10.0.0.1", "2001:db8::1", 4),  # the peer's IPv6 is ULA
    ("10.0.0.2", "2001:db8::2", "10.0.0.1", "fd00::1", 4),  # ours is ULA
    ("10.0.0.2", "2001:db8::2", "10.0.0.1", None, 4),  # we have no IPv6
])
def test_auto_selects_as_flannel(peer4, peer6, own4, own6, version):
    assert select_version(peer4 and A4(peer4), peer6 and A6(peer6), own4 and A4(own4), own6 and A6(own6)) == version


def dual(key=KEY_B, port=51820, port6=51821, ip="198.18.0.2", ip6="2001:db8::2", data6=None) -> Lease:
    data6 = data6 if data6 is not None else {"PublicKey": key, "Port": port6}
    return Lease(V4, LeaseAttrs(ip and A4(ip), "wireguard", {"PublicKey": key, "Port": port},
                                public_ip6=ip6 and A6(ip6), backend_v6_data=data6), subnet6=V6)


def only6(port6=51821) -> Lease:
    return Lease(V6, LeaseAttrs(None, "wireguard", None, public_ip6=A6("2001:db8::3"),
                                backend_v6_data={"PublicKey": KEY_A, "Port": port6}), subnet6=V6)


@pytest.mark.parametrize("lease_, tunnels_, mode, expected", [
    (dual(), SEPARATE, "separate", {"flannel-wg": (KEY_B, (V4,), "198.18.0.2:51820"),
                                    "flannel-wg-v6": (KEY_B, (V6,), "[2001:db8::2]:51821")}),
    (dual(port6=0), SEPARATE, "separate", {"flannel-wg": (KEY_B, (V4,), "198.18.0.2:51820"),
                                           "flannel-wg-v6": (KEY_B, (V6,), "[2001:db8::2]:51821")}),  # 0: ours
    (dual(), SEPARATE[:1], "separate", {"flannel-wg": (KEY_B, (V4,), "198.18.0.2:51820")}),
    (dual(), SINGLE, "ipv4", {"flannel-wg": (KEY_B, (V4, V6), "198.18.0.2:51820")}),
    # a single device listens on the port of BackendData (a flannel node publishes ListenPortV6 in V6Data)
    (dual(), SINGLE, "ipv6", {"flannel-wg": (KEY_B, (V4, V6), "[2001:db8::2]:51820")}),
    (dual(), SINGLE, "auto", {"flannel-wg": (KEY_B, (V4, V6), "198.18.0.2:51820")}),  # 198.18/15: not RFC 1918
    (dual(ip="10.0.0.2"), SINGLE, "auto", {"flannel-wg": (KEY_B, (V4, V6), "[2001:db8::2]:51820")}),
    # IPv6 pods of a node without an IPv6 address cross over its IPv4 (flannel: subnets by EnableIPv6)
    (dual(ip6=None), SINGLE, "ipv6", {"flannel-wg": (KEY_B, (V4, V6), "198.18.0.2:51820")}),
    (dual(ip6=None), SEPARATE, "separate", {"flannel-wg": (KEY_B, (V4,), "198.18.0.2:51820")}),
    (only6(port6=51820), SINGLE, "ipv4", {"flannel-wg": (KEY_A, (V6,), "[2001:db8::3]:51820")}),  # no IPv4
    (only6(), SEPARATE[:1], "separate", None),  # no family in common
    (dual(data6={"PublicKey": "short"}), SEPARATE, "separate", None),  # malformed V6 data: the whole lease
])
def test_a_lease_makes_flannels_peers(lease_, tunnels_, mode, expected):
    peers = lease_peers(lease_, tunnels_, mode, A4("10.0.0.1"), A6("2001:db8::1"))
    assert (None if peers is None else {dev: (p.key, p.subnets, p.endpoint) for dev, p in peers.items()}) == expected


def dual_backend(backend, mode="separate", mtu=None) -> WireguardBackend:
    config = parse_config({"Network": "10.244.0.0/16", "EnableIPv6": True, "IPv6Network": "fd00:10:244::/48",
                           "Backend": {"Type": "host-gw"}})
    underlay = Underlay("eth0", A4("198.18.0.1"), 1500, public_ip6=A6("2001:db8::1"))
    b = WireguardBackend(config, underlay, NodeOptions(), settings=WireguardSettings(keepalive=25, psk=PSK,
                                                                                     mode=mode, mtu=mtu))
    b.calls, b.devices, b.key = backend.calls, backend.devices, wg.KeyPair("/x", KEY_A)
    return b


async def test_separate_peers_on_both_devices_one_call_each_and_a_new_key_replaces_both(backend):
    b = dual_backend(backend)
    assert [t.name for t in b.tunnels] == ["flannel-wg", "flannel-wg-v6"]
    attrs = b.lease_attrs()
    assert (attrs.backend_data, attrs.public_ip6, attrs.backend_v6_data) == (
        {"PublicKey": KEY_A, "Port": 51820}, A6("2001:db8::1"), {"PublicKey": KEY_A, "Port": 51821})
    await b.apply(Batch(added=[dual()]))
    assert b.devices == ["flannel-wg", "flannel-wg-v6"] and b.calls == [
        ({KEY_B: (("10.244.2.0/24",), "198.18.0.2:51820", 25)}, [], PSK),
        ({KEY_B: (("fd00:10:244:2::/64",), "[2001:db8::2]:51821", 25)}, [], PSK)]
    assert b.peer_subnets() == ["10.244.2.0/24", "fd00:10:244:2::/64"]
    await b.apply(Batch(added=[dual(key=PSK)]))
    assert b.calls[2:] == [({PSK: (("10.244.2.0/24",), "198.18.0.2:51820", 25)}, [KEY_B], PSK),
                           ({PSK: (("fd00:10:244:2::/64",), "[2001:db8::2]:51821", 25)}, [KEY_B], PSK)]
    await b.apply(Batch(removed=[dual(key=PSK)]))
    assert b.calls[4:] == [({}, [PSK], PSK), ({}, [PSK], PSK)] and b.peer_subnets() == []


async def test_a_single_device_carries_both_families_and_publishes_its_own_port(backend):
    b = dual_backend(backend, mode="auto")
    assert b.tunnels == SINGLE and b.lease_attrs().backend_v6_data == {"PublicKey": KEY_A, "Port": 51820}
    await b.apply(Batch(added=[dual(ip="10.0.0.2")]))
    assert b.devices == ["flannel-wg"] and b.calls == [
        ({KEY_B: (("10.244.2.0/24", "fd00:10:244:2::/64"), "[2001:db8::2]:51820", 25)}, [], PSK)]


async def test_ipv6_pods_need_1280_inside(backend, tmp_path):
    b = dual_backend(backend, mtu=1359)
    b.key, b.key_path = None, str(tmp_path / "k")
    with pytest.raises(ConfigError, match="Backend.MTU: IPv6 pods need 1360 or more"):
        await b.preflight()
    assert not os.path.exists(b.key_path)


def state(tx: int, handshake: int = 0) -> wg.PeerState:
    return wg.PeerState(KEY_B, True, "198.18.0.2:51820", ("10.244.2.0/24",), handshake, 0, tx, 0)


def test_a_peer_sent_to_without_a_session_is_stalled_after_the_grace_and_recovers():
    watch, t = wireguard.HandshakeWatch(), 1000.0
    assert watch.update("wg", {KEY_B: state(0)}, t) == ([], [])
    assert watch.update("wg", {KEY_B: state(148)}, t + 5) == ([], [])  # a handshake initiation: sending
    assert watch.update("wg", {KEY_B: state(148)}, t + 10) == ([], [])  # jitter: nothing new this read
    assert watch.update("wg", {KEY_B: state(296)}, t + 20) == ([KEY_B], [])  # 15 s sending, no session
    assert watch.update("wg", {KEY_B: state(444)}, t + 25) == ([], [])  # said once
    assert ("wg", KEY_B) in watch.stalled
    assert watch.update("wg", {KEY_B: state(600, handshake=int(t) + 26)}, t + 30) == ([], [KEY_B])
    assert watch.stalled == set()


def test_an_idle_peer_or_an_old_session_is_not_stalled():
    watch, t = wireguard.HandshakeWatch(), 1000.0
    for i in range(10):  # a session long expired, nothing sent: idle, not stalled
        assert watch.update("wg", {KEY_B: state(5000, handshake=1)}, t + 10 * i) == ([], [])
    watch.update("wg", {KEY_B: state(5000)}, t)
    watch.update("wg", {KEY_B: state(6000)}, t + 5)
    assert watch.update("wg", {KEY_B: state(7000)}, t + 20) == ([KEY_B], [])
    assert watch.update("wg", {}, t + 25) == ([], [KEY_B])  # the peer was removed


def test_peer_lists_survive_peer_changes_on_the_control_loop(backend):
    """The health server's thread reads peer_subnets/peer_stats/stats while apply changes peers
    (tests/unit/test_backend_threads.py's churn, against this backend's table)."""
    net = ipaddress.IPv4Network("10.244.2.0/24")
    value = {"flannel-wg": wireguard._Peer(KEY_B, (net,), "198.18.0.2:51820")}
    backend.peers = {ipaddress.IPv4Network((0x0AF40000 + 256 * i, 24)): value for i in range(1000)}
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    stop = threading.Event()
    worker = threading.Thread(target=churn, args=(backend.peers, value, stop))
    worker.start()
    try:
        for _ in range(100):  # bounded: 100 scrapes
            backend.peer_subnets()
            backend.peer_stats()
            backend.stats()
    finally:
        stop.set()
        worker.join(5)
        sys.setswitchinterval(old)


def test_peer_lists_survive_a_collection_that_changes_peers(backend):
    """A collection during a read can hand the GIL to the control loop (test_backend_threads)."""
    net = ipaddress.IPv4Network("10.244.2.0/24")
    value = {"flannel-wg": wireguard._Peer(KEY_B, (net,), "198.18.0.2:51820")}
    backend.peers = {ipaddress.IPv4Network((0x0AF40000 + 256 * i, 24)): value for i in range(1000)}
    with collecting(backend.peers, value):
        backend.peer_subnets()
        assert len(backend.peer_stats()) >= 1000
        backend.stats()
    assert len(backend.peers) > 1000  # the collector ran and changed the table


async def test_only_the_first_listing_is_greeted_and_a_failed_greeting_is_a_warning(backend, monkeypatch, caplog):
    backend.settings = WireguardSettings(psk=PSK)  # no keepalive: greetings start the sessions
    greeted = []

    async def greet(dev, keys, keepalive=0):
        greeted.append((dev, list(keys)))
        raise PlumbingError("wg: Unable to modify interface: Protocol not supported")

    monkeypatch.setattr(wg, "greet", greet)
    await backend.apply(Batch(added=[lease("10.244.3.0/24", "198.18.0.3", key=KEY_A)]))  # an event: not greeted
    await backend.apply(Batch(added=[lease("10.244.2.0/24", "198.18.0.2")], listed=True))  # the first listing
    # a re-listing after an etcd outage: every node re-lists at once, greeting both ways would cross
    await backend.apply(Batch(added=[lease("10.244.4.0/24", "198.18.0.4", key=PSK)], listed=True))
    assert greeted == [(backend.device, [KEY_B])]
    assert "cannot start sessions with the peers at join" in caplog.text
    assert backend.peer_subnets() == ["10.244.2.0/24", "10.244.3.0/24", "10.244.4.0/24"]
