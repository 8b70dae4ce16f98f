#!/usr/bin/env bash
# Provision the etcd VM: Debian's etcd listening on the private network, plus the network config.
set -euo pipefail
ETCD_IP=$1 BACKEND=$2
/opt/overlayd/src/scripts/install
mkdir -p /etc/systemd/system/etcd.service.d
sed "s|^Environment=ETCD_ADVERTISE_CLIENT_URLS=.*|Environment=ETCD_ADVERTISE_CLIENT_URLS=http://$ETCD_IP:2379|" \
  /opt/overlayd/src/systemd/etcd-listen.conf > /etc/systemd/system/etcd.service.d/listen.conf
systemctl daemon-reload
systemctl enable --now etcd
systemctl restart etcd
printf '{"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "%s"}}\n' "$BACKEND" \
  | overlayctl --etcd-endpoints "http://$ETCD_IP:2379" config set -
