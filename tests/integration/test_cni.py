"""The CNI plugin called exactly as a runtime calls it: a process with CNI_* in its
environment and the network config on stdin, delegating to Debian's bridge and
host-local plugins. Everything runs in namespaces made here: the plugin runs in a
"node" namespace (so cni0 and its iptables rules live there, never on the host)
and the pod is another namespace."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

DEBIAN_CNI = "/usr/lib/cni"
SUBNET_ENV = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
POD_SUBNET = ipaddress.IPv4Network("10.244.7.0/24")
GATEWAY = "10.244.7.1"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True)


def host_links() -> set[str]:
    """Names of the links in the host's namespace that the bridge plugin would make."""
    links = json.loads(sh("ip", "-j", "link", "show").stdout)
    return {link["ifname"] for link in links if link["ifname"] == "cni0" or link["ifname"].startswith("veth")}


@pytest.fixture
def netns():
    """Make network namespaces with unique names; all are deleted at teardown."""
    made: list[str] = []

    def make(role: str) -> str:
        name = f"ovt-cni-{role}-{secrets.token_hex(3)}"
        sh("ip", "netns", "add", name)
        made.append(name)
        return name

    yield make
    for name in made:
        sh("ip", "netns", "del", name, check=False)


@dataclass
class Node:
    """One node namespace with its subnet.env and plugin data dir, and one pod."""

    ns: str
    pod: str
    subnet_env: Path
    data_dir: Path
    container_id: str

    def conf(self, version: str = "1.0.0", **extra) -> dict:
        return {"cniVersion": version, "name": "ovt", "type": "overlayd",
                "subnetFile": str(self.subnet_env), "dataDir": str(self.data_dir), **extra}

    def call(self, command: str, stdin: str | dict, extra_env: dict | None = None) -> tuple[int, str, str]:
        """Run the plugin inside the node namespace: exit code, stdout, stderr."""
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "CNI_COMMAND": command, "CNI_CONTAINERID": self.container_id,
               "CNI_NETNS": f"/var/run/netns/{self.pod}", "CNI_IFNAME": "eth0", "CNI_PATH": DEBIAN_CNI,
               **(extra_env or {})}
        data = stdin if isinstance(stdin, str) else json.dumps(stdin)
        proc = subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, "-m", "overlayd.cni"],
                              input=data, env=env, capture_output=True, text=True, timeout=30)
        return proc.returncode, proc.stdout, proc.stderr

    def saved(self) -> Path:
        return self.data_dir / f"{self.container_id}-eth0.json"

    def in_pod(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.pod, *args, check=check)


@pytest.fixture
def node(netns, tmp_path):
    subnet_env = tmp_path / "subnet.env"
    subnet_env.write_text(SUBNET_ENV)
    before = host_links()
    yield Node(netns("node"), netns("pod"), subnet_env, tmp_path / "data", f"ovt-{secrets.token_hex(6)}")
    assert host_links() <= before, "the plugin created links in the host namespace"


def assert_error(result: tuple[int, str, str], code: int) -> dict:
    rc, out, err = result
    assert rc != 0
    assert "Traceback" not in out and "Traceback" not in err
    error = json.loads(out)
    assert error["code"] == code and error["msg"]
    return error


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_add_check_del(node, version):
    rc, out, err = node.call("ADD", node.conf(version))
    assert rc == 0, (out, err)
    result = json.loads(out)
    assert result["cniVersion"] == version
    address = ipaddress.IPv4Interface(result["ips"][0]["address"])
    assert address.network == POD_SUBNET and str(address.ip) != GATEWAY
    assert json.loads(node.saved().read_text())["type"] == "bridge"

    link = json.loads(node.in_pod("ip", "-j", "addr", "show", "eth0").stdout)[0]
    assert link["mtu"] == 1450
    assert f"{address.ip}/24" in {f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]}
    routes = json.loads(node.in_pod("ip", "-j", "route", "show").stdout)
    assert {"dst": "10.244.0.0/16", "gateway": GATEWAY} in [
        {"dst": r["dst"], "gateway": r.get("gateway")} for r in routes]
    node.in_pod("ping", "-c1", "-W2", GATEWAY)

    rc, out, err = node.call("CHECK", node.conf(version, prevResult=result))
    assert rc == 0, (out, err)

    node.subnet_env.unlink()  # DEL replays the saved config: the daemon may be gone
    lease = node.data_dir / "ipam" / "ovt" / str(address.ip)
    assert lease.exists()
    assert node.call("DEL", node.conf(version)) == (0, "", "")
    assert not lease.exists()
    assert not node.saved().exists()
    assert node.in_pod("ip", "link", "show", "eth0", check=False).returncode != 0
    assert json.loads(sh("ip", "-n", node.ns, "-j", "link", "show", "type", "veth").stdout or "[]") == []

    assert node.call("DEL", node.conf(version)) == (0, "", "")


def test_add_without_subnet_env_is_try_again_later(node):
    node.subnet_env.unlink()
    error = assert_error(node.call("ADD", node.conf("0.3.1")), 11)
    assert error == {"cniVersion": "0.3.1", "code": 11, "msg": error["msg"], "details": error["details"]}
    assert not node.saved().exists()


def test_bad_json_is_a_decoding_failure(node):
    assert_error(node.call("ADD", "{not json"), 6)


def test_deeply_nested_json_is_a_decoding_failure(node):
    rc, out, err = node.call("ADD", "[" * 100_000)
    assert out.count("\n") == 1, out  # one error object, one line
    error = assert_error((rc, out, err), 6)
    assert "internal error" not in error["msg"]
    assert not node.data_dir.exists()


def test_container_id_with_a_newline_is_refused(node):
    node.container_id += "\n"
    error = assert_error(node.call("ADD", node.conf()), 4)
    assert "CNI_CONTAINERID" in error["msg"]
    assert not node.data_dir.exists()


def test_check_of_unknown_container_fails(node):
    assert_error(node.call("CHECK", node.conf(prevResult={"cniVersion": "1.0.0"})), 3)


def test_failed_delegate_passes_its_error_and_forgets_the_conf(node):
    error = assert_error(node.call("ADD", node.conf(delegate={"ipam": {"subnet": "not-a-subnet"}})), 999)
    assert "not-a-subnet" in error["msg"]  # the bridge plugin's own error object, passed through
    assert not node.saved().exists()
    assert not list((node.data_dir / "ipam").glob("ovt/10.*"))
    # the veth the bridge made before failing was cleaned up by our DEL, not left in the pod
    assert node.in_pod("ip", "link", "show", "eth0", check=False).returncode != 0


def test_missing_delegate_plugin_touches_nothing(node):
    error = assert_error(node.call("ADD", node.conf(delegate={"type": "no-such-plugin"})), 999)
    assert "no-such-plugin" in error["msg"]
    assert not node.saved().exists()
    assert node.in_pod("ip", "link", "show", "eth0", check=False).returncode != 0


def ping6_gateway(node: Node) -> None:
    """One echo reply from cni0's IPv6 gateway, within 5 s: the bridge plugin gives a new cni0 its
    address with duplicate address detection, so it is tentative for a second or two."""
    node.in_pod("ping", "-6", "-c1", "-w5", "fd00:10:244:7::1")


def test_dual_stack_pod_gets_both_families(node):
    node.subnet_env.write_text(SUBNET_ENV + "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\n"
                                            "FLANNEL_IPV6_SUBNET=fd00:10:244:7::1/64\n")
    rc, out, err = node.call("ADD", node.conf())
    assert rc == 0, (out, err)
    addresses = {ipaddress.ip_interface(ip["address"]) for ip in json.loads(out)["ips"]}
    assert {a.network for a in addresses} == {POD_SUBNET, ipaddress.IPv6Network("fd00:10:244:7::/64")}

    bridge = json.loads(sh("ip", "-n", node.ns, "-j", "addr", "show", "cni0").stdout)[0]
    assert {"fd00:10:244:7::1/64", f"{GATEWAY}/24"} <= {
        f"{a['local']}/{a['prefixlen']}" for a in bridge["addr_info"]}
    routes6 = json.loads(node.in_pod("ip", "-6", "-j", "route", "show").stdout)
    assert {("fd00:10:244::/56", "fd00:10:244:7::1"), ("default", "fd00:10:244:7::1")} <= {
        (r["dst"], r.get("gateway")) for r in routes6}
    ping6_gateway(node)
    node.in_pod("ping", "-c1", "-W2", GATEWAY)

    assert node.call("DEL", node.conf()) == (0, "", "")
    assert not list((node.data_dir / "ipam" / "ovt").glob("fd00*"))


def test_ipv6_only_pod(node):
    node.subnet_env.write_text("FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:7::1/64\n"
                               "FLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n")
    rc, out, err = node.call("ADD", node.conf())
    assert rc == 0, (out, err)
    [ip] = json.loads(out)["ips"]
    assert ipaddress.ip_interface(ip["address"]).network == ipaddress.IPv6Network("fd00:10:244:7::/64")
    routes6 = json.loads(node.in_pod("ip", "-6", "-j", "route", "show").stdout)
    assert ("default", "fd00:10:244:7::1") in {(r["dst"], r.get("gateway")) for r in routes6}
    ping6_gateway(node)
    assert node.call("DEL", node.conf()) == (0, "", "")


def test_a_pod_joins_services_through_the_endpoint_spool(node, tmp_path):
    spool_dir = tmp_path / "endpoints"
    env_args = {"CNI_ARGS": "IgnoreUnknown=1;OVERLAYD_SERVICES=api"}
    conf = node.conf(services=["web"], endpointsDir=str(spool_dir))
    rc, out, err = node.call("ADD", conf, env_args)
    assert rc == 0, (out, err)
    address = ipaddress.IPv4Interface(json.loads(out)["ips"][0]["address"]).ip
    entry = spool_dir / f"{node.container_id}-eth0.json"
    assert json.loads(entry.read_text()) == {"ip": str(address), "services": ["web", "api"]}
    ports = json.loads(sh("ip", "-n", node.ns, "-d", "-j", "link", "show", "master", "cni0").stdout)
    assert [p["linkinfo"]["info_slave_data"]["hairpin"] for p in ports] == [True]  # a pod can reach itself
    assert node.call("DEL", conf) == (0, "", "")
    assert not entry.exists()
