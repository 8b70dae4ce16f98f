"""The lab's IP families (issue 17 point 5), pure parts: the network config each family writes and
the IPv6 underlay addresses; and ``scripts/lab up --ip-family`` refused in one line when unknown."""

import ipaddress
import subprocess

import pytest
from click.testing import CliRunner

from overlayd.lab import cli as lab_cli
from overlayd.lab.topology import NETWORK6, UNDERLAY6, Lab, LabError, Pod, network_config, underlay_ip6
from overlayd.netconf import parse_config


def test_ipv4_config_is_the_labs_config_as_before_with_a_service_network():
    assert network_config("vxlan", "10.244.0.0/16", 1, 8472) == {
        "Network": "10.244.0.0/16", "SubnetLen": 24, "ServiceNetwork": "10.96.0.0/16",
        "Backend": {"Type": "vxlan", "Port": 8472, "VNI": 1}}
    assert network_config("host-gw", "10.244.0.0/16", 1, 8472, "ipv4") == {
        "Network": "10.244.0.0/16", "SubnetLen": 24, "ServiceNetwork": "10.96.0.0/16", "Backend": {"Type": "host-gw"}}


@pytest.mark.parametrize("family, ipv4", [("dual", "10.244.0.0/16"), ("ipv6", None)])
@pytest.mark.parametrize("backend", ["udp", "vxlan", "host-gw"])
def test_ipv6_families_write_a_config_flannel_and_overlayd_read(family, ipv4, backend):
    raw = network_config(backend, "10.244.0.0/16", 1, 8472, family)
    assert (raw["EnableIPv6"], raw["IPv6Network"], raw["IPv6SubnetLen"]) == (True, "fd00:10:244::/56", 64)
    assert raw.get("EnableIPv4", True) is (family == "dual") and ("Network" in raw) is (family == "dual")
    config = parse_config(raw)
    assert str(config.ipv6.network) == NETWORK6 and config.ipv6.subnet_len == 64
    assert (str(config.ipv4.network) if config.ipv4 else None) == ipv4
    assert raw.get("ServiceNetwork") == ("10.96.0.0/16" if ipv4 else None)  # services are IPv4
    assert config.backend.type == backend and not config.notes


def test_underlay_ip6_reads_like_the_ipv4_address():
    assert underlay_ip6("198.18.0.11") == "2001:db8::11"
    assert underlay_ip6("198.18.0.2") == "2001:db8::2"
    assert underlay_ip6("198.18.0.201") == "2001:db8::201"
    addresses = {underlay_ip6(f"198.18.0.{i}") for i in range(1, 255)}
    assert len(addresses) == 254 and all(ipaddress.IPv6Address(a) in UNDERLAY6 for a in addresses)
    assert UNDERLAY6.subnet_of(ipaddress.IPv6Network("2001:db8::/32"))


def test_unknown_family_refused(tmp_path):
    with pytest.raises(LabError, match="ip_family must be one of ipv4, dual, ipv6, not 'ipv5'"):
        Lab(str(tmp_path), "x", ip_family="ipv5")
    result = CliRunner().invoke(lab_cli.cli, ["--state-dir", str(tmp_path), "up", "--ip-family", "ipv5"])
    assert result.exit_code == 2 and "'ipv5' is not one of 'ipv4', 'dual', 'ipv6'" in result.output
    assert "Traceback" not in result.output


def test_load_of_a_lab_saved_before_ip_families(tmp_path):
    """A lab.json written before --ip-family existed loads as an IPv4 lab."""
    lab = Lab(str(tmp_path), "old")
    lab.save()
    text = (tmp_path / "lab.json").read_text()
    (tmp_path / "lab.json").write_text(text.replace('"ip_family": "ipv4",', ""))
    assert "ip_family" not in (tmp_path / "lab.json").read_text()
    assert Lab.load(str(tmp_path)).versions == (4,)


class StubLab:
    """What print_matrix reads of a Lab: its pods, IP versions and pings (unreached: the pairs given)."""

    def __init__(self, versions, unreached=()):
        self.versions = versions
        self.unreached = set(unreached)
        self.asked = []
        self._pods = [Pod("node1-pod1", "n1p1", "node1", "10.244.1.2", ip6="fd00:10:244:1::2"),
                      Pod("node2-pod1", "n2p1", "node2", "10.244.2.2", ip6="fd00:10:244:2::2")]

    def pods(self):
        return self._pods

    def reachability(self, tries, version=4):
        self.asked.append(version)
        return {(a.name, b.name): (version, a.name) not in self.unreached
                for a in self._pods for b in self._pods if a is not b}


def matrix(lab) -> tuple[bool, str]:
    out = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lab_cli.click, "echo", lambda text="", **kw: out.append(text))
        ok = lab_cli.print_matrix(lab, tries=1)
    return ok, "\n".join(out)


def test_ipv4_matrix_reads_as_before():
    ok, out = matrix(StubLab((4,)))
    assert ok and "pod-to-pod reachability (2 pods, ICMP echo across the overlay):" in out
    assert out.rstrip().endswith("2/2 pairs reachable") and "IPv" not in out


def test_dual_matrix_pings_each_family():
    lab = StubLab((4, 6), unreached={(6, "node2-pod1")})
    ok, out = matrix(lab)
    assert not ok and lab.asked == [4, 6]
    assert "pod-to-pod IPv4 reachability" in out and "pod-to-pod IPv6 reachability (2 pods, ICMPv6 echo" in out
    assert "2/2 IPv4 pairs reachable" in out and "1/2 IPv6 pairs reachable" in out
    assert out.split("IPv6 reachability")[1].count("FAIL") == 1


def test_ipv6_only_matrix():
    lab = StubLab((6,))
    ok, out = matrix(lab)
    assert ok and lab.asked == [6] and "2/2 IPv6 pairs reachable" in out and "IPv4" not in out


@pytest.mark.parametrize("address, flag", [("fd00:10:244:2::2", "-6"), ("10.244.2.2", "-4")])
def test_ping_names_the_family(monkeypatch, address, flag):
    seen = []
    monkeypatch.setattr("overlayd.lab.topology.run", lambda argv, **kw: seen.append(argv) or
                        subprocess.CompletedProcess(argv, 0))
    assert Lab("/nonexistent", "x").ping(StubLab((4,)).pods()[0], address, tries=1)
    assert seen == [["ip", "netns", "exec", "n1p1", "ping", flag, "-c1", "-W1", "-n", address]]
