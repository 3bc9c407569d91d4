"""The store's identity: which store, and which life of it, a revision belongs to.

A revision only means something in the store that counted it. An agent
resumes its watches from the last revision it applied; if meshd now serves
another store, or the same store restored from an older backup, that
revision names changes the store never had (or other ones), and resuming
would silently keep names that are gone. So the store carries an identity,
`/meta/store` = {"id", "epoch"}, sent with every RESET and SYNCED as
"<id>/<epoch>"; an agent sends back the one its copy came from, and meshd
sends the full current set (RESET) when it differs, or when the agent's
revision is ahead of the store's.

The epoch grows when meshd finds the store older than the one it served
before: each meshd keeps `store.json` in its state directory with the store
id, epoch and the highest revision it saw (written at start, at most every
few seconds while serving, and at stop). A store whose revision is below that
mark was restored from a backup; its epoch is bumped once, and every agent
resyncs in full. (A backup restored together with the state directory is
caught by the revision check alone, as long as agents are ahead of it.)
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

from meshcore import pki
from meshcore.clock import SYSTEM, Clock
from meshd.store.base import Put, Store, absent, unchanged

log = logging.getLogger("meshd.store")

KEY = "/meta/store"
#: seconds between updates of the revision mark in the state directory
MARK_EVERY_S = 5.0


@dataclass
class StoreIdentity:
    id: str
    epoch: int

    @property
    def token(self) -> str:
        return f"{self.id}/{self.epoch}"


class StoreMark:
    """The store identity and its revision mark, kept by one meshd (see the module docstring)."""

    def __init__(self, store: Store, state_dir: Path, clock: Clock = SYSTEM) -> None:
        self.store = store
        self.path = Path(state_dir) / "store.json"
        self.clock = clock
        self.identity = StoreIdentity("", 0)
        self._marked = (-1, 0.0)  # (revision, monotonic time) last written

    async def load(self) -> StoreIdentity:
        for _ in range(8):
            kv = await self.store.get(KEY)
            if kv is None:
                want = StoreIdentity(uuid.uuid4().hex[:16], 1)
                res = await self.store.txn([absent(KEY)], [Put(KEY, json.dumps(want.__dict__).encode())])
                if res.succeeded:
                    self.identity = want
                    break
                continue
            data = json.loads(kv.value)
            ident = StoreIdentity(str(data["id"]), int(data["epoch"]))
            mark = self._read_mark()
            revision = await self.store.revision()
            if mark and mark.get("id") == ident.id and mark.get("epoch") == ident.epoch \
                    and revision < int(mark.get("revision", 0)):
                bumped = StoreIdentity(ident.id, ident.epoch + 1)
                res = await self.store.txn([unchanged(kv)], [Put(KEY, json.dumps(bumped.__dict__).encode())])
                if not res.succeeded:
                    continue
                log.warning("the store is older than the one this meshd served before (revision %d < %d): "
                            "restored from a backup? Its epoch is now %d, and every agent resyncs in full",
                            revision, int(mark["revision"]), bumped.epoch)
                ident = bumped
            self.identity = ident
            break
        await self.mark(force=True)
        return self.identity

    def _read_mark(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    async def mark(self, force: bool = False) -> None:
        """Record the highest revision seen (rate-limited unless `force`)."""
        now = self.clock.monotonic()
        last_rev, last_t = self._marked
        if not force and now - last_t < MARK_EVERY_S:
            return
        revision = await self.store.revision()
        if revision == last_rev and not force:
            return
        data = {"id": self.identity.id, "epoch": self.identity.epoch, "revision": revision}
        try:
            pki.write_file(self.path, json.dumps(data).encode(), private=True)
        except OSError as e:
            log.warning("cannot record the store's revision in %s: %s", self.path, e.strerror)
            return
        self._marked = (revision, now)
