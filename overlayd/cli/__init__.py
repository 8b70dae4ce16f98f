"""Command-line entry points: ``overlayd`` (the daemon) and ``overlayctl`` (the operator's tool)."""
