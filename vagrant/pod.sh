#!/usr/bin/env bash
# Make a pod on this node as a container runtime would: a network namespace NAME attached through
# the node's CNI config (scripts/install's /etc/cni/net.d/10-overlayd.conflist, its first plugin:
# overlayd's); prints the pod's IPv4 address. Used by scripts/vagrant-lab's ping matrix.
#   pod.sh NAME
set -euo pipefail
NAME=$1
CONFLIST=/etc/cni/net.d/10-overlayd.conflist
PYTHON=/opt/overlayd/venv/bin/python
ip netns add "$NAME"
conf=$("$PYTHON" -c 'import json, sys
c = json.load(open(sys.argv[1]))
print(json.dumps({"cniVersion": c["cniVersion"], "name": c["name"], **c["plugins"][0]}))' "$CONFLIST")
result=$(CNI_COMMAND=ADD CNI_CONTAINERID="$NAME" CNI_NETNS="/var/run/netns/$NAME" CNI_IFNAME=eth0 \
         CNI_PATH=/opt/cni/bin /opt/cni/bin/overlayd <<< "$conf")
"$PYTHON" -c 'import ipaddress, json, sys
ips = [ipaddress.ip_interface(each["address"]).ip for each in json.load(sys.stdin)["ips"]]
print(next(str(ip) for ip in ips if ip.version == 4))' <<< "$result"
