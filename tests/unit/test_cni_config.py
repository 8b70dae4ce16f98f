"""The CNI plugin's pure parts: config parsing, delegate rendering, result shapes."""

from __future__ import annotations

import io
import ipaddress
import json

import pytest

from overlayd import cni
from overlayd.subnetenv import SubnetEnv

ENV = SubnetEnv(ipaddress.IPv4Network("10.244.0.0/16"), ipaddress.IPv4Network("10.244.3.0/24"), 1450, False)
ROUTES = [{"dst": "10.244.0.0/16", "gw": "10.244.3.1"}]
BASE = {"cniVersion": "1.0.0", "name": "overlayd", "type": "overlayd"}


def conf(**extra) -> cni.NetConf:
    return cni.parse_netconf(json.dumps(dict(BASE, **extra)))


def test_default_delegate():
    assert cni.build_delegate(conf(dataDir="/tmp/d"), ENV) == {
        "cniVersion": "1.0.0", "name": "overlayd", "type": "bridge", "bridge": "cni0",
        "isGateway": True, "isDefaultGateway": True, "hairpinMode": True, "ipMasq": True, "mtu": 1450,
        "ipam": {"type": "host-local", "subnet": "10.244.3.0/24",
                 "routes": ROUTES, "dataDir": "/tmp/d/ipam"},
    }


@pytest.mark.parametrize("ipmasq, bridge_masq", [(True, False), (False, True)])
def test_bridge_masquerades_only_when_the_daemon_does_not(ipmasq, bridge_masq):
    env = SubnetEnv(ENV.network, ENV.subnet, ENV.mtu, ipmasq)
    assert cni.build_delegate(conf(), env)["ipMasq"] is bridge_masq


@pytest.mark.parametrize("override, key, expected", [
    ({"hairpinMode": True}, "hairpinMode", True),
    ({"isDefaultGateway": False}, "isDefaultGateway", False),
    ({"bridge": "br-pods"}, "bridge", "br-pods"),
    ({"mtu": 1400}, "mtu", 1400),
    ({"ipMasq": False}, "ipMasq", False),
    ({"type": "ptp"}, "type", "ptp"),
])
def test_overrides_win(override, key, expected):
    delegate = cni.build_delegate(conf(delegate=override), ENV)
    assert delegate[key] == expected
    assert delegate["ipam"]["subnet"] == "10.244.3.0/24"


@pytest.mark.parametrize("ipam, expected", [
    ({"dataDir": "/elsewhere"}, {"type": "host-local", "subnet": "10.244.3.0/24",
                                 "routes": ROUTES, "dataDir": "/elsewhere"}),
    ({"routes": [{"dst": "0.0.0.0/0"}]}, {"type": "host-local", "subnet": "10.244.3.0/24",
                                          "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "/d/ipam"}),
    ({"rangeStart": "10.244.3.10"}, {"type": "host-local", "subnet": "10.244.3.0/24",
                                     "routes": ROUTES, "dataDir": "/d/ipam",
                                     "rangeStart": "10.244.3.10"}),
])
def test_ipam_is_merged_not_replaced(ipam, expected):
    assert cni.build_delegate(conf(dataDir="/d", delegate={"ipam": ipam}), ENV)["ipam"] == expected


@pytest.mark.parametrize("version", cni.SUPPORTED_VERSIONS)
def test_delegate_speaks_our_version(version):
    delegate = cni.build_delegate(cni.parse_netconf(json.dumps(dict(BASE, cniVersion=version))), ENV)
    assert delegate["cniVersion"] == version


def test_defaults_and_prev_result():
    c = conf(prevResult={"cniVersion": "1.0.0", "ips": []})
    assert (c.subnet_file, c.data_dir, c.delegate) == (cni.DEFAULT_SUBNET_FILE, cni.DEFAULT_DATA_DIR, {})
    assert c.prev_result == {"cniVersion": "1.0.0", "ips": []}


@pytest.mark.parametrize("raw, code", [
    (b"", cni.ERR_DECODE),
    (b"{not json", cni.ERR_DECODE),
    (b"\xff\xfe", cni.ERR_DECODE),
    (b"[1, 2]", cni.ERR_DECODE),
    (json.dumps({"name": "n", "type": "overlayd"}), cni.ERR_INVALID_CONFIG),
    (json.dumps(dict(BASE, cniVersion="0.2.0")), cni.ERR_INCOMPATIBLE_VERSION),
    (json.dumps(dict(BASE, cniVersion="2.0.0")), cni.ERR_INCOMPATIBLE_VERSION),
    (json.dumps({"cniVersion": "1.0.0", "type": "overlayd"}), cni.ERR_INVALID_CONFIG),
    (json.dumps({"cniVersion": "1.0.0", "name": "n"}), cni.ERR_INVALID_CONFIG),
    (json.dumps(dict(BASE, type="bridge")), cni.ERR_INVALID_CONFIG),
    (json.dumps(dict(BASE, name=7)), cni.ERR_INVALID_CONFIG),
    (json.dumps(dict(BASE, subnetFile=1)), cni.ERR_INVALID_CONFIG),
    (json.dumps(dict(BASE, dataDir=["/x"])), cni.ERR_INVALID_CONFIG),
    (json.dumps(dict(BASE, delegate="bridge")), cni.ERR_INVALID_CONFIG),
    (json.dumps(dict(BASE, delegate={"ipam": "host-local"})), cni.ERR_INVALID_CONFIG),
    (json.dumps(dict(BASE, delegate={"name": "other"})), cni.ERR_UNSUPPORTED_FIELD),
    (json.dumps(dict(BASE, delegate={"cniVersion": "0.3.1"})), cni.ERR_UNSUPPORTED_FIELD),
    (json.dumps(dict(BASE, prevResult=[])), cni.ERR_INVALID_CONFIG),
])
def test_bad_configs(raw, code):
    with pytest.raises(cni.CniError) as info:
        cni.parse_netconf(raw)
    assert info.value.code == code and info.value.msg


FULL_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc-1.2_3", "CNI_NETNS": "/var/run/netns/x",
            "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin::/usr/lib/cni"}


def test_env_parsed():
    assert cni.parse_env(FULL_ENV) == cni.Invocation(
        "ADD", "abc-1.2_3", "eth0", ("/opt/cni/bin", "/usr/lib/cni"))


@pytest.mark.parametrize("changes", [
    {"CNI_COMMAND": None},
    {"CNI_COMMAND": "GC"},
    {"CNI_CONTAINERID": None},
    {"CNI_CONTAINERID": "../../etc/passwd"},
    {"CNI_CONTAINERID": "-x"},
    {"CNI_CONTAINERID": "abc\n"},  # '$' matches before a final newline: the ID must match whole
    {"CNI_NETNS": None},
    {"CNI_IFNAME": ""},
    {"CNI_IFNAME": "a/b"},
    {"CNI_IFNAME": "x" * 16},
    {"CNI_IFNAME": ".."},
    {"CNI_PATH": None},
    {"CNI_COMMAND": "CHECK", "CNI_NETNS": None},
])
def test_bad_env_is_code_4(changes):
    env = {k: v for k, v in dict(FULL_ENV, **changes).items() if v is not None}
    with pytest.raises(cni.CniError) as info:
        cni.parse_env(env)
    assert info.value.code == cni.ERR_INVALID_ENV


def test_del_needs_neither_netns_nor_path():
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0"}
    assert cni.parse_env(env) == cni.Invocation("DEL", "c1", "eth0", ())


def test_error_json_shape():
    err = cni.CniError(cni.ERR_TRY_AGAIN_LATER, "subnet.env missing", "is overlayd running?")
    assert cni.error_result(err, "0.4.0") == {
        "cniVersion": "0.4.0", "code": 11, "msg": "subnet.env missing", "details": "is overlayd running?"}
    assert cni.error_result(cni.CniError(999, "boom"))["cniVersion"] == "1.0.0"


@pytest.mark.parametrize("raw, version", [
    (json.dumps(dict(BASE, cniVersion="0.3.1")), "0.3.1"),
    (json.dumps(dict(BASE, cniVersion="0.2.0")), "1.0.0"),
    (b"{garbage", "1.0.0"),
    (b"[]", "1.0.0"),
    (b"", "1.0.0"),
    (b"[" * 100_000, "1.0.0"),  # nested too deeply for the decoder
])
def test_errors_answer_in_the_callers_version(raw, version):
    assert cni.error_version(raw) == version


def test_saved_conf_path():
    assert cni.saved_conf_path("/var/lib/cni/overlayd", "abc", "eth0") == "/var/lib/cni/overlayd/abc-eth0.json"


def test_version_command_needs_no_config():
    code, out = cni.run({"CNI_COMMAND": "VERSION"}, io.BytesIO(b""))
    assert code == 0
    assert json.loads(out) == {"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]}


@pytest.mark.parametrize("environ, stdin, code", [
    ({}, json.dumps(BASE), cni.ERR_INVALID_ENV),
    ({"CNI_COMMAND": "NOPE"}, json.dumps(BASE), cni.ERR_INVALID_ENV),
    (FULL_ENV, b"{bad", cni.ERR_DECODE),
    # nested deeper than the decoder's recursion limit: a decoding failure, not "internal error"
    (FULL_ENV, b"[" * 100_000, cni.ERR_DECODE),
    (FULL_ENV, b'{"cniVersion": "1.0.0", "x": ' + b'{"a": ' * 100_000, cni.ERR_DECODE),
])
def test_run_turns_failures_into_error_json(environ, stdin, code):
    rc, out = cni.run(environ, io.BytesIO(stdin.encode() if isinstance(stdin, str) else stdin))
    assert rc == 1
    assert out.count(b"\n") == 1 and out.endswith(b"\n")
    result = json.loads(out)
    assert set(result) == {"cniVersion", "code", "msg", "details"} and result["code"] == code
    assert "\n" not in result["msg"] + result["details"]


def test_saved_config_nested_too_deeply_is_a_decoding_failure(tmp_path):
    path = tmp_path / "c1-eth0.json"
    path.write_bytes(b"[" * 100_000)
    with pytest.raises(cni.CniError) as info:
        cni.load_conf(str(path))
    assert info.value.code == cni.ERR_DECODE


NET6 = ipaddress.IPv6Network("fd00:10:244::/56")
SUB6 = ipaddress.IPv6Network("fd00:10:244:3::/64")
ROUTE6 = {"dst": "fd00:10:244::/56", "gw": "fd00:10:244:3::1"}


def test_dual_stack_delegate_has_a_range_and_a_route_per_family():
    env = SubnetEnv(ENV.network, ENV.subnet, ENV.mtu, False, NET6, SUB6)
    ipam = cni.build_delegate(conf(dataDir="/d"), env)["ipam"]
    # the first family in host-local's one-range shorthand (an ipam.rangeStart override keeps
    # applying to it), the second as an extra range set: host-local allocates one address of each
    assert ipam == {"type": "host-local", "subnet": "10.244.3.0/24",
                    "ranges": [[{"subnet": "fd00:10:244:3::/64"}]],
                    "routes": ROUTES + [ROUTE6], "dataDir": "/d/ipam"}


def test_ipv6_only_delegate():
    env = SubnetEnv(None, None, 1430, True, NET6, SUB6)
    delegate = cni.build_delegate(conf(dataDir="/d"), env)
    assert delegate["ipam"] == {"type": "host-local", "subnet": "fd00:10:244:3::/64",
                                "routes": [ROUTE6], "dataDir": "/d/ipam"}
    assert (delegate["isDefaultGateway"], delegate["mtu"], delegate["ipMasq"]) == (True, 1430, False)
