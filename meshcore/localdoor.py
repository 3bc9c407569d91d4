"""A local unix socket that checks who connects before a gRPC server sees a byte.

grpc-python does not expose the peer credentials of a unix connection, so the
daemons' local sockets (the agent's API, meshd's admin socket) are not the
gRPC server's own: this door listens on the public path, reads each
connection's SO_PEERCRED (pid, uid, gid as the kernel recorded them at
connect), and admits only the users `allowed(cred)` says; an admitted
connection is spliced byte for byte to the gRPC server, which listens on a
private socket in a 0700 directory only root can enter. A refused peer gets
its connection closed, one log line naming its uid and pid, and a count
(`refused`): the socket's mode stays in place as a second wall, but no longer
the only one.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import socket
import stat
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from meshcore.errors import StateError

log = logging.getLogger("meshcore.localdoor")

_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_CHUNK = 64 * 1024
#: longest unix socket path (sun_path is 108 bytes with its NUL)
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class PeerCred:
    pid: int
    uid: int
    gid: int


def peer_cred(sock: socket.socket) -> PeerCred:
    return PeerCred(*_CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)))


def _proc_groups(pid: int) -> set[int]:
    """Supplementary groups of a process (from /proc), empty if it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return set()


def root_or_group(group: str) -> Callable[[PeerCred], bool]:
    """Admit uid 0, this process's own uid, and members of `group` (its gid as the peer's gid or
    among the connecting process's groups, or the user listed in the group); with no such group,
    root and ourselves only."""
    me = os.geteuid()

    def allowed(c: PeerCred) -> bool:
        if c.uid in (0, me):
            return True
        try:
            g = grp.getgrnam(group)
        except KeyError:
            return False
        if c.gid == g.gr_gid or g.gr_gid in _proc_groups(c.pid):
            return True
        try:
            return pwd.getpwuid(c.uid).pw_name in g.gr_mem
        except KeyError:
            return False

    return allowed


def root_only() -> Callable[[PeerCred], bool]:
    """Admit uid 0 and this process's own uid."""
    me = os.geteuid()
    return lambda c: c.uid in (0, me)


def private_socket_path(public: Path) -> Path:
    """Where the gRPC server behind the door listens: a 0700 directory beside the public socket
    (in a fresh 0700 temporary directory when that path would be too long for a socket)."""
    path = public.parent / f".{public.name}.private" / "grpc.sock"
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    return Path(tempfile.mkdtemp(prefix="mesh-door-")) / "grpc.sock"


def prepare_private_dir(path: Path) -> None:
    """The private socket's directory: ours, a real directory, mode 0700; a stale socket removed."""
    d = path.parent
    d.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise StateError(f"{d} must be a directory owned by uid {os.geteuid()} (it holds the private socket "
                         "behind the local door): remove it")
    os.chmod(d, 0o700)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def remove_private_dir(path: Path) -> None:
    """After the server behind the door stopped: its socket and directory go (a stale one would
    only be replaced at the next start)."""
    with contextlib.suppress(OSError):
        path.unlink()
    with contextlib.suppress(OSError):
        path.parent.rmdir()


class LocalDoor:
    """Accept on `public`, admit by credentials, splice to the gRPC server on `private`."""

    def __init__(self, public: Path, private: Path, allowed: Callable[[PeerCred], bool],
                 refused: Callable[[PeerCred], None] = lambda c: None, what: str = "local socket") -> None:
        self.public, self.private = Path(public), Path(private)
        self.allowed, self.refused, self.what = allowed, refused, what
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task] = set()

    async def start(self, mode: int) -> None:
        """Listen on the public path, created with `mode` already in place (umask while binding)."""
        old = os.umask(0o777 & ~mode)
        try:
            self._server = await asyncio.start_unix_server(self._accept, path=str(self.public))
        finally:
            os.umask(old)
        os.chmod(self.public, mode)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        for t in list(self._conns):
            t.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            self.public.unlink()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._conns.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:  # the door is closing: the connection ends with it
            writer.close()
        finally:
            self._conns.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            cred = peer_cred(writer.get_extra_info("socket"))
        except OSError as e:
            log.warning("%s: cannot read the peer's credentials (%s): connection closed", self.what, e)
            writer.close()
            return
        if not self.allowed(cred):
            self.refused(cred)
            log.warning("%s: refused a connection from uid %d (pid %d, gid %d): only root and the "
                        "allowed users may connect", self.what, cred.uid, cred.pid, cred.gid)
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(str(self.private))
        except OSError as e:
            log.warning("%s: the server behind the door is not answering (%s)", self.what, e)
            writer.close()
            return
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close; a reset on either side ends the copy quietly."""
    try:
        while data := await src.read(_CHUNK):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()
    except (ConnectionError, OSError):
        dst.close()
