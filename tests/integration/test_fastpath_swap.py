"""Peer-table swaps under traffic: a datagram the engine queued must never be sent through a table
that a swap freed (issue 16: out_main released the table before sendmmsg read the addresses in it).

The engine runs in a child (engine_swap_child.py) in a network namespace of its own, so a datagram
sent to a stale address stays on its loopback. The child's allocator makes a stale read visible
without a sanitizer: every routes array is mmapped (a fixed mmap threshold), so a freed one is
unmapped (EFAULT) or replaced by the next table (a wrong or no address), and freed heap memory is
overwritten (perturb). Under AddressSanitizer (scripts/test-sanitizers) the read is a
heap-use-after-free report and the child exits non-zero.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from overlayd.dataplane import fast
from tests.integration.test_fastpath_loop import ipv4

pytestmark = [pytest.mark.root, pytest.mark.skipif(not fast.available(), reason="the C fast path is not built")]

CHILD = Path(__file__).with_name("engine_swap_child.py")
FLOOD = 30000
PEERS = 2500  # a routes array of 8192 slots, ~300 KB: mmapped, as the review's 1,800+ peers were


def test_swapping_peer_tables_under_a_flood_sends_every_datagram_to_its_peer():
    packet = ipv4("10.1.0.5", "10.9.0.7")
    env = dict(os.environ, GLIBC_TUNABLES="glibc.malloc.mmap_threshold=65536:glibc.malloc.perturb=165")
    res = subprocess.run(["unshare", "--net", sys.executable, str(CHILD), packet.hex(), str(FLOOD), str(PEERS), "20"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr[-6000:]
    seen = json.loads(res.stdout)
    counts = seen["counters"]
    assert seen["swaps"] > 20, seen  # the tables did change under the flood
    assert counts["dev_rx_packets"] == FLOOD, seen
    assert counts.get("drop_no_lease", 0) > 0 and counts.get("tx_packets", 0) > 0, seen  # both tables were used
    assert seen["tx_errors"] == {} and "tx_dropped" not in counts, seen  # no EFAULT, no garbage address
    assert counts["tx_packets"] + counts["drop_no_lease"] == FLOOD, seen
    assert seen["received"] == {"127.0.0.2": counts["tx_packets"], "127.0.0.3": 0}, seen
