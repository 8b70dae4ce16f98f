"""vagrant/Vagrantfile's libvirt provider (issue 19 section 2): its networks stay on the host in
documentation or benchmark ranges, and its VMs keep a video device.

vagrant-libvirt adds a management network to every VM (DHCP, Vagrant's ssh) whose default is
NAT on 192.168.121.0/24: here it must be isolated and in a documentation or benchmark range,
and so must the private network (no forwarding, no DHCP). Under software emulation (TCG) the
BIOS hangs without a video device (graphics_type "none"). scripts/vagrant-lab removes what
the lab leaves in libvirt by the names the Vagrantfile gives, so those must agree. The file is
read as text, as tests/unit/test_vagrantfile.py does."""

from __future__ import annotations

import ipaddress
import re

from tests.unit.test_vagrantfile import DOCUMENTATION, VAGRANT, code, networks

SCRIPT = VAGRANT.parent / "scripts" / "vagrant-lab"
VAGRANT_LIBVIRT_DEFAULT = ipaddress.ip_network("192.168.121.0/24")


def ruby_hash(name: str) -> dict[str, str]:
    """The ``key: value`` pairs of the one-line Ruby hash constant ``name`` (values as written)."""
    line = re.search(rf"^{name} = \{{(.*)\}}$", code(), re.MULTILINE)
    assert line, f"no one-line {name} = {{...}} in the Vagrantfile"
    return dict(re.findall(r'(\w+): ("[^"]*"|\w+)', line.group(1)))


def libvirt_options() -> dict[str, str]:
    line = re.search(r'^\s*"libvirt" => \{(.*)\},?$', code(), re.MULTILINE)
    assert line, "no libvirt entry in NETWORK_OPTIONS"
    return dict(re.findall(r'(\w+): ("[^"]*"|\w+)', line.group(1)))


def setting(name: str) -> str:
    """What the libvirt provider block sets ``libvirt.NAME`` to (as written)."""
    found = re.findall(rf"^\s*libvirt\.{name} = (.+?)\s*$", code(), re.MULTILINE)
    assert len(found) == 1, f"libvirt.{name} set {len(found)} times"
    return found[0]


def management_network() -> ipaddress.IPv4Network:
    return ipaddress.ip_network(ruby_hash("MANAGEMENT")["address"].strip('"'))


def test_the_management_network_is_in_a_documentation_or_benchmark_range():
    net = management_network()
    assert any(net.subnet_of(each) for each in DOCUMENTATION), net
    assert not net.overlaps(VAGRANT_LIBVIRT_DEFAULT)


def test_the_management_network_is_isolated_and_set_from_its_table():
    management = ruby_hash("MANAGEMENT")
    assert management["mode"] == '"none"'  # no <forward>: neither NAT nor routing to the uplink
    for key in ("name", "address", "mode"):
        assert setting(f"management_network_{key}") == f"MANAGEMENT[:{key}]"


def test_the_private_network_is_isolated_and_apart_from_the_management_network():
    options = libvirt_options()
    assert options["libvirt__forward_mode"] == '"none"' and options["libvirt__dhcp_enabled"] == "false"
    private = ipaddress.ip_network(f"{networks()['libvirt']}.0/24")
    assert not private.overlaps(management_network())
    assert "**NETWORK_OPTIONS.fetch(provider, {})" in code()  # the private networks take them


def test_a_video_device_is_kept():
    assert setting("graphics_type") not in ('"none"', "nil")
    assert setting("video_type") not in ('"none"', "nil")
    assert setting("graphics_ip") == '"127.0.0.1"'  # the VNC console on this host only


def test_software_emulation_is_a_setting_with_kvm_by_default():
    assert setting("driver") == "LIBVIRT_DRIVER"
    assert 'LIBVIRT_DRIVER = ENV.fetch("OVERLAYD_LIBVIRT_DRIVER", "kvm")' in code()


def test_the_run_script_cleans_up_by_the_vagrantfiles_names():
    script = SCRIPT.read_text()
    management = ruby_hash("MANAGEMENT")
    names = {"MGMT_NET": management["name"], "LAB_NET": libvirt_options()["libvirt__network_name"],
             "DOMAIN_PREFIX": setting("default_prefix")}
    for variable, value in names.items():
        assert f"{variable}={value}\n" in script, variable
