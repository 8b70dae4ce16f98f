"""Why a packet was dropped, and the counters the data plane keeps.

A drop is a value, not an exception: the forwarding loop handles hundreds of
thousands of packets a second and must never unwind a stack for a bad one.
Each reason has its own counter (``drop_<reason>`` in :meth:`Counters.snapshot`).

The names below are the one registry of what a data plane counts: the Python
plane (:mod:`overlayd.dataplane.loop`) and the C engine count under these
names (tests/unit/test_fastpath_parity.py holds the engine's list,
``overlayd._fastpath.COUNTER_NAMES``, to it), and ``/metrics``
(:mod:`overlayd.health`) exports every one of them from the start, at 0, so
an alert on ``increase()`` sees the first burst. Counters of failed calls by
errno (``tx_error_<errno>``, ``dev_write_error_<errno>``) are open-ended and
appear with their first failure.
"""

from __future__ import annotations

import enum


class Drop(enum.Enum):
    """Every reason the data plane drops a packet."""

    TRUNCATED = "truncated"              # shorter than its headers say
    NOT_IPV4 = "not_ipv4"                # ARP or another ethertype/version; IPv6 where the node has no IPv6 pool
    BAD_IP_HEADER = "bad_ip_header"      # IHL < 5 or total length inconsistent; an IPv6 jumbogram
    NO_LEASE = "no_lease"                # outbound: no node leases the destination's subnet
    UNKNOWN_SENDER = "unknown_sender"    # inbound: the sender holds no lease
    WRONG_SOURCE_PORT = "wrong_source_port"  # inbound (UDP backend): outer source port is not our Port
    NOT_OUR_SUBNET = "not_our_subnet"    # inbound: inner destination outside our subnet
    TO_BROADCAST_ADDRESS = "to_broadcast_address"  # inbound: inner destination is our subnet's broadcast
    SPOOFED_SOURCE = "spoofed_source"    # inbound: inner source outside every subnet the sender leases
    WRONG_SOURCE_MAC = "wrong_source_mac"  # inbound VXLAN: inner Ethernet source is not the sender's VtepMAC
    BAD_VXLAN = "bad_vxlan"              # VXLAN header without the I flag
    WRONG_VNI = "wrong_vni"              # VXLAN for another network
    NOT_FOR_US = "not_for_us"            # inbound frame not addressed to our VTEP MAC
    TOO_BIG = "too_big"                  # outbound IPv6: over the tunnel MTU (answered: Packet Too Big)


#: ``<key>_packets`` and ``<key>_bytes`` counters -> (side, direction): the underlay is the UDP
#: socket to and from peers, the device the tun or tap; rx is what the data plane read there, tx what
#: it wrote.
TRAFFIC = {"rx": ("underlay", "rx"), "tx": ("underlay", "tx"),
           "dev_rx": ("device", "rx"), "dev_tx": ("device", "tx")}
#: counters of dropped packets -> their reason: one per :class:`Drop`, and a full send buffer
DROPS = {**{"drop_" + d.value: d.value for d in Drop}, "tx_dropped": "send_buffer_full"}
#: counters of failed device and socket reads (the failed writes are counted by errno: ERRNO_ERRORS)
ERRORS = ("dev_read_error", "sock_read_error")
#: prefixes of the counters of failed sends and device writes, followed by the errno's name
ERRNO_ERRORS = ("tx_error_", "dev_write_error_")
#: everything else a data plane counts
EVENTS = ("rx_superpackets", "dev_rx_superpackets", "dev_tx_superpackets", "tx_gso_sends", "rx_coalesced",
          "incompatible_peers")
#: every counter name with a fixed name, each from one of the groups above
KNOWN_COUNTERS = (*(f"{key}_{unit}" for key in TRAFFIC for unit in ("packets", "bytes")), *DROPS, *ERRORS,
                  *EVENTS)


class Counters:
    """Packet and byte counters; plain integers in a dict (single-threaded use)."""

    def __init__(self) -> None:
        self._c: dict[str, int] = {}

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name``."""
        self._c[name] = self._c.get(name, 0) + n

    def tx(self, nbytes: int) -> None:
        """One datagram sent to a peer."""
        self.count("tx_packets")
        self.count("tx_bytes", nbytes)

    def rx(self, nbytes: int) -> None:
        """One datagram received from the underlay."""
        self.count("rx_packets")
        self.count("rx_bytes", nbytes)

    def rx_dev(self, nbytes: int) -> None:
        """One packet read from the overlay device."""
        self.count("dev_rx_packets")
        self.count("dev_rx_bytes", nbytes)

    def tx_dev(self, nbytes: int) -> None:
        """One packet written to the overlay device."""
        self.count("dev_tx_packets")
        self.count("dev_tx_bytes", nbytes)

    def drop(self, reason: Drop) -> None:
        """One packet dropped for ``reason``."""
        self.count("drop_" + reason.value)

    def snapshot(self) -> dict[str, int]:
        """A copy of every counter that is not zero."""
        return dict(self._c)
