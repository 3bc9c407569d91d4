"""One daemon per state: an exclusive lock on a state directory (or database file).

A daemon holds `fcntl.flock(LOCK_EX)` on a lock file for as long as it runs;
the kernel releases it when the process ends, however it ends (SIGKILL
included), so a stale lock cannot outlive its holder. The file records who
holds it (host, pid, what) so that a second daemon refuses with one line that
names the holder instead of sharing the state: two meshd on one SQLite file
would each judge leases on half the renewals and delete each other's nodes'
services.

flock is per open file, so two holders in one process conflict too (tests
that start two coordinators in-process see the same refusal).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

from meshcore.errors import StateError


class StateLock:
    """An exclusive lock on `path` (a lock file), taken at construction, released by `release()`."""

    def __init__(self, path: Path, what: str, hint: str = "") -> None:
        self.path = Path(path)
        self._fd: int | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise StateError(f"cannot open the lock file {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read(fd))
            os.close(fd)
            raise StateError(f"{self.path.parent} is in use by {holder}"
                             + (f": {hint}" if hint else "")) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"what": what, "host": socket.gethostname(), "pid": os.getpid()}).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            os.close(fd)  # closing the last descriptor releases the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __del__(self) -> None:
        self.release()


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "another process"
    return f"{holder.get('what', 'another process')} (pid {holder['pid']} on {holder.get('host', '?')})"


def claim_socket(path: Path, what: str, option: str) -> None:
    """Make way for a unix socket at `path`: a stale file (its daemon gone) is removed; a socket a
    live process still answers on is refused, never taken over (the other daemon would lose it)."""
    import socket as _socket

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    with _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            live = False
        else:
            live = True
    if live:
        raise StateError(f"{path} is held by another running {what}: stop it first, or give this one "
                         f"its own {option}")
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        raise StateError(f"cannot remove the stale socket {path}: {e.strerror}") from None
