"""Services: stable virtual IPs in front of pods, load-balanced on every node (issue 22).

What kube-proxy does for Kubernetes, from etcd alone and on nftables:

* :mod:`.model` (pure): services, endpoints, their validation and etcd codec, the key layout;
* :mod:`.allocator` (pure): a free ClusterIP or NodePort, chosen at random;
* :mod:`.table` (pure): the node's view of services and endpoints, from listings and watch
  events (the lease watcher's resume rules);
* :mod:`.render` (pure): that view -> one nftables table of our own, and the smallest nft
  script that moves the kernel from one ruleset to the next;
* :mod:`.etcd`: the services and endpoints in etcd (atomic allocation, endpoints bound to
  their node's etcd lease);
* :mod:`.health` (pure policy + probes): the owning node checks its endpoints;
* :mod:`.proxy` (the I/O edge the daemon runs): watch, render, apply with ``nft -f``,
  repair drift, publish readiness, remove the table on cleanup.
"""
