"""The Vagrant lab's local box (overlayd/lab/vagrant_box.py): its recipe and the files it writes,
without building it (scripts/vagrant-lab builds and boots it)."""

from __future__ import annotations

import re

from overlayd.lab import vagrant_box
from overlayd.lab.machines import Recipe

BASE = Recipe(packages=("iproute2", "etcd-server"), requirements=("click>=8",))
KEY = "ssh-rsa AAAAB3Nza vagrant insecure public key"


def hooks(argv: list[str]) -> list[str]:
    return [arg.split("=", 1)[1] for arg in argv if arg.startswith("--customize-hook=")]


def test_the_root_is_named_by_its_label_never_by_a_device():
    for text in (vagrant_box.grub_cfg(), vagrant_box.fstab()):
        assert f"LABEL={vagrant_box.LABEL}" in text or f"--label --set=root {vagrant_box.LABEL}" in text
        assert "/dev/" not in text  # update-grub in a chroot wrote root=/dev/loop0p1
    assert re.search(rf"^\s*linux /vmlinuz root=LABEL={vagrant_box.LABEL} ", vagrant_box.grub_cfg(), re.MULTILINE)
    assert "console=ttyS0" in vagrant_box.KERNEL_ARGS and "net.ifnames=0" in vagrant_box.KERNEL_ARGS


def test_the_metadata_is_format_v2_without_a_size_given_by_hand():
    meta = vagrant_box.metadata()
    assert meta["provider"] == "libvirt" and meta["disks"] == [{"path": "box.img"}]
    assert "virtual_size" not in meta  # vagrant-libvirt reads it from the qcow2


def test_the_management_interface_takes_dhcp_without_dns():
    text = vagrant_box.eth0_network()
    assert "Name=eth0" in text and "DHCP=ipv4" in text and "UseDNS=false" in text


def test_the_box_is_the_machines_recipe_plus_a_vm_and_vagrants_user():
    recipe = vagrant_box.BoxRecipe(BASE, KEY)
    argv = recipe.mmdebstrap_argv("/tmp/target", "/tmp/wheels")
    assert argv[-2:] == ["bookworm", "/tmp/target"]
    include = next(arg for arg in argv if arg.startswith("--include=")).split("=", 1)[1].split(",")
    assert set(BASE.packages) <= set(include) and set(vagrant_box.BOX_PACKAGES) <= set(include)
    got = hooks(argv)
    assert got[:len(BASE.hooks("/tmp/wheels"))] == BASE.hooks("/tmp/wheels")  # the machines recipe's first
    box = "\n".join(got[len(BASE.hooks("/tmp/wheels")):])
    assert "useradd" in box and KEY in box and "NOPASSWD" in box
    assert 'rm -f "$1/etc/resolv.conf"' in box and "enable systemd-networkd" in box
    assert vagrant_box.grub_cfg().splitlines()[0] in box and vagrant_box.fstab().strip() in box


def test_each_vm_makes_its_own_ssh_host_keys_before_sshd():
    box = "\n".join(hooks(vagrant_box.BoxRecipe(BASE, KEY).mmdebstrap_argv("/tmp/target", "/tmp/wheels")))
    removal, unit = box.index('rm -f "$1"/etc/ssh/ssh_host_*'), box.index("ssh-keygen -A")
    assert removal < unit and "enable ssh-host-keys.service" in box
    text = vagrant_box.host_keys_unit()
    assert "Before=ssh.service" in text and "RequiredBy=ssh.service" in text
    assert "ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key" in text  # the first boot only


def test_the_cache_key_follows_the_recipe():
    one = vagrant_box.BoxRecipe(BASE, KEY)
    assert one.key() == vagrant_box.BoxRecipe(BASE, KEY).key()
    assert one.key() != vagrant_box.BoxRecipe(BASE, KEY + "x").key()
    assert one.key() != vagrant_box.BoxRecipe(Recipe(BASE.packages + ("tcpdump",), BASE.requirements), KEY).key()
