"""Every bound on what enters the mesh, in one place.

DESIGN.md: "Every input is bounded at the door." Each value below is enforced
where the input enters (meshd's gRPC interceptor and domain checks, the
agent's gossip adapter, the local API), with an error naming the limit. The
values are chosen so that anything accepted at one door fits through every
later one: a service meshd stores always fits one signed gossip record in one
datagram, and node facts built from accepted labels always fit the gossip
facts field. `tests/security/test_limits_fit.py` checks these sums.

Change a value here and nowhere else.
"""

from __future__ import annotations

KiB = 1024
MiB = 1024 * KiB

# -- gRPC (meshd) --------------------------------------------------------------
#: transport cap on any request meshd reads (grpc.max_receive_message_length)
GRPC_MAX_REQUEST_BYTES = 64 * KiB
#: per-method caps on the serialized request, checked before the servicer runs;
#: methods not named here get DEFAULT_REQUEST_BYTES
REQUEST_BYTES: dict[str, int] = {
    "Join": 16 * KiB,            # facts (bounded below) and a CSR
    "Renew": 16 * KiB,           # facts and, near expiry, a CSR
    "IssueAdminCert": 8 * KiB,   # a CSR
    "Expose": 2 * KiB,           # one service (MAX_SERVICE_BYTES plus envelope)
    "CreateToken": 4 * KiB,      # labels (bounded below) and a description
    "Tunnel": 33 * KiB,          # one message of a tunnel: TUNNEL_CHUNK_BYTES and the envelope
}
DEFAULT_REQUEST_BYTES = 1 * KiB
#: concurrent HTTP/2 streams per client connection (an agent uses two watches and a few calls)
GRPC_MAX_CONCURRENT_STREAMS = 32

# -- catalog -------------------------------------------------------------------
#: tags on one service, and bytes per tag
MAX_TAGS = 16
MAX_TAG_BYTES = 63
#: an HTTP health check path
MAX_HEALTH_PATH_BYTES = 256
#: a service as stored and signed (the gossip record's payload). With the
#: record's key, origin and signature it must fit one gossip datagram.
MAX_SERVICE_BYTES = 900
#: services one node may hold
MAX_SERVICES_PER_NODE = 512
#: token descriptions
MAX_DESCRIPTION_BYTES = 256

# -- nodes ---------------------------------------------------------------------
#: labels on a node (or a token), and their total size (sum of key and value bytes)
MAX_LABELS = 16
MAX_LABELS_BYTES = 512
#: cloud and region travel in gossip facts; other free-text facts (hostname, VPC id) are capped too
MAX_FACT_BYTES = 64
MAX_HOSTNAME_BYTES = 253

# -- gossip (agent) ------------------------------------------------------------
#: node facts on the wire (codec.MAX_FACTS) and a record payload (codec.MAX_PAYLOAD)
GOSSIP_MAX_FACTS = 1024
GOSSIP_MAX_PAYLOAD = 1024
#: one sealed push-pull frame on TCP: the full member list and catalog (1,000 nodes
#: with typical facts and 2,000 services take about 1 MiB)
GOSSIP_MAX_STREAM_BYTES = 4 * MiB
#: inbound push-pull connections at once, and from one peer address
GOSSIP_TCP_CONNECTIONS = 4
GOSSIP_TCP_CONNECTIONS_PER_PEER = 2
#: unauthenticated bytes all inbound frames may hold at once: a frame whose declared length
#: does not fit what is left is refused before one byte of it is read
GOSSIP_TCP_PREAUTH_BYTES = 2 * GOSSIP_MAX_STREAM_BYTES
#: an inbound connection must send its 4-byte length within this many seconds...
GOSSIP_TCP_HEADER_DEADLINE_S = 1.0
#: ... and the whole frame within this many (then it is authenticated or dropped)
GOSSIP_TCP_FRAME_DEADLINE_S = 5.0

#: catalog signing keys handed to an agent (previous, current, next: meshd/gossipkeys.py)
#: and signed records of its own services in one renewal (MAX_SERVICES_PER_NODE)
MAX_CATALOG_KEYS = 4

# -- watch streams (meshd) -----------------------------------------------------
#: store events queued for one watcher before it is treated as lagging: its queue
#: is dropped and it re-reads the history from its last revision when it reads again
WATCH_QUEUE_BATCHES = 256
#: open watch streams per caller (a node or an admin certificate); meshd's own
#: admin socket (root on the main node) gets more
WATCHES_PER_CALLER = 8
WATCHES_PER_LOCAL_CALLER = 128
#: watch streams sending their initial set at once (a fleet arriving: each is the whole
#: node list); the rest wait their turn, so renewals and joins keep being served
WATCH_SYNCS_AT_ONCE = 32
#: seconds a stream keeps its turn at most: one that reads slowly (or never) goes on
#: without it rather than hold back everyone else's
WATCH_SYNC_TURN_S = 5.0
#: watch messages being written at once, fleet-wide: a change that goes to every stream
#: goes out in turns, so a renewal that arrives meanwhile waits for a few sends, not for
#: thousands. With 1,000 agents (a change every half second, each to 1,000 streams) a
#: renewal's p99 was 67 ms at 64, 21 and 48 ms at 8, 23 ms at 16; a change reached every
#: stream in 119 ms (median) at 64, 137 ms at 8, 135 ms at 16
WATCH_SENDS_AT_ONCE = 16
#: seconds one write keeps its turn at most (a reader that stopped reading holds none longer)
WATCH_SEND_TURN_S = 2.0
#: live-change messages a second, fleet-wide, that each kind of watch stream (nodes, services)
#: is sent by default (meshd --max-watch-messages-per-s): after it sent, a stream pauses
#: streams / rate seconds (meshd.servicers.WatchSlots.pause: 25 ms at 50 streams, 0.5 s at
#: 1,000, 2.5 s at 5,000) and what changes meanwhile goes out together. At 5,000 simulated
#: agents (a change every half second, a node arriving every 20 ms) a renewal's p99 was
#: 565 ms with only node streams paced (0.25 s), 225 ms at 4,000 and 37 ms at 2,000 (in
#: later runs at 2,000 from 114 to 422 ms as the machine's load moved); a change reached
#: every stream in 2.7 s, 1.6 s and 2.6 s (p99). The cost is in smaller
#: fleets that keep up anyway: at 1,000 agents a change reached every stream in 202 ms
#: (p99) with only node streams paced, 338 ms at 4,000 and 671 ms at 2,000
WATCH_LIVE_MESSAGES_PER_S = 2000

# -- tunnels (meshd; `meshctl proxy` with an admin certificate) ------------------
#: bytes of the TCP stream in one Tunnel message, either way; with its envelope it
#: stays under REQUEST_BYTES["Tunnel"] and the transport cap
TUNNEL_CHUNK_BYTES = 32 * KiB
#: tunnels open at once per caller (an admin certificate, or the admin socket; a
#: browser opens about six connections per site), and in all
TUNNELS_PER_CALLER = 16
TUNNELS_TOTAL = 128
#: a tunnel that carries no byte either way for this long is closed (a client that
#: stopped reading counts as idle: what it left unread is not held longer than this)
TUNNEL_IDLE_S = 300.0
#: connecting to the service's address
TUNNEL_CONNECT_S = 10.0

# -- local doors ---------------------------------------------------------------
#: local API requests (unix socket), as the gRPC transport cap of the agent's server
LOCAL_API_MAX_REQUEST_BYTES = 16 * KiB


def request_limit(method: str) -> int:
    """The largest serialized request accepted for a gRPC method name (the last path part)."""
    return REQUEST_BYTES.get(method, DEFAULT_REQUEST_BYTES)
