"""What both commands share: the etcd flags, logging setup, and one-line errors."""

from __future__ import annotations

import datetime
import functools
import logging
import os
import sys
from typing import Mapping, TextIO

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


def under_journald(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``stream`` is connected to journald: systemd sets ``JOURNAL_STREAM=DEV:INODE``
    for it, and a child that redirected its stderr elsewhere inherits the variable, so the
    device and inode are compared too (systemd.exec(5))."""
    try:
        dev, ino = (int(part) for part in environ["JOURNAL_STREAM"].split(":"))
        st = os.fstat(stream.fileno())
    except (KeyError, ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class _TimestampFormatter(logging.Formatter):
    """Local time with milliseconds and UTC offset: ``2026-11-23T10:04:05.123+01:00``."""

    def formatTime(self, record, datefmt=None):
        return datetime.datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds")


def log_formatter(name: str, stream: TextIO, environ: Mapping[str, str] = os.environ) -> logging.Formatter:
    """``TIME name: LEVEL message``, without TIME under journald (it keeps its own)."""
    if under_journald(stream, environ):
        return logging.Formatter(f"{name}: %(levelname)s %(message)s")
    return _TimestampFormatter(f"%(asctime)s {name}: %(levelname)s %(message)s")


def setup_logging(verbose: int, name: str) -> None:
    """Log lines as ``TIME overlayd: LEVEL message`` on stderr (no TIME under journald)."""
    level = logging.DEBUG if verbose > 0 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(log_formatter(name, sys.stderr))
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
