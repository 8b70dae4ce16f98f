"""Backend.DirectRouting: accepted for VXLAN (kernel implementation), refused in one line for the userspace
one; which peers are direct is decided from the kernel's route to them (tests/e2e/test_direct_routing.py)."""

import pytest

from overlayd.backend import backend_class
from overlayd.backend.base import NodeOptions
from overlayd.backend.vxlan import KernelVxlanBackend
from overlayd.errors import ConfigError
from overlayd.netconf import parse_config

CONFIG = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "DirectRouting": True}}


def test_accepted_and_kept():
    config = parse_config(CONFIG)
    assert config.backend.direct_routing and config.backend.to_json()["DirectRouting"] is True
    assert backend_class(config, NodeOptions(vxlan_impl="kernel")) is KernelVxlanBackend


def test_refused_for_the_userspace_vxlan():
    with pytest.raises(ConfigError, match="^Backend.DirectRouting: true needs the kernel VXLAN implementation"):
        backend_class(parse_config(CONFIG), NodeOptions(vxlan_impl="user"))
