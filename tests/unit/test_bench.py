"""scripts/bench's pure parts: parsing ping, /proc and iperf3 output, ratios, and a table
that fits 100 columns (the measuring itself needs root and runs in scripts/bench)."""

from __future__ import annotations

import os

import pytest

from overlayd.lab import bench

PING = """PING 10.244.2.2 (10.244.2.2) 56(84) bytes of data.
64 bytes from 10.244.2.2: icmp_seq=1 ttl=62 time=0.045 ms
64 bytes from 10.244.2.2: icmp_seq=2 ttl=62 time=1.20 ms
64 bytes from 10.244.2.2: icmp_seq=3 ttl=62 time=12 ms

--- 10.244.2.2 ping statistics ---
3 packets transmitted, 3 received, 0% packet loss, time 11ms
rtt min/avg/max/mdev = 0.045/4.415/12.000/5.400 ms
"""


def test_ping_times_us():
    assert bench.ping_times_us(PING) == pytest.approx([45.0, 1200.0, 12000.0])
    assert bench.ping_times_us("From 10.244.2.1 icmp_seq=1 Destination Host Unreachable") == []


@pytest.mark.parametrize("values, q, expected", [
    ([3, 1, 2], 0.5, 2),
    (list(range(1, 201)), 0.99, 198),
    (list(range(1, 101)), 0.99, 99),
    ([7], 0.99, 7),
    ([1, 2], 0.0, 1),
    ([1, 2], 1.0, 2),
])
def test_percentile_nearest_rank(values, q, expected):
    assert bench.percentile(values, q) == expected


def test_cpu_seconds_reads_utime_and_stime_past_a_name_with_spaces_and_parens():
    tick = os.sysconf("SC_CLK_TCK")
    stat = f"1234 (over (d) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 {3 * tick} {2 * tick} 0 0 20 0 3 0 5"
    assert bench.cpu_seconds(stat) == pytest.approx(5.0)


def test_udp_result_counts_what_arrived():
    report = {"end": {"sum": {"packets": 1000, "lost_packets": 100, "lost_percent": 10.0, "seconds": 2.0}}}
    assert bench.udp_result(report) == (450.0, 10.0)


def result(name, gbits, **kw):
    return bench.Result(name, bench.CONFIGS[name].what, gbits, **kw)


def test_ratios_to_both_references_where_measured():
    results = [result("kvx-default", 10.0), result("kvx-tx-off", 2.0), result("udp-c", 4.0),
               result("udp", None, error="failed")]
    bench.add_ratios(results)
    assert results[2].ratios == {"kvx-default": 0.4, "kvx-tx-off": 2.0}
    assert results[0].ratios["kvx-default"] == 1.0
    assert results[3].ratios == {}


def test_table_and_footer_fit_100_columns():
    results = [result("kvx-default", 14.4, rounds=[14.4], retransmits=81, rtt_median_us=55, rtt_p99_us=89,
                      udp_pps=53000.0, udp_loss_pct=8.9),
               result("udp", 1.1, retransmits=123456, rtt_median_us=480.5, rtt_p99_us=1200, cpu_s_per_gb=7.25,
                      udp_pps=41000.0, udp_loss_pct=60.1),
               result("udp-c", None, error="the C fast path is not built " * 5)]
    bench.add_ratios(results)
    meta = bench.meta(3, 5, "200M", "1.00 1.00 1.00")
    text = bench.table(results) + "\n" + bench.footer(meta)
    assert max(len(line) for line in text.splitlines()) <= 100, text
    assert "failed: the C fast path" in text
    assert "7.25" in text and "-" in text.splitlines()[1]  # a kernel path has no CPU figure


def test_configs_are_a_plain_table():
    for name, config in bench.CONFIGS.items():
        assert isinstance(config.node, dict) and config.what, name
        assert config.tx_offload in (None, "on", "off"), name
    assert set(bench.REFERENCES) <= set(bench.CONFIGS)
