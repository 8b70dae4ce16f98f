"""The machines lab's pure parts: the node image's recipe and key, a node's /etc/default/overlayd
settings, the cgroup hierarchies systemd-nspawn is started in (overlayd/lab/machines.py)."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from overlayd.lab.machines import (BASE_PACKAGES, Recipe, cgroup_hierarchies, daemon_settings, flag_settings,
                                   recipe_for, requirements)
from overlayd.lab.topology import LabError, Node

REPO = Path(__file__).resolve().parents[2]


def test_requirements_are_dependencies_test_extra_and_build_requirements():
    pyproject = {"build-system": {"requires": ["setuptools>=77", "wheel"]},
                 "project": {"dependencies": ["click>=8", "wheel"],
                             "optional-dependencies": {"test": ["pytest"], "uvloop": ["uvloop"]}}}
    assert requirements(pyproject) == ("click>=8", "wheel", "pytest", "setuptools>=77")


def test_the_checkout_recipe_is_scripts_install_and_pyproject():
    recipe = recipe_for(REPO)
    listed = subprocess.run([str(REPO / "scripts" / "install"), "--list-packages"], capture_output=True,
                            text=True, check=True).stdout.split()
    assert recipe.packages == tuple(listed) and {"systemd-container", "mmdebstrap", "nftables"} <= set(listed)
    with open(REPO / "pyproject.toml", "rb") as f:
        assert recipe.requirements == requirements(tomllib.load(f))


def test_the_image_has_every_package_and_a_venv_with_the_requirements_offline():
    recipe = Recipe(("nftables", "dbus"), ("click>=8.1,<9", "wheel"))
    argv = recipe.mmdebstrap_argv("/cache/x/rootfs", "/cache/x/wheels")
    assert argv[:3] == ["mmdebstrap", "--mode=root", "--variant=minbase"]
    assert argv[-2:] == ["bookworm", "/cache/x/rootfs"]
    included = next(a for a in argv if a.startswith("--include=")).removeprefix("--include=").split(",")
    assert included == [*BASE_PACKAGES, "nftables"]  # dbus once
    hooks = [a.removeprefix("--customize-hook=") for a in argv if a.startswith("--customize-hook=")]
    assert any("/cache/x/wheels" in hook for hook in hooks)
    assert any("no-index = true" in hook and "/etc/pip.conf" in hook for hook in hooks)
    assert hooks[-1].endswith("/opt/overlayd/venv/bin/pip install -q 'click>=8.1,<9' wheel")


def test_the_key_changes_with_the_recipe_only():
    recipe = Recipe(("nftables",), ("click",))
    assert recipe.key() == Recipe(("nftables",), ("click",)).key()
    assert len({recipe.key(), Recipe(("nftables", "gcc"), ("click",)).key(), Recipe(("nftables",), ("pytest",)).key(),
                Recipe(("nftables",), ("click",), suite="trixie").key()}) == 4


def test_flags_become_the_variables_of_etc_default_overlayd():
    assert flag_settings(["--resync-interval", "1", "--udp-checksum", "--healthz-addr=127.0.0.1:10256",
                          "--iface", "eth0", "--iface", "eth1"]) == [
        "OVERLAYD_RESYNC_INTERVAL=1", "OVERLAYD_UDP_CHECKSUM=true", "OVERLAYD_HEALTHZ_ADDR=127.0.0.1:10256",
        "OVERLAYD_IFACE=eth0 eth1"]
    assert flag_settings(["--etcd-prefix", "/x"]) == ["OVERLAYD_ETCD_PREFIX=/x"]


@pytest.mark.parametrize("args, error", [(["--no-such-flag"], "not a flag"), (["--lease-ttl"], "needs a value")])
def test_a_flag_overlayd_lacks_is_refused(args, error):
    with pytest.raises(LabError, match=error):
        flag_settings(args)


def test_a_nodes_settings():
    node = Node("node2", "lab-n2", "198.18.0.12", vxlan_impl="kernel", ip_masq=True, datapath="python",
                extra_args=["--resync-interval", "2"], ip6="2001:db8::12")
    assert daemon_settings(node, 3600, tls=True) == [
        "OVERLAYD_IFACE=eth0", "OVERLAYD_LEASE_TTL=3600", "OVERLAYD_VXLAN_IMPL=kernel", "OVERLAYD_EVENT_LOOP=asyncio",
        "OVERLAYD_PUBLIC_IPV6=2001:db8::12", "OVERLAYD_IP_MASQ=true", "OVERLAYD_DATAPATH=python",
        "OVERLAYD_ETCD_CAFILE=/etc/overlayd/lab-pki/ca.crt", "OVERLAYD_ETCD_CERTFILE=/etc/overlayd/lab-pki/client.crt",
        "OVERLAYD_ETCD_KEYFILE=/etc/overlayd/lab-pki/client.key", "OVERLAYD_RESYNC_INTERVAL=2"]
    assert daemon_settings(Node("node1", "lab-n1", "198.18.0.11"), 60, tls=False) == [
        "OVERLAYD_IFACE=eth0", "OVERLAYD_LEASE_TTL=60", "OVERLAYD_VXLAN_IMPL=user", "OVERLAYD_EVENT_LOOP=asyncio"]


def test_cgroup_hierarchies(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    assert cgroup_hierarchies(str(tmp_path)) == [str(tmp_path)]  # unified only
    hybrid = tmp_path / "hybrid"
    for name in ("unified", "systemd", "memory"):
        (hybrid / name).mkdir(parents=True)
    assert cgroup_hierarchies(str(hybrid)) == [str(hybrid / "unified"), str(hybrid / "systemd")]
    with pytest.raises(LabError, match="no cgroup hierarchy"):
        cgroup_hierarchies(str(tmp_path / "none"))
