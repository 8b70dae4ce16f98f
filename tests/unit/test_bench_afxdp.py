"""The AF_XDP experiment's arithmetic and its arguments (pure: made-up rows, no namespaces)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from overlayd.lab import bench_afxdp


def row(way: str, size: int, send_us: float, recv_us: float) -> dict:
    return {"way": way, "size": size, "send_us": send_us, "recv_us": recv_us}


ROWS = [row("recv-sock", 64, 1.6, 0.8), row("recv-xdp", 64, 1.6, 0.4), row("send-sock", 64, 1.6, 0.8),
        row("send-xdp", 64, 1.0, 0.7),
        row("recv-sock", 1400, 1.9, 0.9), row("recv-xdp", 1400, 1.8, 0.4), row("send-sock", 1400, 1.8, 0.9),
        row("send-xdp", 1400, 1.4, 0.9)]


@pytest.mark.parametrize("engine_us, saved, at_most", [
    (5.0, 0.9, 1.22),  # send 1.8 -> 1.4, receive 0.9 -> 0.4, at the largest size
    (0.9, 0.9, None),  # nothing left: no bound
    (1.8, 0.9, 2.0),
])
def test_the_bound_uses_the_largest_size_and_both_directions(engine_us, saved, at_most):
    assert bench_afxdp.bound(ROWS, {"engine_us": engine_us}) == {"saved_us": saved, "at_most_x": at_most}


@pytest.mark.parametrize("sizes, error", [("64,x", "not a list of sizes"), ("8", "sizes go from 16 to 1472")])
def test_bad_sizes_are_one_line_errors(sizes, error):
    result = CliRunner().invoke(bench_afxdp.main, ["--sizes", sizes])
    assert result.exit_code == 2 and error in result.output and "Traceback" not in result.output
