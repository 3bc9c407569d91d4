"""`--watch`: follow a list as it changes, kubectl style.

The current set is printed first, then one line per change, each with an
EVENT column: ADDED, MODIFIED or DELETED. With `-o json` every event is one
JSON object per line (`{"type": ..., "<kind>": {...}, "revision": N}`), so
`jq` can follow the stream; with `-o name` one `EVENT name` per line.

Services and nodes follow a watch stream (meshd's WatchServices/WatchNodes,
or the agent's, which serves the same events from its catalog copy): from
revision 0 it sends RESET, the current set, SYNCED, then live changes; a
RESET later on (meshd's store was replaced) is diffed against what was shown.
Peers have no stream: the agent's ListPeers is polled at a bounded interval
and a peer is reported when its path, endpoint or reason changes.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc

from mesh.v1 import types_pb2
from meshctl.output import EXIT_INTERRUPTED, Output, fail, print_table, proto_dict, row_name

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"


class Printer:
    """Prints the first set as a table, then changes one line at a time."""

    def __init__(self, kind: str, columns: list[str], output: Output, row: Callable[[Any], dict]) -> None:
        self.kind = kind
        self.columns = ["EVENT", *columns]
        self.output = output
        self.row = row
        self.header_done = False

    def events(self, items: Iterable[tuple[str, Any, int]]) -> None:
        items = list(items)
        if self.output in (Output.json, Output.yaml):
            for event, obj, rev in items:
                print(json.dumps({"type": event, self.kind: proto_dict(obj), "revision": rev}), flush=True)
            return
        rows = [{"EVENT": event, **self.row(obj)} for event, obj, _ in items]
        if self.output == Output.name:
            for r in rows:
                print(f"{r['EVENT']} {row_name(r, self.columns[1:])}", flush=True)
            return
        if not rows and self.header_done:
            return
        print_table(rows, self.columns, header=not self.header_done)
        self.header_done = True


def follow_stream(stream, kind: str, key: Callable[[Any], str], printer: Printer) -> None:
    """Consume a ServiceEvent/NodeEvent stream from revision 0 until interrupted."""
    shown: dict[str, bytes] = {}
    objects: dict[str, Any] = {}
    staging: dict[str, Any] | None = None
    try:
        for ev in stream:
            if ev.type == types_pb2.EVENT_TYPE_RESET:
                staging = {}
                continue
            many = list(getattr(ev, kind + "s"))
            one = getattr(ev, kind) if ev.HasField(kind) else None
            if ev.type == types_pb2.EVENT_TYPE_SYNCED:
                if staging is not None:
                    changes = []
                    for k, obj in sorted(staging.items()):
                        if k not in shown:
                            changes.append((ADDED, obj, ev.revision))
                        elif shown[k] != obj.SerializeToString(deterministic=True):
                            changes.append((MODIFIED, obj, ev.revision))
                    changes += [(DELETED, objects[k], ev.revision) for k in sorted(shown) if k not in staging]
                    objects = staging
                    shown = {k: o.SerializeToString(deterministic=True) for k, o in objects.items()}
                    staging = None
                    printer.events(changes)
                continue
            batch = many or ([one] if one is not None else [])
            if staging is not None:
                for obj in batch:
                    staging[key(obj)] = obj
                continue
            changes = []
            for obj in batch:
                k = key(obj)
                if ev.type == types_pb2.EVENT_TYPE_DELETE:
                    if shown.pop(k, None) is not None:
                        objects.pop(k, None)
                        changes.append((DELETED, obj, ev.revision))
                    continue
                changes.append((MODIFIED if k in shown else ADDED, obj, ev.revision))
                shown[k], objects[k] = obj.SerializeToString(deterministic=True), obj
            printer.events(changes)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.CANCELLED:
            return
        fail(f"the watch stream ended: {e.details() or e.code().name} ({e.code().name})")
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


#: bounds on the peers poll, seconds
MIN_INTERVAL_S, MAX_INTERVAL_S = 1.0, 60.0
PEER_FIELDS = ("mesh_address", "path", "via", "endpoint", "reason")


def poll_peers(list_peers: Callable[[], Any], interval_s: float, printer: Printer,
               sleep: Callable[[float], None] = time.sleep, rounds: int | None = None) -> None:
    """Poll ListPeers every `interval_s` (clamped to 1-60 s); `rounds` bounds it for tests."""
    interval_s = min(max(interval_s, MIN_INTERVAL_S), MAX_INTERVAL_S)
    shown: dict[str, tuple] = {}
    last: dict[str, Any] = {}
    n = 0
    try:
        while rounds is None or n < rounds:
            if n:
                sleep(interval_s)
            n += 1
            peers = {p.node_id or p.name: p for p in list_peers().peers}
            changes = []
            for k, p in sorted(peers.items(), key=lambda kv: kv[1].name):
                now = tuple(getattr(p, f) for f in PEER_FIELDS)
                if k not in shown:
                    changes.append((ADDED, p, 0))
                elif shown[k] != now:
                    changes.append((MODIFIED, p, 0))
                shown[k], last[k] = now, p
            for k in [k for k in shown if k not in peers]:
                del shown[k]
                changes.append((DELETED, last.pop(k), 0))
            printer.events(changes)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)

