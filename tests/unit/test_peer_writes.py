"""Peers' kernel entries as iproute2 batch lines (overlayd.plumbing.peerwrites): what is written
against a snapshot of the device, in the words of the drift log, and what iproute2 says failed."""

from __future__ import annotations

import ipaddress

import pytest

from overlayd.plumbing.netlink import DeviceState
from overlayd.plumbing.peerwrites import Writes, failed_lines

net, addr = ipaddress.ip_network, ipaddress.ip_address
SUBNET, SUBNET6 = net("10.244.3.8/29"), net("fd00:10:244:3::/64")
MAC = "0e:51:00:00:00:0A"
SNAPSHOT = DeviceState(7, routes={SUBNET: ("10.244.3.8", True), SUBNET6: ("fd00:10:244:3::", True)},
                       neighbours={"10.244.3.8": MAC.lower()}, fdb={(MAC.lower(), "198.19.0.10")})
EMPTY = DeviceState(7, routes={}, neighbours={}, fdb=set())
OTHER = DeviceState(7, routes={SUBNET: ("10.244.3.9", True)}, neighbours={"10.244.3.8": "0e:51:00:00:00:0b"},
                    fdb={(MAC.lower(), "198.19.0.11")})


def lines(write, state):
    writes = Writes()
    write(writes, state)
    return [(l.tag, l.text, l.change) for l in writes.ip + writes.bridge]


ROUTE = lambda w, s: w.route("p", SUBNET, "flannel.1", addr("10.244.3.8"), onlink=True, state=s)  # noqa: E731
ROUTE6 = lambda w, s: w.route("p", SUBNET6, "flannel-v6.1", addr("fd00:10:244:3::"), onlink=True, state=s)  # noqa: E731
DIRECT = lambda w, s: w.route("p", SUBNET, "eth0", addr("198.19.0.10"), state=s)  # noqa: E731
NEIGH = lambda w, s: w.neighbour("p", addr("10.244.3.8"), MAC, "flannel.1", state=s)  # noqa: E731
FDB = lambda w, s: w.fdb("p", MAC, addr("198.19.0.10"), "flannel.1", state=s)  # noqa: E731


@pytest.mark.parametrize("write, state, expected", [
    (ROUTE, SNAPSHOT, []),
    (ROUTE, None, [("p", "route replace 10.244.3.8/29 via 10.244.3.8 dev flannel.1 onlink proto static",
                    "route 10.244.3.8/29 via 10.244.3.8 dev flannel.1 onlink was missing")]),
    (ROUTE, EMPTY, [("p", "route replace 10.244.3.8/29 via 10.244.3.8 dev flannel.1 onlink proto static",
                     "route 10.244.3.8/29 via 10.244.3.8 dev flannel.1 onlink was missing")]),
    (ROUTE, OTHER, [("p", "route replace 10.244.3.8/29 via 10.244.3.8 dev flannel.1 onlink proto static",
                     "route 10.244.3.8/29 via 10.244.3.8 dev flannel.1 onlink was different")]),
    (ROUTE6, SNAPSHOT, []),
    (ROUTE6, EMPTY, [("p", "route replace fd00:10:244:3::/64 via fd00:10:244:3:: dev flannel-v6.1 onlink proto static",
                      "route fd00:10:244:3::/64 via fd00:10:244:3:: dev flannel-v6.1 onlink was missing")]),
    (DIRECT, SNAPSHOT, [("p", "route replace 10.244.3.8/29 via 198.19.0.10 dev eth0 proto static",
                         "route 10.244.3.8/29 via 198.19.0.10 dev eth0 was different")]),
    (NEIGH, SNAPSHOT, []),  # the kernel shows MACs in lower case
    (NEIGH, EMPTY, [("p", "neigh replace 10.244.3.8 lladdr 0e:51:00:00:00:0A dev flannel.1 nud permanent",
                     "neighbour 10.244.3.8 lladdr 0e:51:00:00:00:0A dev flannel.1 was missing")]),
    (NEIGH, OTHER, [("p", "neigh replace 10.244.3.8 lladdr 0e:51:00:00:00:0A dev flannel.1 nud permanent",
                     "neighbour 10.244.3.8 lladdr 0e:51:00:00:00:0A dev flannel.1 was different")]),
    (FDB, SNAPSHOT, []),
    (FDB, OTHER, [("p", "fdb replace 0e:51:00:00:00:0A dev flannel.1 dst 198.19.0.10 self permanent",
                   "FDB 0e:51:00:00:00:0A dst 198.19.0.10 dev flannel.1 was missing")]),
])
def test_an_entry_is_written_unless_the_snapshot_has_it_so(write, state, expected):
    assert lines(write, state) == expected


def test_routes_and_neighbours_go_to_ip_fdb_entries_to_bridge():
    writes = Writes()
    for write in (FDB, NEIGH, ROUTE):
        write(writes, None)
    assert [l.text.split()[0] for l in writes.ip] == ["neigh", "route"]
    assert [l.text.split()[0] for l in writes.bridge] == ["fdb"]
    assert len(writes) == 3


@pytest.mark.parametrize("stderr, expected", [
    ("", {}),
    # iproute2-6.1 ip -force -batch -, as measured
    ("Error: Nexthop has invalid gateway.\nCommand failed -:1\nCannot find device \"nosuch\"\nCommand failed -:2\n"
     "RTNETLINK answers: No such process\nCommand failed -:4\n",
     {1: "Nexthop has invalid gateway", 2: 'Cannot find device "nosuch"', 4: "No such process"}),
    # bridge -force -batch -
    ("RTNETLINK answers: No such file or directory\nCommand failed -:2\n", {2: "No such file or directory"}),
    # a warning that no failure follows is not one; a failure with nothing said before it still is
    ("Warning: something minor\nCommand failed -:9\n", {9: "Warning: something minor"}),
    ("Command failed -:3\n", {3: "failed"}),
])
def test_failed_lines_are_read_from_iproute2s_stderr(stderr, expected):
    assert failed_lines(stderr) == expected


def test_a_device_dump_parses_as_iproute2_prints_it():
    """DeviceDump.state(): the snapshot from iproute2-6.1's JSON (samples as printed here): routes at the
    family's default metric only, neighbours with an lladdr, permanent FDB entries with a dst."""
    from overlayd.plumbing.netlink import DeviceDump

    dump = DeviceDump(
        7,
        routes=(b'[{"dst":"10.244.3.8/29","gateway":"10.244.3.8","flags":["onlink"]},'
                b'{"dst":"default","gateway":"10.244.0.1","flags":[]},'
                b'{"dst":"10.244.9.0/24","metric":5,"flags":[]},{"type":"unreachable","dst":"10.244.8.0/24","flags":[]}]',
                b'[{"dst":"fd00:10:244:3::/64","gateway":"fd00:10:244:3::","metric":1024,"flags":["onlink"]},'
                b'{"dst":"fe80::/64","protocol":"kernel","metric":256,"flags":[]}]'),
        neighbours=(b'[{"dst":"10.244.3.8","lladdr":"0e:51:00:00:00:0a","state":["PERMANENT"]},'
                    b'{"dst":"10.244.4.8","state":["FAILED"]}]', b"[]"),
        fdb=b'[{"mac":"0e:51:00:00:00:0a","dst":"198.19.0.10","flags":["self"],"state":"permanent"},'
            b'{"mac":"00:00:00:00:00:00","dst":"198.19.0.12","flags":["self"],"state":"stale"},'
            b'{"mac":"33:33:00:00:00:01","flags":["self"],"state":"permanent"}]')
    state = dump.state()
    assert state.index == 7
    assert state.routes == {SUBNET: ("10.244.3.8", True), net("0.0.0.0/0"): ("10.244.0.1", False),
                            SUBNET6: ("fd00:10:244:3::", True)}
    assert state.neighbours == {"10.244.3.8": "0e:51:00:00:00:0a"}
    assert state.fdb == {("0e:51:00:00:00:0a", "198.19.0.10")}
    assert dump == DeviceDump(7, dump.routes, dump.neighbours, dump.fdb) and hash(dump) == hash(
        DeviceDump(7, dump.routes, dump.neighbours, dump.fdb))  # what a pass compares with the last one
