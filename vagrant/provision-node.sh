#!/usr/bin/env bash
# Provision a node VM: install overlayd, point it at etcd and the private interface, start it.
set -euo pipefail
ETCD_IP=$1 NODE_IP=$2
/opt/overlayd/src/scripts/install
# The nodes don't need the etcd server Debian's package starts; only the etcd VM runs one.
systemctl disable --now etcd 2>/dev/null || true
cat > /etc/default/overlayd <<CONF
OVERLAYD_ETCD_ENDPOINTS=http://$ETCD_IP:2379
OVERLAYD_PUBLIC_IP=$NODE_IP
CONF
cp /opt/overlayd/src/systemd/overlayd.service /etc/systemd/system/overlayd.service
systemctl daemon-reload
systemctl enable --now overlayd
