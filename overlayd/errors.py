"""Typed errors. Every failure a user can cause or fix is one of these, and the
CLI prints it as a single line (``overlayd: <message>``) instead of a traceback."""


class OverlayError(Exception):
    """Base class of every error overlayd raises on purpose."""


class ConfigError(OverlayError):
    """The cluster network config (or a flag) is invalid."""


class LeaseError(OverlayError):
    """A subnet lease cannot be acquired, renewed or decoded."""


class NetworkFullError(LeaseError):
    """Every subnet between SubnetMin and SubnetMax is leased."""


class StoreError(OverlayError):
    """The key-value store (etcd) failed or cannot be reached."""


class StoreRetryable(StoreError):
    """A transient store failure (etcd busy, a leader election, a timeout): retry with backoff.

    Which etcd errors are transient, which mean a lost lease (:class:`LeaseError`) and
    which are fatal (a plain :class:`StoreError`) is decided in one place:
    :func:`overlayd.lease.etcd.classify`.
    """


class StoreUnavailable(StoreRetryable):
    """The store did not answer (connection refused, timeout): wait until it does."""


class ServiceError(OverlayError):
    """A service or endpoint is invalid, unknown or already there (issue 22)."""


class ServiceRangeFull(ServiceError):
    """Every ClusterIP of the ServiceNetwork (or every port of the NodePortRange) is taken."""


class WatchReset(StoreError):
    """A watch cannot be resumed from its revision: re-list and start over."""


class TaskDied(OverlayError):
    """One of the daemon's long-running loops ended: the daemon exits for a restart."""


class PlumbingError(OverlayError):
    """A netlink, tun/tap or sysctl operation failed."""


class EncapError(OverlayError):
    """A packet cannot be framed or unframed."""
