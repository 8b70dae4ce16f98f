"""Subnet leases: the model, the pure allocator and watcher, the stores, the manager."""
