"""Pods joining services through the CNI plugin (issue 22): the config/CNI_ARGS parsing, the
spool files, and the daemon's plan from them. No root."""

import ipaddress
import json

import pytest

from overlayd import cni
from overlayd.service import spool
from overlayd.service.model import Endpoint

A = ipaddress.IPv4Address
HERE = ipaddress.IPv4Network("10.244.3.0/24")
BASE = {"cniVersion": "1.0.0", "name": "overlayd", "type": "overlayd"}


@pytest.mark.parametrize("extra, services", [
    ({}, ()),
    ({"services": ["web", "api"]}, ("web", "api")),
    ({"runtimeConfig": {"services": ["web"]}}, ("web",)),
    ({"services": ["web"], "runtimeConfig": {"services": ["api", "web"]}}, ("web", "api")),
])
def test_services_from_the_network_and_runtime_config(extra, services):
    assert cni.parse_netconf(json.dumps({**BASE, **extra})).services == services


@pytest.mark.parametrize("extra, message", [
    ({"services": "web"}, None),  # a string is a comma-separated list, as in CNI_ARGS
    ({"services": [1]}, "network config: services: services must be a list of service names"),
    ({"services": ["Web"]}, "network config: services: service name 'Web'"),
    ({"runtimeConfig": []}, "network config: runtimeConfig must be an object"),
    ({"runtimeConfig": {"services": ["a_b"]}}, "network config: runtimeConfig.services: service name 'a_b'"),
])
def test_bad_services_are_invalid_config(extra, message):
    if message is None:
        assert cni.parse_netconf(json.dumps({**BASE, **extra})).services == ("web",)
        return
    with pytest.raises(cni.CniError) as err:
        cni.parse_netconf(json.dumps({**BASE, **extra}))
    assert err.value.code == cni.ERR_INVALID_CONFIG and err.value.msg.startswith(message), err.value.msg


@pytest.mark.parametrize("args, services", [
    ("", ()),
    ("IgnoreUnknown=1;K8S_POD_NAME=x", ()),
    ("IgnoreUnknown=1;OVERLAYD_SERVICES=web,api", ("web", "api")),
    ("OVERLAYD_SERVICES=", ()),
])
def test_services_from_cni_args(args, services):
    assert cni.args_services(args) == services


@pytest.mark.parametrize("result, ip", [
    ({"ips": [{"address": "10.244.3.5/24"}]}, "10.244.3.5"),
    ({"ips": [{"address": "fd00::5/64"}, {"address": "10.244.3.5/24", "version": "4"}]}, "10.244.3.5"),
])
def test_pod_address_from_the_delegate_result(result, ip):
    assert cni.pod_ipv4(result) == A(ip)


@pytest.mark.parametrize("result", [{}, {"ips": []}, {"ips": [{"address": "fd00::5/64"}]}, {"ips": [{"x": 1}]}])
def test_no_pod_address_is_an_error(result):
    with pytest.raises(cni.CniError, match="no IPv4 address"):
        cni.pod_ipv4(result)


def test_spool_files_round_trip_and_bad_ones_are_named(tmp_path):
    spool.write_entry(spool.entry_path(str(tmp_path), "c1", "eth0"), spool.Entry(A("10.244.3.5"), ("web",)))
    (tmp_path / "c2-eth0.json").write_text('{"ip": "nope", "services": []}')
    (tmp_path / "c3-eth0.json.tmp").write_text("half")  # not an entry
    entries, problems = spool.read_entries(str(tmp_path))
    assert entries == [spool.Entry(A("10.244.3.5"), ("web",))]
    assert len(problems) == 1 and problems[0].startswith(str(tmp_path / "c2-eth0.json"))
    spool.remove_entry(spool.entry_path(str(tmp_path), "c1", "eth0"))
    spool.remove_entry(spool.entry_path(str(tmp_path), "c1", "eth0"))  # gone already: fine
    assert spool.read_entries(str(tmp_path / "none")) == ([], [])


def ep(service, ip, source="cni", port=None, node=HERE):
    return Endpoint(service, node, A(ip), port, source=source)


@pytest.mark.parametrize("entries, published, add, delete", [
    # a new pod joins two services, one of which does not exist (yet)
    ([spool.Entry(A("10.244.3.5"), ("web", "nope"))], [], [("web", "10.244.3.5")], []),
    # already published (by us, or by hand): nothing to do
    ([spool.Entry(A("10.244.3.5"), ("web",))], [ep("web", "10.244.3.5")], [], []),
    ([spool.Entry(A("10.244.3.5"), ("web",))], [ep("web", "10.244.3.5", source=None)], [], []),
    # the pod went: its endpoint goes; a hand-made one and another node's stay
    ([], [ep("web", "10.244.3.5"), ep("web", "10.244.3.6", source=None),
          ep("web", "10.244.4.5", node=ipaddress.IPv4Network("10.244.4.0/24"))], [], [("web", "10.244.3.5")]),
    # a pod of another node's subnet in our spool (a stale file): not ours to publish
    ([spool.Entry(A("10.244.4.5"), ("web",))], [], [], []),
])
def test_plan(entries, published, add, delete):
    todo = spool.plan(entries, published, ["web", "api"], HERE)
    assert [(s, str(ip)) for s, ip in todo.add] == add
    assert [(e.service, str(e.ip)) for e in todo.delete] == delete
