"""vagrant/Vagrantfile's private network per provider (issue 21, broken point 6).

VirtualBox 6.1.28 and later refuse host-only networks outside 192.168.56.0/21 (unless
/etc/vbox/networks.conf allows more), so the VirtualBox provider must use that range;
the libvirt provider keeps a documentation or benchmark range (RFC 5737, RFC 2544). The
file is read as text (the tests need no Ruby): the private networks' addresses come from
one table, NETWORKS (provider => first three octets), and no address is written anywhere
else but in that table and in libvirt's management network (test_vagrantfile_libvirt.py)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

VAGRANT = Path(__file__).parents[2] / "vagrant"
TABLE_ENTRY = re.compile(r'^\s*"(\w+)"\s*=>\s*"(\d+\.\d+\.\d+)",?\s*(?:#.*)?$', re.MULTILINE)
IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){2,3}\b")
MANAGEMENT_ADDRESS = re.compile(r'^MANAGEMENT = \{.*\baddress: "([^"]+)"', re.MULTILINE)
# documentation (RFC 5737) and benchmark (RFC 2544) ranges
DOCUMENTATION = [ipaddress.ip_network(n)
                 for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "198.18.0.0/15")]
COMMENT = re.compile(r"#(?!\{).*")  # a comment, not a string's interpolation ("#{ip}")


def code() -> str:
    """The Vagrantfile without its comments."""
    return "\n".join(COMMENT.sub("", line) for line in (VAGRANT / "Vagrantfile").read_text().splitlines())


def networks() -> dict[str, str]:
    return dict(TABLE_ENTRY.findall((VAGRANT / "Vagrantfile").read_text()))


def addresses(prefix: str) -> list[ipaddress.IPv4Address]:
    """etcd's (.10) and the nodes' (.11 on) addresses, for up to 20 nodes."""
    return [ipaddress.IPv4Address(f"{prefix}.{host}") for host in range(10, 31)]


def test_virtualbox_uses_its_host_only_range():
    prefix = networks().get("virtualbox")
    assert prefix, "no address prefix for the virtualbox provider in NETWORKS"
    assert all(ip in ipaddress.ip_network("192.168.56.0/21") for ip in addresses(prefix)), prefix


def test_libvirt_keeps_a_documentation_or_benchmark_range():
    prefix = networks().get("libvirt")
    assert prefix, "no address prefix for the libvirt provider in NETWORKS"
    assert all(any(ip in net for net in DOCUMENTATION) for ip in addresses(prefix)), prefix


def test_every_address_comes_from_the_table():
    table = set(networks().values()) | {MANAGEMENT_ADDRESS.search(code()).group(1).split("/")[0]}
    stray = [ip for ip in IPV4.findall(code()) if ip not in table and not ip.startswith("127.")]
    assert not stray, f"addresses written outside NETWORKS: {stray}"


def test_each_provider_sets_network_and_provisioning_from_its_prefix():
    text = code()
    # one loop over NETWORKS per machine kind, overriding network and provisioning for that provider
    assert len(re.findall(r"NETWORKS\.each do \|provider, net\|", text)) == 2
    assert len(re.findall(r"\.vm\.provider provider do \|_, override\|", text)) == 2
    assert 'override.vm.provision "shell", path: "provision-etcd.sh", args: [etcd_ip, BACKEND]' in text
    assert ('override.vm.provision "shell", path: "provision-node.sh", args: ["http://#{etcd_ip}:2379", ip]'
            in text)
    for script, first in (("provision-etcd.sh", "ETCD_IP=$1"), ("provision-node.sh", "ETCD_ENDPOINTS=$1")):
        # the addresses are arguments, not literals
        body = "\n".join(l for l in (VAGRANT / script).read_text().splitlines() if not l.lstrip().startswith("#"))
        underlay = [ip for ip in IPV4.findall(body) if not ip.startswith("10.244.")]  # the pod network may stay
        assert first in body and not underlay, script
