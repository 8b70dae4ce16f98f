"""Which underlays finish the inner checksums a kernel VTEP leaves partial: vectors
over a made-up sysfs (devices, their bus device and driver, stacked ``lower_`` links)."""

from __future__ import annotations

import os

import pytest

from overlayd.plumbing import ethtool

# device -> its driver (None: no bus device, a virtual device) and the devices below it
SYSFS = {
    "eth0": ("ixgbe", []),
    "eth1": ("e1000e", []),
    "ens3": ("virtio_net", []),
    "veth0": (None, []),
    "bond0": (None, ["eth0", "eth1"]),
    "bond0.100": (None, ["bond0"]),
    "br0": (None, ["eth0", "veth0"]),      # a bridge with a container's veth among its ports
    "br1": (None, ["bond0"]),
    "vlan7": (None, ["ens3"]),
    "loop0": (None, ["loop1"]),            # a cycle cannot happen in a kernel; the depth bound holds
    "loop1": (None, ["loop0"]),
}


@pytest.fixture
def sysfs(tmp_path):
    drivers = tmp_path / "bus"
    for dev, (driver, lowers) in SYSFS.items():
        (tmp_path / "net" / dev).mkdir(parents=True)
        if driver:
            (drivers / driver).mkdir(parents=True, exist_ok=True)
            (tmp_path / "pci" / dev).mkdir(parents=True)
            os.symlink(drivers / driver, tmp_path / "pci" / dev / "driver")
            os.symlink(tmp_path / "pci" / dev, tmp_path / "net" / dev / "device")
        for lower in lowers:
            os.symlink(f"../{lower}", tmp_path / "net" / dev / f"lower_{lower}")
    return str(tmp_path / "net")


@pytest.mark.parametrize("dev, expected", [
    ("eth0", True),          # a NIC finishes checksums and segments
    ("bond0", True),         # every NIC below it does
    ("bond0.100", True),
    ("br1", True),
    ("ens3", False),         # paravirtual: may pass partial checksums to a guest on the same host
    ("vlan7", False),
    ("veth0", False),        # the lab's underlay, containers
    ("br0", False),          # one port is a veth
    ("loop0", False),
    ("missing", False),
])
def test_underlay_completes_checksums(sysfs, dev, expected):
    assert ethtool.underlay_completes_checksums(dev, sysfs) is expected


@pytest.mark.parametrize("argv", [[], ["a", "b", "c"], ["eth0", "yes"]])
def test_cli_usage(argv, capsys):
    assert ethtool.main(argv) == 2
    assert "usage" in capsys.readouterr().err
