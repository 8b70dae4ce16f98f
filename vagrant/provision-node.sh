#!/usr/bin/env bash
# Provision a node: a Vagrant VM, or a node of the machines lab (scripts/lab up --machines); both
# see the checkout at /opt/overlayd/src (OVERLAYD_SRC says otherwise). Installs overlayd with
# scripts/install, writes /etc/default/overlayd (etcd, this node's address, then any further
# OVERLAYD_VAR=VALUE lines given) and installs and starts the shipped systemd/overlayd.service,
# as docs/operator-guide.md's install says.
#   provision-node.sh ETCD_ENDPOINTS NODE_IP [OVERLAYD_VAR=VALUE ...]
set -euo pipefail
ETCD_ENDPOINTS=$1 NODE_IP=$2
shift 2
SRC=${OVERLAYD_SRC:-/opt/overlayd/src}
"$SRC/scripts/install"
# The nodes don't need the etcd server Debian's package starts; only the etcd host runs one.
systemctl disable --now etcd 2>/dev/null || true
{
    echo "OVERLAYD_ETCD_ENDPOINTS=$ETCD_ENDPOINTS"
    echo "OVERLAYD_PUBLIC_IP=$NODE_IP"
    [ $# -eq 0 ] || printf '%s\n' "$@"
} > /etc/default/overlayd.new
mv /etc/default/overlayd.new /etc/default/overlayd
cp "$SRC/systemd/overlayd.service" /etc/systemd/system/overlayd.service
systemctl daemon-reload
# Type=notify: this returns once overlayd has sent READY=1 (lease, devices, routes, subnet.env).
systemctl enable --now overlayd
