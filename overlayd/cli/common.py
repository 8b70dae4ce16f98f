"""What both commands share: the etcd flags, logging setup, and one-line errors."""

from __future__ import annotations

import functools
import logging
import sys

import click

from ..errors import OverlayError
from ..lease.model import DEFAULT_PREFIX

ENV_PREFIX = "OVERLAYD"
DEFAULT_ENDPOINTS = "http://127.0.0.1:2379"


def etcd_options(func):
    """``--etcd-endpoints`` and ``--etcd-prefix``, also from OVERLAYD_ETCD_* variables."""
    func = click.option(
        "--etcd-prefix", envvar=f"{ENV_PREFIX}_ETCD_PREFIX", default=DEFAULT_PREFIX,
        show_default=True, show_envvar=True,
        help="etcd key prefix: config at PREFIX/config, leases under PREFIX/subnets/.",
    )(func)
    func = click.option(
        "--etcd-endpoints", envvar=f"{ENV_PREFIX}_ETCD_ENDPOINTS", default=DEFAULT_ENDPOINTS,
        show_default=True, show_envvar=True,
        help="Comma-separated etcd client URLs; the next one is tried when one fails.",
    )(func)
    return func


def setup_logging(verbose: int, name: str) -> None:
    """Log lines as ``overlayd: LEVEL message`` on stderr (journald adds the time)."""
    level = logging.DEBUG if verbose > 0 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{name}: %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # gRPC and asyncio chatter is only useful with -vv.
    for noisy in ("aetcd", "asyncio", "pyroute2"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)


def one_line_errors(prog: str):
    """Turn an :class:`OverlayError` into ``prog: message`` on stderr and exit status 1."""
    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            except OverlayError as exc:
                click.echo(f"{prog}: error: {exc}", err=True)
                sys.exit(1)
        return wrapper
    return decorate
