"""Daemon logging: `--log-format text|json`, one line per event.

Every line carries the daemon's node (meshd: its host name; meshagent: its
node name) and, inside an RPC, the request id meshd gives it (`request_id`,
a context variable set by meshd's interceptor, so concurrent RPCs never mix
their ids). JSON lines have the keys time (RFC 3339, UTC), level, logger,
node, request_id (when inside an RPC), msg, and exc (a traceback, when one
is logged).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
import secrets

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
FORMATS = ("text", "json")


def new_request_id() -> str:
    return secrets.token_hex(8)


class _Context(logging.Filter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.node
        record.request_id = request_id.get()
        record.request = f" request={record.request_id}" if record.request_id else ""
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds")
               .replace("+00:00", "Z"), "level": record.levelname.lower(), "logger": record.name,
               "node": getattr(record, "node", "")}
        if getattr(record, "request_id", ""):
            out["request_id"] = record.request_id
        out["msg"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # one event, one line: a traceback's newlines are escaped
        return super().format(record).replace("\n", "\\n")


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a line is logged, not when the handler was made
    (a process that swaps stderr, as an in-process CLI run does, never logs to a closed stream)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup(level: str, fmt: str, node: str) -> None:
    handler = _Stderr()
    handler.addFilter(_Context(node))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(name)s %(levelname)s node=%(node)s%(request)s %(message)s"))
    handler.mesh_logs = True
    root = logging.getLogger()
    # ours replace ours; others (a test's capture) stay
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "mesh_logs", False)] + [handler]
    root.setLevel(level.upper())
