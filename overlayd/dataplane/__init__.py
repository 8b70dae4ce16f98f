"""The userspace data plane: moves packets between a tun/tap device and a UDP socket."""
