"""I/O at the edge: netlink (pyroute2), tun/tap devices, sysctls and nftables.

Every ``ensure_*`` call is idempotent: right state is kept, wrong state is
fixed, so the daemon can re-run its whole setup after a restart.
"""
