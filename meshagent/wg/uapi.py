"""The WireGuard cross-platform UAPI: text requests on /var/run/wireguard/<iface>.sock.

Protocol (wireguard.com/xplatform): a request is `get=1` or `set=1` followed by
`key=value` lines and a blank line; the answer is `key=value` lines ending in
`errno=N` and a blank line. Keys are hex. Within `set`, lines after a
`public_key=` apply to that peer. This module only encodes and parses; the
socket I/O is `request()`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from meshcore.errors import PeerError, Unavailable
from meshagent.wg.keys import from_hex, to_hex
from meshagent.wg.model import Diff, InterfaceConfig, PeerConfig

SOCKET_DIR = Path("/var/run/wireguard")


@dataclass(frozen=True)
class PeerStats:
    """Counters the device keeps per peer (not part of desired state)."""

    public_key: str
    endpoint: str | None
    last_handshake_s: int
    rx_bytes: int
    tx_bytes: int


def socket_path(ifname: str, socket_dir: Path = SOCKET_DIR) -> Path:
    return socket_dir / f"{ifname}.sock"


def encode_set(desired: InterfaceConfig, d: Diff, hints: dict[str, str] | None = None) -> str:
    """The `set=1` request that turns the current device into `desired`, touching only `d`.

    `hints`: last learned endpoints of peers whose desired endpoint is None, set
    when such a peer is added so a restarted device can reach a NAT'd peer
    through its still-open mapping instead of waiting for it to speak first.
    """
    hints = hints or {}
    lines = ["set=1"]
    if "private_key" in d.interface:
        lines.append(f"private_key={to_hex(desired.private_key)}")
    if "listen_port" in d.interface:
        lines.append(f"listen_port={desired.listen_port}")
    want = desired.peer_map()
    for key in d.removed:
        lines += [f"public_key={to_hex(key)}", "remove=true"]
    for key in d.added:
        p = want[key]
        if p.endpoint is None and key in hints:
            p = PeerConfig(p.public_key, hints[key], p.allowed_ips, p.persistent_keepalive)
        lines += _peer_lines(p, update_only=False)
    for key in d.changed:
        lines += _peer_lines(want[key], update_only=True)
    return "\n".join(lines) + "\n\n"


def _peer_lines(p: PeerConfig, update_only: bool) -> list[str]:
    lines = [f"public_key={to_hex(p.public_key)}"]
    if update_only:
        lines.append("update_only=true")
    if p.endpoint is not None:
        lines.append(f"endpoint={p.endpoint}")
    lines.append(f"persistent_keepalive_interval={p.persistent_keepalive}")
    lines.append("replace_allowed_ips=true")
    lines += [f"allowed_ip={ip}" for ip in p.allowed_ips]
    return lines


def parse_get(text: str) -> tuple[str | None, int, list[PeerConfig], list[PeerStats]]:
    """Parse a `get=1` answer: (private key b64 or None, listen port, peers, stats)."""
    private_key, port = None, 0
    peers: list[PeerConfig] = []
    stats: list[PeerStats] = []
    cur: dict | None = None

    def close() -> None:
        if cur is not None:
            peers.append(PeerConfig(cur["key"], cur["endpoint"], tuple(cur["ips"]), cur["ka"]))
            stats.append(PeerStats(cur["key"], cur["endpoint"], cur["hs"], cur["rx"], cur["tx"]))

    errno = None
    for line in text.splitlines():
        if not line:
            continue
        k, sep, v = line.partition("=")
        if not sep:
            raise PeerError(f"UAPI answer line {line[:60]!r} is not key=value")
        if k == "errno":
            errno = int(v)
        elif k == "private_key":
            private_key = from_hex(v)
        elif k == "listen_port":
            port = int(v)
        elif k == "public_key":
            close()
            cur = {"key": from_hex(v), "endpoint": None, "ips": [], "ka": 0, "hs": 0, "rx": 0, "tx": 0}
        elif cur is not None:
            if k == "endpoint":
                cur["endpoint"] = v
            elif k == "allowed_ip":
                cur["ips"].append(v)
            elif k == "persistent_keepalive_interval":
                cur["ka"] = int(v)
            elif k == "last_handshake_time_sec":
                cur["hs"] = int(v)
            elif k == "rx_bytes":
                cur["rx"] = int(v)
            elif k == "tx_bytes":
                cur["tx"] = int(v)
    close()
    if errno not in (0, None):
        raise PeerError(f"UAPI get failed with errno={errno}")
    return private_key, port, peers, stats


def check_errno(text: str) -> None:
    for line in text.splitlines():
        if line.startswith("errno="):
            if line != "errno=0":
                raise Unavailable(f"wireguard-go refused the configuration ({line})")
            return
    raise Unavailable("wireguard-go closed the UAPI socket without an errno line")


def _complete(buf: bytearray) -> bool:
    """True once the answer's last line, errno=N, has arrived."""
    if not buf.endswith(b"\n"):
        return False
    last = buf[:-1].rstrip(b"\n").rsplit(b"\n", 1)[-1]
    return last.startswith(b"errno=")


async def request(path: Path, body: str, timeout_s: float = 10.0) -> str:
    """Send one request and read the whole answer (up to the blank line after errno)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout_s)
    except (FileNotFoundError, ConnectionRefusedError) as e:
        raise Unavailable(f"WireGuard UAPI socket {path} is not answering ({e.strerror or e})") from None
    try:
        writer.write(body.encode())
        await writer.drain()
        # Read in large chunks (a 1,000-peer answer is ~12,000 lines) until the errno line.
        buf = bytearray()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not _complete(buf):
            chunk = await asyncio.wait_for(reader.read(1 << 16), max(0.0, deadline - loop.time()))
            if not chunk:
                break
            buf += chunk
        return buf.decode()
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, BrokenPipeError):
            pass
