"""etcd errors in plain words, not gRPC's text (issue 21): what an operator reads in the log
and in overlayctl's one-line errors."""

from __future__ import annotations

import pytest

from overlayd.errors import StoreUnavailable
from overlayd.lab.etcd import free_port
from overlayd.lease.etcd import EtcdStore, plain_words

GRPC = "failed to connect to all addresses; last error: "


@pytest.mark.parametrize("text, words", [
    # measured here (grpcio, etcd 3.4): a closed port, a SIGSTOPed etcd (asyncio's timeout has no text)
    (GRPC + "UNKNOWN: ipv4:198.18.0.1:2379: Failed to connect to remote host: Connection refused",
     "connection refused"),
    ("TimeoutError", "timed out"),
    ("Deadline Exceeded", "timed out"),
    (GRPC + "UNKNOWN: ipv4:127.0.0.1:36161: connection attempt timed out before receiving SETTINGS frame",
     "timed out"),  # a SIGSTOPed etcd, while connecting
    (GRPC + "UNKNOWN: ipv4:198.18.0.1:2379: Failed to connect to remote host: Timeout occurred: FD Shutdown",
     "timed out"),
    (GRPC + "UNAVAILABLE: ipv4:198.18.0.1:2379: Failed to connect to remote host: No route to host",
     "no route to host"),
    (GRPC + "UNKNOWN: ipv4:198.18.0.1:2379: Failed to connect to remote host: Network is unreachable",
     "network unreachable"),
    ("DNS resolution failed for etcd.invalid:2379: C-ares status is not ARES_SUCCESS qtype=A "
     "name=etcd.invalid is_balancer=0: Domain name not found", "cannot resolve the host name"),
    ("Connection reset by peer", "connection reset"),
    ("Socket closed", "connection closed"),
    ("Ssl handshake failed: SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:"
     "CERTIFICATE_VERIFY_FAILED", "TLS: etcd's certificate is not signed by --etcd-cafile"),
    ("Handshake failed with fatal error SSL_ERROR_SSL: TSI_PROTOCOL_FAILURE", "TLS handshake failed"),
    ("etcdserver: permission denied", "permission denied"),
    ("etcdserver: too many requests", "too many requests"),
    ("etcdserver: no leader", "no leader elected"),
    ("etcdserver: request is too large", "request is too large"),  # anything else: the preamble goes
    (GRPC + "UNKNOWN: ipv4:198.18.0.1:2379: Something new", "something new"),
])
def test_grpc_text_in_plain_words(text, words):
    assert plain_words(text) == words


async def test_an_unreachable_endpoint_is_named_with_the_reason():
    """One line an operator can act on: which endpoint, and why (was 'etcd unreachable (URL:
    failed to connect to all addresses; last error: UNKNOWN: ipv4:...)')."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    store = EtcdStore(endpoint, "/x", timeout=2)
    try:
        with pytest.raises(StoreUnavailable) as err:
            await store.probe()
    finally:
        await store.close()
    assert str(err.value) == f"etcd unreachable at {endpoint}: connection refused"
