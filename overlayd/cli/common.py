"""What both commands share: the etcd flags (endpoints, prefix, TLS, user), logging setup, and one-line errors."""

from __future__ import annotations

import datetime
import functools
import logging
import os
import sys
from typing import Mapping, TextIO

import click

from ..errors import ConfigError, OverlayError
from ..lease.etcd import EtcdCredentials, parse_endpoints
from ..lease.model import DEFAULT_PREFIX

ENV_PREFIX = "OVERLAYD"
DEFAULT_ENDPOINTS = "http://127.0.0.1:2379"


def etcd_options(func):
    """The etcd flags both commands share, also from OVERLAYD_ETCD_* variables.

    The command receives ``etcd_endpoints``, ``etcd_prefix`` and
    ``etcd_credentials`` (an :class:`EtcdCredentials`, not checked yet:
    :class:`EtcdStore` checks it, or :func:`check_etcd_flags` up front).
    """
    def option(name: str, **kwargs):
        envvar = f"{ENV_PREFIX}_{name.removeprefix('--').replace('-', '_').upper()}"
        return click.option(name, envvar=envvar, show_envvar=True, **kwargs)

    @functools.wraps(func)
    def wrapper(*args, etcd_cafile, etcd_certfile, etcd_keyfile, etcd_username, etcd_password, **kwargs):
        credentials = EtcdCredentials(etcd_cafile, etcd_certfile, etcd_keyfile, etcd_username, etcd_password)
        return func(*args, etcd_credentials=credentials, **kwargs)

    for decorate in reversed([
        option("--etcd-endpoints", default=DEFAULT_ENDPOINTS, show_default=True,
               help="Comma-separated etcd client URLs, all http:// or all https://; the next one "
                    "is tried when one fails."),
        option("--etcd-prefix", default=DEFAULT_PREFIX, show_default=True,
               help="etcd key prefix: config at PREFIX/config, leases under PREFIX/subnets/."),
        option("--etcd-cafile", metavar="FILE", help="PEM CA certificate that signed etcd's server "
                                                     "certificates (https endpoints; default: the system's roots)."),
        option("--etcd-certfile", metavar="FILE", help="PEM client certificate for etcd's --client-cert-auth."),
        option("--etcd-keyfile", metavar="FILE", help="PEM private key of --etcd-certfile."),
        option("--etcd-username", metavar="NAME", help="etcd user (etcd's auth enabled)."),
        option("--etcd-password", metavar="PASSWORD",
               help="Password of --etcd-username (prefer the environment variable: a flag shows in ps)."),
    ]):
        wrapper = decorate(wrapper)
    return wrapper


def check_etcd_flags(endpoints: str, credentials: EtcdCredentials) -> None:
    """The etcd flags as click usage errors (exit status 2), before anything starts."""
    try:
        tls, _ = parse_endpoints(endpoints)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--etcd-endpoints") from None
    try:
        credentials.check(tls)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


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


def syslog_priority(levelno: int) -> int:
    """The sd-daemon(3) priority of a Python log level: 2 critical, 3 error, 4 warning, 6 info,
    7 debug. Pure."""
    for floor, priority in ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6)):
        if levelno >= floor:
            return priority
    return 7


class _JournalFormatter(logging.Formatter):
    """``<PRIORITY>LEVEL message`` on every line of a record (a traceback's too): journald takes
    the prefix as the entry's priority (``journalctl -p warning``) and adds time and name itself."""

    def format(self, record):
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def log_formatter(name: str, stream: TextIO, environ: Mapping[str, str] = os.environ) -> logging.Formatter:
    """``TIME name: LEVEL message``; under journald ``<PRIORITY>LEVEL message`` (it keeps the
    time and the program's name itself, and files the line under PRIORITY)."""
    if under_journald(stream, environ):
        return _JournalFormatter("%(levelname)s %(message)s")
    return _TimestampFormatter(f"%(asctime)s {name}: %(levelname)s %(message)s")


LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def setup_logging(verbose: int, name: str, level: str = "info") -> None:
    """Log lines on stderr at ``level`` (a :data:`LOG_LEVELS` name) and above, formatted by
    :func:`log_formatter`. ``verbose`` is the deprecated ``-v`` count: 1 means debug, 2 also
    the debug lines of gRPC/aetcd, asyncio and pyroute2 (else only their warnings)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(log_formatter(name, sys.stderr))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose > 0 else LOG_LEVELS[level])
    for noisy in ("aetcd", "asyncio", "grpc", "pyroute2"):
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
