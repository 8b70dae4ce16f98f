"""scripts/bench's pure parts: parsing ping, /proc and iperf3 output, ratios, and a table
that fits 100 columns (the measuring itself needs root and runs in scripts/bench)."""

from __future__ import annotations

import os
import subprocess

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
    results = [result("kvx-default", 14.4, rounds=[14.4], retransmits=81, udp_pps=53000.0, udp_loss_pct=8.9,
                      rtt=[bench.Rtt(1, 77, 140), bench.Rtt(20, 40, 90), bench.Rtt(200, 33, 79)]),
               result("udp", 1.1, retransmits=123456, cpu_s_per_gb=7.25, idle_cpu_pct=0.42, engine_idle_cpu_pct=0.01,
                      udp_pps=41000.0, udp_loss_pct=60.1,
                      rtt=[bench.Rtt(1, 12480.5, 123456), bench.Rtt(20, 480, 1200), bench.Rtt(200, 210, 99999)]),
               result("udp-c", None, error="the C fast path is not built " * 5)]
    bench.add_ratios(results)
    meta = bench.meta(3, 5, "200M", "1.00 1.00 1.00")
    text = bench.table(results) + "\n" + bench.footer(meta)
    assert max(len(line) for line in text.splitlines()) <= 100, text
    assert "failed: the C fast path" in text
    assert "7.25" in text and "-" in text.splitlines()[1]  # a kernel path has no CPU figure
    assert "0.42" in text and "0.01" in text  # the daemons' idle CPU and their engines' share
    rtt_rows = [line for line in text.splitlines() if line.startswith(("kvx-default", "udp "))][2:]
    assert [row.split()[1:] for row in rtt_rows] == [
        ["77", "140", "40", "90", "33", "79"], ["12480", "123456", "480", "1200", "210", "99999"]]
    assert "1/s" in text and "20/s" in text and "200/s" in text


def test_an_ipv6_row_is_compared_with_its_ipv4_twin():
    results = [result("kvx-default", 10.0), result("kvx-tx-off", 2.0), result("udp-c", 4.0),
               result("udp-c-v6", 3.8), result("vxlan-user-c", None, error="failed"), result("vxlan-user-c-v6", 3.0)]
    bench.add_ratios(results)
    assert results[3].ratios == pytest.approx({"kvx-default": 0.38, "kvx-tx-off": 1.9, bench.IPV4_TWIN: 0.95})
    assert bench.IPV4_TWIN not in results[2].ratios  # an IPv4 row
    assert bench.IPV4_TWIN not in results[5].ratios  # its twin failed
    assert (bench.ipv4_twin("udp-c-v6"), bench.ipv4_twin("udp-c")) == ("udp-c", None)
    twins = {name: bench.ipv4_twin(name) for name, c in bench.CONFIGS.items() if c.version == 6}
    assert set(twins) >= {"udp-c-v6", "vxlan-user-c-v6"}
    for name, twin in twins.items():  # the same nodes, only the family differs
        assert bench.CONFIGS[twin]._replace(what="", version=6) == bench.CONFIGS[name]._replace(what=""), name
    text = bench.table(results) + "\n" + bench.footer(bench.meta(3, 5, "200M", "1.00 1.00 1.00"))
    assert max(len(line) for line in text.splitlines()) <= 100, text
    assert next(l for l in text.splitlines() if l.startswith("udp-c-v6 ")).split()[4] == "0.95"


def test_configs_are_a_plain_table():
    for name, config in bench.CONFIGS.items():
        assert isinstance(config.node, dict) and config.what, name
        assert config.tx_offload in (None, "on", "off"), name
    assert set(bench.REFERENCES) <= set(bench.CONFIGS)


def test_a_data_plane_in_a_child_process_is_counted():
    """The wireguard row's CPU is its overlayd's and its wireguard-go's (a child of it)."""
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert bench.with_children([os.getpid()])[0] == os.getpid()
        assert child.pid in bench.with_children([os.getpid()])
    finally:
        child.kill()
        child.wait()
    assert "wireguard" in bench.CONFIGS and bench.CONFIGS["wireguard"].backend == "wireguard"


def test_rtt_at_every_rate_is_bounded_in_count_and_time():
    assert [r.rate for r in bench.RTT_RATES] == [1, 20, 200]
    for r in bench.RTT_RATES:
        argv = bench.ping_argv("10.244.2.2", r)
        assert argv[argv.index("-c") + 1] == str(r.count) and 10 <= r.count <= 400
        assert float(argv[argv.index("-i") + 1]) == pytest.approx(1 / r.rate)
        deadline = int(argv[argv.index("-w") + 1])
        assert r.count / r.rate < deadline <= r.count / r.rate + 10, r
    assert sum(r.count / r.rate for r in bench.RTT_RATES) <= 30  # seconds of pings per row


def test_rtt_stats_are_the_median_and_the_99th_percentile():
    times = [float(t) for t in range(1, 101)]
    assert bench.rtt_stats(bench.RTT_RATES[1], times) == bench.Rtt(20, 50.5, 99.0)
    with pytest.raises(bench.LabError, match="3 of 150 echoes"):
        bench.rtt_stats(bench.RttRate(20, 150), [1.0, 2.0, 3.0])


def test_thread_cpu_sums_run_times_and_picks_the_engine_threads_by_name(tmp_path):
    for tid, comm, ns in ((10, "overlayd", 7), (11, "ovl-engine", 2), (12, "ovl-engine", 1), (13, "asyncio_0", 5)):
        (tmp_path / str(tid)).mkdir()
        (tmp_path / str(tid) / "comm").write_text(comm + "\n")
        (tmp_path / str(tid) / "schedstat").write_text(f"{ns * 10**8} 12345 67\n")
    (tmp_path / "14").mkdir()  # a thread that ended between the listing and the reads
    assert bench.thread_cpu(str(tmp_path), bench.ENGINE_THREAD) == pytest.approx(0.3)
    assert bench.thread_cpu(str(tmp_path)) == pytest.approx(1.5)


def test_idle_cpu_pct_is_per_daemon():
    assert bench.idle_pct(cpu_seconds=0.2, daemons=2, seconds=10) == pytest.approx(1.0)
