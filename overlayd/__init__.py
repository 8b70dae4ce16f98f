"""overlayd: a flannel-style overlay network for container hosts."""

__version__ = "0.1.0"
