"""scripts/bench-control --services (issue 22), pure parts: the SxE spec, where the simulated
endpoints live, and the printed row."""

import ipaddress

import click
import pytest

from overlayd.lab.bench_control import ServiceRow, parse_services_spec, services_table
from overlayd.lab.simservices import endpoint_ip, service_name


def test_services_spec():
    assert parse_services_spec("1000x10") == (1000, 10)
    assert parse_services_spec(" 5x1 ") == (5, 1)
    for bad in ("1000", "1000x0", "x10", "6000x10", "10x101", "ax b"):
        with pytest.raises(click.BadParameter, match="SERVICESxENDPOINTS"):
            parse_services_spec(bad)


def test_simulated_endpoints_are_distinct_and_spread_over_the_owners():
    subnets = [ipaddress.IPv4Network(f"10.244.{i}.0/24") for i in range(50)]
    placed = [endpoint_ip(subnets, s, e, 10) for s in range(1000) for e in range(10)]
    assert len({ip for _, ip in placed}) == 10_000
    assert all(ip in subnets[owner] and ip != subnets[owner].network_address + 1 for owner, ip in placed)
    assert {owner for owner, _ in placed} == set(range(50))
    assert endpoint_ip(subnets, 0, 0, 10) == (0, ipaddress.IPv4Address("10.244.0.2"))
    with pytest.raises(ValueError, match="too small"):
        endpoint_ip(subnets[:1], 300, 0, 1)
    assert service_name(0) == "svc-1"


def test_the_services_row_reads_as_one_block():
    row = ServiceRow(1000, 10000, write_s=20.5, all_in_s=1.25, add_s=[0.03, 0.01, 0.02], remove_s=[0.02],
                     startup_s=6.1, nft_apply_ms=3200, rss_mb_idle=59.0, rss_mb=120.4)
    text = services_table(row)
    assert "services: 1000 x 10 endpoints (10000), 2 real daemons" in text
    assert "one endpoint added, in every kernel: median 20 ms, max 30 ms (3 changes)" in text
    assert "('nft -f' 3200 ms of it)" in text and "59.0 MB without services, 120.4 MB with them" in text
    failed = services_table(ServiceRow(10, 10, error="boom"))
    assert failed.endswith("FAILED: boom") and "median" not in failed and "- s" in failed


def test_the_cluster_ip_table_compares_with_the_pod_ip():
    from overlayd.lab.bench import ServiceResult
    from overlayd.lab.bench import services_table as vip_table

    r = ServiceResult(gbits={"pod": [10.0, 12.0, 11.0], "vip": [9.9, 10.45, 11.0]},
                      conns={"pod": [2000.0, 2100.0, 1900.0], "vip": [1800.0, 1900.0, 2000.0]}, failed_conns=2)
    lines = vip_table(r, 3, 5).splitlines()
    assert lines[1].split()[-2:] == ["11.00", "2000"] and lines[2].split()[-2:] == ["10.45", "1900"]
    assert lines[3].split() == ["x", "pod", "0.95", "0.95"]
    assert "(failed: 2)" in vip_table(r, 3, 5)
    empty = vip_table(ServiceResult(error="no lab"), 3, 5).splitlines()
    assert empty[3].split() == ["x", "pod", "-", "-"] and empty[-1] == "FAILED: no lab"
