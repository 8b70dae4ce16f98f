"""The registry of backends (issue 18 §2): a backend is one module declaring its type, settings,
their validation, overhead and class; netconf and create_backend consult the registry."""

from __future__ import annotations

import ipaddress

import pytest

from overlayd.backend import backend_class, create_backend, registry
from overlayd.backend.base import NodeOptions, Underlay
from overlayd.errors import ConfigError
from overlayd.netconf import parse_config

NET = "10.244.0.0/16"
UNDERLAY = Underlay("eth0", ipaddress.IPv4Address("198.18.0.11"), 1500)


@pytest.fixture
def with_toy(monkeypatch):
    """tests/unit/toy_backend.py registered, in the one place a backend is registered."""
    monkeypatch.setattr(registry, "MODULES", (*registry.MODULES, "tests.unit.toy_backend"))


def test_each_backend_module_declares_itself():
    assert registry.names()[:3] == ("udp", "vxlan", "host-gw")
    overheads = {name: spec.overhead for name, spec in registry.specs().items()}
    assert {k: overheads[k] for k in ("udp", "vxlan", "host-gw")} == {"udp": 28, "vxlan": 50, "host-gw": 0}
    for name, spec in registry.specs().items():
        assert spec.name == name and "Type" in spec.keys
        for impl in ("user", "kernel"):
            assert spec.implementation(NodeOptions(vxlan_impl=impl)).type_name == name
    assert all(name not in registry.flannel_only() for name in registry.names())


LINKS = ["lo", "eth0", "cni0", "flannel.1", "flannel-v6.1", "flannel.4096", "flannel-wg", "flannel-wg-v6",
         "tun0", "overlay0", "flannel.x", "flannel.1.5", "flannel-wg0", "veth1234abcd"]


@pytest.mark.parametrize("current, expected", [
    ("udp", [("flannel.1", "vxlan"), ("flannel-v6.1", "vxlan"), ("flannel.4096", "vxlan"),
             ("flannel-wg", "wireguard"), ("flannel-wg-v6", "wireguard")]),
    ("host-gw", [("flannel.1", "vxlan"), ("flannel-v6.1", "vxlan"), ("flannel.4096", "vxlan"),
                 ("flannel-wg", "wireguard"), ("flannel-wg-v6", "wireguard")]),
    ("vxlan", [("flannel-wg", "wireguard"), ("flannel-wg-v6", "wireguard")]),  # its own devices are its own
    ("wireguard", [("flannel.1", "vxlan"), ("flannel-v6.1", "vxlan"), ("flannel.4096", "vxlan")]),
])
def test_devices_other_backends_left_are_named_with_their_backend(current, expected):
    """Whole names only: flannel.x, flannel.1.5 (a VLAN on flannel.1?), flannel-wg0 are not ours."""
    assert registry.leftovers(LINKS, current) == expected


def test_vxlan_keeps_its_two_implementations():
    config = parse_config({"Network": NET, "Backend": {"Type": "vxlan"}})
    assert backend_class(config, NodeOptions(vxlan_impl="kernel")).__name__ == "KernelVxlanBackend"
    assert backend_class(config, NodeOptions(vxlan_impl="user")).__name__ == "UserVxlanBackend"


def test_a_module_registered_in_one_place_is_accepted_by_netconf_and_created(with_toy):
    config = parse_config({"Network": NET, "Backend": {"type": "TOY", "depth": 5, "MTU": 1400}})
    assert config.backend.type == "toy" and config.backend.settings == {"Depth": 5}
    assert config.notes == ("Backend.Depth: toys have no depth",)
    assert config.backend.overlay_mtu(9000) == 1400 - 12
    assert config.backend.to_json() == {"Type": "toy", "MTU": 1400, "Depth": 5}
    assert parse_config(config.to_json()) == config
    backend = create_backend(config, UNDERLAY, NodeOptions())
    assert type(backend).__name__ == "ToyBackend" and backend.mtu == 1400 - 12
    assert backend.lease_attrs().backend_type == "toy"
    with pytest.raises(ConfigError, match="Backend.Port: not a setting of the toy backend"):
        parse_config({"Network": NET, "Backend": {"Type": "toy", "Port": 1}})
    with pytest.raises(ConfigError, match="Backend.Depth: must be between 1 and 9"):
        parse_config({"Network": NET, "Backend": {"Type": "toy", "Depth": 10}})
    with pytest.raises(ConfigError, match=r"Backend.MTU: must be between 588"):
        parse_config({"Network": NET, "Backend": {"Type": "toy", "MTU": 580}})
    with pytest.raises(ConfigError, match=r"unknown backend \"gre\" \(expected one of: udp, vxlan, host-gw, .*toy\)"):
        parse_config({"Network": NET, "Backend": {"Type": "gre"}})
    # the others' settings are still theirs alone
    with pytest.raises(ConfigError, match="Backend.Depth: not a setting of the udp backend"):
        parse_config({"Network": NET, "Backend": {"Type": "udp", "Depth": 1}})


def test_a_module_that_takes_a_registered_name_is_a_bug(monkeypatch):
    monkeypatch.setattr(registry, "MODULES", (*registry.MODULES, "overlayd.backend.udp"))
    with pytest.raises(RuntimeError, match="'udp' is taken"):
        registry.names()


def test_a_backend_flannel_has_becomes_accepted_when_a_module_implements_it(with_toy, monkeypatch):
    monkeypatch.setattr(registry, "FLANNEL_BACKENDS", (*registry.FLANNEL_BACKENDS, "toy"))
    assert "toy" not in registry.flannel_only()
    assert parse_config({"Network": NET, "Backend": {"Type": "toy"}}).backend.type == "toy"


def test_wireguard_is_accepted_with_flannels_settings_and_created_with_the_state_dir(tmp_path):
    psk = "mSwaz4HyIYV8eF8ystfsMlcJLE8uzKjC3aMYNzp5/y8="
    raw = {"Network": NET, "Backend": {"Type": "wireguard", "ListenPort": 51000, "PSK": psk,
                                       "PersistentKeepaliveInterval": 25, "MTU": 1420}}
    config = parse_config(raw)
    assert config.backend.type == "wireguard" and config.backend.overlay_mtu(1500) == 1420 - 80
    assert config.backend.to_json() == {"Type": "wireguard", "ListenPort": 51000, "ListenPortV6": 51821,
                                        "PersistentKeepaliveInterval": 25, "Mode": "separate", "MTU": 1420,
                                        "PSK": psk}
    assert parse_config(config.to_json()) == config
    backend = create_backend(config, UNDERLAY, NodeOptions(state_dir=str(tmp_path)))
    assert type(backend).__name__ == "WireguardBackend"
    assert backend.settings.listen_port == 51000 and backend.settings.psk == psk and backend.mtu == 1340
    assert backend.key_path == str(tmp_path / "wireguard" / "private.key")
    assert NodeOptions().state_dir == "/var/lib/overlayd"
    assert create_backend(parse_config({"Network": NET, "Backend": {"Type": "wireguard"}}), UNDERLAY,
                          NodeOptions()).key_path == "/var/lib/overlayd/wireguard/private.key"


@pytest.mark.parametrize("backend, expected", [
    ("udp", {"Type": "udp", "Port": 8472}), ("vxlan", {"Type": "vxlan", "Port": 8472, "VNI": 1}),
    ("host-gw", {"Type": "host-gw"}), ("wireguard", {"Type": "wireguard"}),
])
def test_the_lab_gives_each_backend_the_settings_it_has(backend, expected):
    from overlayd.lab.cli import up
    from overlayd.lab.topology import network_config

    config = network_config(backend, NET, 1, 8472)
    assert config["Backend"] == expected and parse_config(config).backend.type == backend
    assert backend in next(p for p in up.params if p.name == "backend").type.choices
