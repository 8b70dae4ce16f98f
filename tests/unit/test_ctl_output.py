"""What an operator sees from overlayctl (issue 21): success confirmations on stdout (``-q``
silences them), errors as one line on stderr, one JSON type per key with a ``schema`` version
in every --json output, file arguments that fail in one line with exit 1, a status verdict
that is never cut, and ``--version``. etcd is a stand-in: nothing connects anywhere."""

from __future__ import annotations

import ipaddress
import json
import time

import pytest
from click.testing import CliRunner

import overlayd
from overlayd.cli import ctl as ctl_module
from overlayd.cli import services as services_module
from overlayd.cli.ctl import cli as ctl
from overlayd.encap.drops import Drop
from overlayd.lease.model import Lease, LeaseAttrs

from .test_cli import _leaf_commands
from .test_ctl_services import FakeServiceStore

CONFIG = '{"Network": "10.244.0.0/16", "EnableNFTables": false, "Backend": {"Type": "vxlan"}}'
SUBNET = "10.244.5.0/24"


class FakeStore:
    """Stands in for EtcdStore during one test: the config and the leases live in memory.
    Every overlayctl invocation 'connects' to the same instance."""

    def __init__(self):
        self.config: bytes | None = None
        self.leases: dict[ipaddress.IPv4Network, Lease] = {}

    def __call__(self, *args, **kwargs) -> "FakeStore":
        return self

    async def get_config(self) -> bytes | None:
        return self.config

    async def put_config(self, raw: bytes) -> None:
        self.config = raw

    async def list_leases(self, with_ttl: bool = False):
        return list(self.leases.values()), 7

    async def reserve(self, subnet, attrs):
        self.leases[subnet] = Lease(subnet, attrs)
        return self.leases[subnet]

    async def release(self, subnet, ttl):
        self.leases[subnet] = Lease(subnet, self.leases[subnet].attrs, time.time() + ttl, handle=1)
        return self.leases[subnet]

    async def delete_lease(self, subnet, revision=None):
        return self.leases.pop(subnet, None) is not None

    async def close(self) -> None:
        pass


@pytest.fixture
def store(monkeypatch):
    fake = FakeStore()
    monkeypatch.setattr(ctl_module, "EtcdStore", fake)
    monkeypatch.setattr(services_module, "ServiceStore", FakeServiceStore())
    monkeypatch.setattr(ctl_module, "local_addresses", lambda: {ipaddress.IPv4Address("198.18.0.15")})
    return fake


def invoke(*args, input=None):
    return CliRunner().invoke(ctl, list(args), input=input, catch_exceptions=False)


# --- 1. confirmations on stdout, -q, errors on stderr --------------------------------------

@pytest.mark.parametrize("args, confirmation", [
    (["config", "set", "-"], "config stored: Network 10.244.0.0/16"),
    (["lease", "reserve", SUBNET, "--public-ip", "198.18.0.15"], f"reserved {SUBNET} for 198.18.0.15"),
    (["lease", "release", SUBNET], f"released {SUBNET} (198.18.0.15)"),
    (["lease", "delete", SUBNET, "--yes"], f"deleted the lease of {SUBNET} (198.18.0.15)"),
])
@pytest.mark.parametrize("quiet", [[], ["-q"], ["--quiet"]])
def test_a_change_is_confirmed_on_stdout_unless_quiet(store, args, confirmation, quiet):
    store.config = b'{"Network": "10.244.0.0/16"}'
    if args[0] == "lease" and args[1] != "reserve":
        store.leases[ipaddress.IPv4Network(SUBNET)] = Lease(
            ipaddress.IPv4Network(SUBNET), LeaseAttrs(ipaddress.IPv4Address("198.18.0.15"), "udp"))
    result = invoke(*args, *quiet, input='{"Network": "10.244.0.0/16"}')
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    if quiet:
        assert result.stdout == ""
    else:
        assert len(result.stdout.splitlines()) == 1 and result.stdout.startswith(confirmation), result.stdout


def test_config_set_notes_stay_on_stderr_even_when_quiet(store):
    result = invoke("config", "set", "-q", "-", input=CONFIG)
    assert result.exit_code == 0 and result.stdout == ""
    assert result.stderr == "overlayctl: note: EnableNFTables: false: overlayd always uses nftables, never iptables\n"


@pytest.mark.parametrize("args", [
    ["lease", "delete", SUBNET],  # no --yes
    ["lease", "delete", SUBNET, "--yes"],  # no such lease
    ["lease", "reserve", SUBNET, "--public-ip", "198.18.0.15"],  # no config stored
    ["config", "set", "-"],
])
def test_errors_are_one_line_on_stderr_and_nothing_on_stdout(store, args):
    result = invoke(*args, input="{broken")
    assert result.exit_code == 1
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("overlayctl: error: ")


# --- 2. one JSON type per key, a schema version, stats always present -------------------------

MAPS = {"stats": int, "stored": object, "effective": object}  # name -> value type: keys are data


def json_types(value, found=None) -> dict[str, set[str]]:
    """Every key anywhere in ``value`` (by name) and the JSON types it has (null left out);
    the keys inside :data:`MAPS` are data (counter names, flannel's config), not looked into."""
    found = {} if found is None else found
    if isinstance(value, dict):
        for key, item in value.items():
            if item is not None:
                found.setdefault(key, set()).add(type(item).__name__)
            if key in MAPS and item is not None:
                assert all(isinstance(v, MAPS[key]) for v in item.values()), (key, item)
            else:
                json_types(item, found)
    elif isinstance(value, list):
        for item in value:
            json_types(item, found)
    return found


def status_file(tmp_path, **change) -> str:
    path = tmp_path / "status.json"
    path.write_text(json.dumps({
        "state": "running", "subnet": "10.244.3.0/24", "public_ip": "198.18.0.11", "backend": "udp",
        "device": "tun0", "mtu": 1472, "peers": ["10.244.7.0/24"],
        "peer_table": [{"subnet": "10.244.7.0/24", "public_ip": "198.18.0.12", "backend": "udp",
                        "vtep_mac": None, "since": time.time(), "routed": True}],
        "stats": {"peers": 1, "tx_packets": 10}, "updated": time.time(), "interval": 2.0, **change}))
    return str(path)


def every_json_output(store, tmp_path) -> dict[str, object]:
    """Each overlayctl command's --json output (the watch is checked against a real etcd)."""
    status = status_file(tmp_path)
    commands = {
        "config set": ["config", "set", "-"],
        "config get": ["config", "get"],
        "lease reserve": ["lease", "reserve", SUBNET, "--public-ip", "198.18.0.15"],
        "subnets": ["subnets"],
        "lease release": ["lease", "release", SUBNET],
        "lease delete": ["lease", "delete", SUBNET, "--yes"],
        "status": ["status", "--status-file", status],
        "peers": ["peers", "--status-file", status],
        "service create": ["service", "create", "web", "--port", "80:8080", "--node-port", "auto"],
        "endpoint add": ["endpoint", "add", "web", "10.244.3.5"],
        "service list": ["service", "list"],
        "service show": ["service", "show", "web"],
        "endpoint remove": ["endpoint", "remove", "web", "10.244.3.5"],
        "service delete": ["service", "delete", "web"],
    }
    outputs = {}
    for name, args in commands.items():
        result = invoke(*args, "--json", input=CONFIG)
        assert result.exit_code == 0, (name, result.output)
        outputs[name] = json.loads(result.stdout)
    return outputs


def test_every_json_output_is_an_object_with_a_schema_version(store, tmp_path):
    outputs = every_json_output(store, tmp_path)
    assert set(outputs) == {" ".join(path) for path, _ in _leaf_commands(ctl)} - {"subnets --watch"}
    for name, output in outputs.items():
        assert isinstance(output, dict), name
        assert type(output.get("schema")) is int and output["schema"] == ctl_module.JSON_SCHEMA, name


def test_each_json_key_has_one_type_across_commands(store, tmp_path):
    outputs = every_json_output(store, tmp_path)
    types: dict[str, set[str]] = {}
    for output in outputs.values():
        for key, seen in json_types(output).items():
            types.setdefault(key, set()).update(seen)
    mixed = {key: seen for key, seen in types.items() if len(seen) > 1}
    assert mixed == {}
    # the config commands print the same shape: the stored config as an object in both
    assert outputs["config set"].keys() == outputs["config get"].keys()
    assert outputs["config set"]["stored"] == outputs["config get"]["stored"] == json.loads(CONFIG)


def test_config_get_json_gives_null_for_a_stored_value_that_is_not_a_json_object(store):
    store.config = b"{broken"
    output = json.loads(invoke("config", "get", "--json").stdout)
    assert output["stored"] is None and output["effective"] is None and "not valid JSON" in output["error"]


def test_status_json_has_every_data_plane_counter(tmp_path):
    result = invoke("status", "--json", "--status-file", status_file(tmp_path, stats={"tx_packets": 10}))
    stats = json.loads(result.stdout)["stats"]
    assert stats["tx_packets"] == 10
    for name in [f"{d}_{unit}" for d in ("rx", "tx", "dev_rx", "dev_tx") for unit in ("packets", "bytes")] + \
                [f"drop_{reason.value}" for reason in Drop]:
        assert type(stats[name]) is int, name
    assert stats["drop_no_lease"] == 0
    # a status file written before the daemon had any stats: the same keys, all 0
    result = invoke("status", "--json", "--status-file", status_file(tmp_path, stats={}))
    assert json.loads(result.stdout)["stats"]["dev_tx_bytes"] == 0


# --- 3. file arguments: one line, exit 1 ------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["config", "set", "/nonexistent/config.json"], "cannot read /nonexistent/config.json: No such file or directory"),
    (["config", "set", "/"], "cannot read /: Is a directory"),
    (["status", "--status-file", "/"], "cannot read /: Is a directory"),
    (["peers", "--status-file", "/"], "cannot read /: Is a directory"),
])
def test_a_file_that_cannot_be_read_is_one_line_and_exit_1(store, args, needle):
    result = invoke(*args)
    assert result.exit_code == 1, result.output
    assert result.stdout == "" and result.stderr == f"overlayctl: error: {needle}\n"


# --- 4. the status verdict is never cut ----------------------------------------------------

def test_a_long_status_verdict_is_wrapped_not_cut(tmp_path):
    error = ("cannot open UDP 198.18.0.11:8472: Address already in use (a kernel VXLAN device or "
             "another overlayd holds it; find it with 'ss -ulpn sport = :8472') " + "x" * 120 + " END")
    path = status_file(tmp_path, state="failed", error=error)
    for args in (["status"], ["peers"]):
        result = invoke(*args, "--status-file", path)
        assert result.exit_code == 3
        shown = result.stdout if args == ["status"] else result.stderr
        lines = shown.splitlines()
        assert lines[0].startswith("overlayd FAILED 0s ago: cannot open UDP")
        verdict = [l for l in lines if not l.startswith(("subnet ", "peers (", "  tx_", "  peers"))]
        assert all(len(l) <= 80 for l in lines), lines
        assert "~" not in "".join(verdict)
        assert "".join(l.strip() for l in verdict).replace(" ", "") == \
            ("overlayd FAILED 0s ago: " + error).replace(" ", "")


# --- 5. --version -------------------------------------------------------------------------

def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout == f"overlayctl {overlayd.__version__}\n"


# --- flannel's dual-stack and IPv6-only leases (issue 17) -----------------------------------

def test_subnets_lists_flannels_dual_stack_and_ipv6_only_leases(store):
    """A flannel dual-stack node's lease is listed with its IPv6 half; an IPv6-only one
    (ignored by an IPv4 network) is listed and marked, not a TypeError from sorting two families."""
    store.config = CONFIG.encode()
    six = ipaddress.IPv6Network("fd00:10:244:4::/64")
    store.leases = {
        ipaddress.IPv4Network("10.244.3.0/24"): Lease(
            ipaddress.IPv4Network("10.244.3.0/24"),
            LeaseAttrs.decode('{"PublicIP":"198.18.0.13","PublicIPv6":"2001:db8::13"}'),
            subnet6=ipaddress.IPv6Network("fd00:10:244:3::/64")),
        six: Lease(six, LeaseAttrs.decode('{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::14"}'), subnet6=six),
    }
    out = json.loads(invoke("subnets", "--json").output)["leases"]
    assert [(r["subnet"], r["subnet6"], r["public_ip"], r["public_ipv6"]) for r in out] == [
        ("10.244.3.0/24", "fd00:10:244:3::/64", "198.18.0.13", "2001:db8::13"),
        ("fd00:10:244:4::/64", "fd00:10:244:4::/64", None, "2001:db8::14")]
    assert out[1]["problems"] == ["ignored: an IPv6-only lease, and the network has no IPv6 pool (EnableIPv6)"]
    text = invoke("subnets").output
    assert "fd00:10:244:3::/64" in text and "2001:db8::14" in text and "None" not in text


def test_status_and_peers_show_both_families_of_a_dual_stack_node(tmp_path):
    """A dual-stack node's own subnets and addresses, and each peer's IPv6 subnet and PublicIPv6 on
    a second row; an IPv6-only peer (no PublicIP) by its IPv6 address (issue 17)."""
    path = status_file(tmp_path, subnet6="fd00:10:244:3::/64", public_ipv6="2001:db8::11", peer_table=[
        {"subnet": "10.244.7.0/24", "subnet6": "fd00:10:244:7::/64", "public_ip": "198.18.0.12",
         "public_ipv6": "2001:db8::12", "backend": "udp", "vtep_mac": None, "since": time.time(), "routed": True},
        {"subnet": "fd00:10:244:9::/64", "subnet6": "fd00:10:244:9::/64", "public_ip": None,
         "public_ipv6": "2001:db8::13", "backend": "udp", "vtep_mac": None, "since": time.time(), "routed": True}])
    status = invoke("status", "--status-file", path)
    assert "subnet 10.244.3.0/24 on 198.18.0.11, backend udp (tun0, MTU 1472)\nsubnet fd00:10:244:3::/64 on 2001:db8::11\n" \
        in status.output
    peers = invoke("peers", "--status-file", path).output.splitlines()
    assert peers[1].split()[:2] == ["10.244.7.0/24", "198.18.0.12"]
    assert peers[2].split() == ["fd00:10:244:7::/64", "2001:db8::12"]
    assert peers[3].split()[:2] == ["fd00:10:244:9::/64", "2001:db8::13"] and len(peers) == 4
