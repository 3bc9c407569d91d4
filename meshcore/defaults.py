"""Defaults that more than one part of the mesh must agree on, each written once."""

from __future__ import annotations

from mesh.v1 import types_pb2

#: meshd's mTLS API (agents, meshctl, schedulers) and its TLS-only join port.
MESHD_PORT = 7443
JOIN_PORT = 7444
#: the agent's DNS responder; 127.0.0.77 leaves 127.0.0.53 to systemd-resolved.
DNS_ADDRESS = "127.0.0.77"
DNS_PORT = 53
#: WireGuard's registered port, for every node's listener and the security groups.
WIREGUARD_PORT = 51820

#: node states as people read them (`meshctl nodes`, metrics), by proto enum value.
NODE_STATE_NAMES = {
    types_pb2.NODE_STATE_UNSPECIFIED: "-",
    types_pb2.NODE_STATE_READY: "ready",
    types_pb2.NODE_STATE_UNREACHABLE: "unreachable",
    types_pb2.NODE_STATE_LEFT: "left",
}

#: the kinds of data-plane path between two nodes (meshagent/paths.py), in a node's PathReport.
PATH_KINDS = ("direct", "tunnel", "relay", "unreachable")
#: a WireGuard peer with no handshake for this long (after being configured that long) is down.
PATH_DOWN_AFTER_S = 180.0
