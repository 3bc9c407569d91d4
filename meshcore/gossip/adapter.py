"""asyncio adapter: drives one `Swim` state machine on UDP, with TCP for push-pull.

The adapter owns the I/O and the clock; the protocol decisions all live in
`swim.Swim`. Its loop is the aioquic pattern:

- a datagram arrives  -> `swim.receive(data, addr, now)`, then flush;
- the timer fires     -> `swim.tick(now)`, then flush;
- flush               -> send `datagrams_to_send()`, start a TCP push-pull for
                         each of `pushpull_requests()`, hand `events()` to the
                         callbacks, and re-arm one timer at `next_timer()`.

UDP and TCP listen on the same port number (as memberlist does), so one
"host:port" names a member for both. Push-pull frames on TCP are a 4-byte
big-endian length and one sealed stream packet; the requester sends its state,
the listener answers with its own, and both merge.

The TCP door is bounded before anything is authenticated (meshcore.limits):
at most GOSSIP_TCP_CONNECTIONS inbound connections at once and
GOSSIP_TCP_CONNECTIONS_PER_PEER from one address (others are closed at once),
the length within GOSSIP_TCP_HEADER_DEADLINE_S, the whole frame (at most
GOSSIP_MAX_STREAM_BYTES) within GOSSIP_TCP_FRAME_DEADLINE_S.

Joining: `start()` push-pulls with every seed (so a late joiner holds the
whole member list and catalog when it returns); while it knows no other live
member it retries the seeds every `reconnect_interval`.

Everything runs on the event loop's thread (uvloop or asyncio); event
callbacks are called synchronously there and must not block.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import struct
from collections.abc import Callable
from typing import Any

from meshcore import limits
from meshcore.clock import SYSTEM, Clock
from meshcore.errors import InvalidArgument, Unavailable
from meshcore.gossip.keyring import Keyring, Plaintext
from meshcore.gossip.messages import Addr, Record
from meshcore.gossip.profiles import GossipProfile, lan
from meshcore.gossip.swim import MAX_STREAM, Event, Member, Swim
from meshcore.names import parse_hostport

log = logging.getLogger(__name__)
_LEN = struct.Struct(">I")
PUSHPULL_TIMEOUT = limits.GOSSIP_TCP_FRAME_DEADLINE_S  # seconds for one whole TCP exchange


def encode_facts(facts: bytes | dict[str, Any]) -> bytes:
    """Node facts on the wire: bytes as given, a dict as compact sorted JSON."""
    if isinstance(facts, (bytes, bytearray)):
        return bytes(facts)
    if isinstance(facts, dict):
        return json.dumps(facts, sort_keys=True, separators=(",", ":")).encode()
    raise InvalidArgument(f"node facts must be bytes or a dict, not {type(facts).__name__}")


def decode_facts(raw: bytes) -> dict[str, Any]:
    """A member's facts as a dict ({} if they are not a JSON object)."""
    try:
        v = json.loads(raw) if raw else {}
    except (ValueError, UnicodeDecodeError):
        return {}
    return v if isinstance(v, dict) else {}


def parse_seed(s: str) -> Addr:
    """A gossip seed 'host:port' (or '[v6]:port'), or InvalidArgument naming the rule."""
    return parse_hostport(s, "gossip seed")


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, node: GossipNode) -> None:
        self.node = node

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.node._on_datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable etc.: SWIM copes
        log.debug("gossip udp error: %s", exc)


class GossipNode:
    """One agent's gossip endpoint. Create, `await start()`, and `await stop()`."""

    def __init__(self, node_id: str, name: str, host: str = "127.0.0.1", port: int = 0, *,
                 profile: GossipProfile | None = None, keyring: Keyring | Plaintext,
                 verify_record: Callable[[Record], bool], facts: bytes | dict[str, Any] = b"",
                 seeds: list[str] | None = None, advertise_host: str | None = None,
                 clock: Clock = SYSTEM,
                 rng: random.Random | None = None,
                 verify_leave: Callable[[str, int, bytes], bool] | None = None,
                 sign_leave: Callable[[str, int], bytes] | None = None) -> None:
        if host in ("0.0.0.0", "::") and not advertise_host:
            raise InvalidArgument(f"gossip binds to {host}: set advertise_host to the address peers should use")
        self.node_id = node_id
        self.name = name
        self.host = host
        self.port = port
        self.profile = profile or lan()
        self.keyring = keyring
        self.verify_record = verify_record
        self.facts = encode_facts(facts)
        self.seeds = [parse_seed(s) for s in (seeds or [])]
        self.advertise_host = advertise_host or host
        self._clock = clock
        self._rng = rng or random.Random()
        self._leave = (verify_leave, sign_leave)
        self._swim: Swim | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._callbacks: list[Callable[[Event], None]] = []
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbound: dict[str, int] = {}  # open inbound push-pull connections per peer address
        self._preauth = 0  # bytes inbound frames hold before their key check (limits.GOSSIP_TCP_PREAUTH_BYTES)

    # ------------------------------------------------------------ lifecycle

    @property
    def addr(self) -> Addr:
        return (self.advertise_host, self.port)

    @property
    def swim(self) -> Swim:
        if self._swim is None:
            raise Unavailable("gossip node is not started: call start() first")
        return self._swim

    async def start(self) -> int:
        """Bind UDP and TCP, then push-pull with the seeds. Returns how many seeds answered."""
        self._loop = asyncio.get_running_loop()
        self._tcp = await asyncio.start_server(self._on_tcp, self.host, self.port)
        self.port = self._tcp.sockets[0].getsockname()[1]
        self._udp, _ = await self._loop.create_datagram_endpoint(
            lambda: _Udp(self), local_addr=(self.host, self.port))
        self._swim = Swim(self.node_id, self.name, self.addr, self.profile, self._rng, self.keyring,
                          self.verify_record, self.facts, epoch=int(self._clock.wall() * 1000), now=self._now(),
                          verify_leave=self._leave[0], sign_leave=self._leave[1],
                          clock_offset=self._clock.wall() - self._clock.monotonic())
        self._flush()
        if not self.seeds:
            return 0
        joined = await self.join([f"{h}:{p}" for h, p in self.seeds])
        self._spawn(self._rejoin_while_alone())
        return joined

    async def _rejoin_while_alone(self) -> None:
        """Retry the seeds while we know no other live member (they may come up later)."""
        while self._udp is not None:
            await asyncio.sleep(self.profile.reconnect_interval)
            if self._swim is not None and self._swim.num_alive() <= 1:
                await self.join([f"{h}:{p}" for h, p in self.seeds])

    async def join(self, seeds: list[str]) -> int:
        """Push-pull with each seed (full state both ways). Returns how many answered."""
        addrs = [parse_seed(s) for s in seeds]
        results = await asyncio.gather(*(self._pushpull(a, join=True) for a in addrs))
        return sum(1 for ok in results if ok)

    async def stop(self, leave: bool = True) -> None:
        """Leave gracefully (gossip our departure for up to leave_propagate_time), then close."""
        if self._swim is not None and leave and self._udp is not None:
            self._swim.leave(self._now())
            self._flush()
            deadline = self._now() + self.profile.leave_propagate_time
            # Bounded: at most leave_propagate_time, polling every gossip interval.
            while self._swim.pending_broadcasts() and self._now() < deadline:
                await asyncio.sleep(self.profile.gossip_interval)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
            self._tcp = None

    # ---------------------------------------------------------- agent's API

    def members(self) -> list[Member]:
        return self.swim.members()

    def records(self) -> dict[str, Record]:
        return self.swim.records()

    def publish(self, record: Record) -> bool:
        ok = self.swim.publish(record, self._now())
        self._flush()
        return ok

    def update_facts(self, facts: bytes | dict[str, Any]) -> None:
        self.facts = encode_facts(facts)
        self.swim.update_facts(self.facts, self._now())
        self._flush()

    def on_event(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call `callback(event)` for every member and record event; returns an unsubscribe."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    def install_key(self, key: bytes) -> str:
        return self._keyring().install(key).hex()

    def use_key(self, key: bytes) -> None:
        self._keyring().use(key)

    def remove_key(self, key: bytes) -> None:
        self._keyring().remove(key)

    def stats(self) -> dict[str, Any]:
        s = self.swim
        out: dict[str, Any] = s.stats.as_dict()
        out.update(members_alive=s.num_alive(), members_known=len(s.members()),
                   records=len(s.records()), incarnation=s.incarnation,
                   primary_key=self.keyring.primary_id, keys=self.keyring.key_ids())
        return out

    def _keyring(self) -> Keyring:
        if not isinstance(self.keyring, Keyring):
            raise InvalidArgument("this gossip node runs without encryption: it has no keyring to change")
        return self.keyring

    # ---------------------------------------------------------------- driving

    def _now(self) -> float:
        """Swim's `now`: monotonic seconds (the wall clock only stamps the incarnation epoch)."""
        return self._clock.monotonic()

    def _on_datagram(self, data: bytes, addr: Addr) -> None:
        if self._swim is None:
            return
        self._swim.receive(data, addr, self._now())
        self._flush()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        if self._swim is None:
            return
        self._swim.tick(self._now())
        self._flush()

    def _flush(self) -> None:
        swim = self._swim
        if swim is None:
            return
        if self._udp is not None:
            for data, addr in swim.datagrams_to_send():
                self._udp.sendto(data, addr)
        else:
            swim.datagrams_to_send()
        for addr in swim.pushpull_requests():
            self._spawn(self._pushpull(addr))
        for ev in swim.events():
            for cb in list(self._callbacks):
                try:
                    cb(ev)
                except Exception:  # a consumer's bug must not stop gossip
                    log.exception("gossip event callback failed")
        self._arm(swim.next_timer())

    def _arm(self, at: float) -> None:
        if self._loop is None or self._udp is None:
            return
        if self._timer is not None and abs(at - self._timer_at) < 1e-4:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_later(max(0.0, at - self._now()), self._on_timer)

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -------------------------------------------------------------- push-pull

    async def _pushpull(self, addr: Addr, join: bool = False) -> bool:
        writer = None
        try:
            async with asyncio.timeout(PUSHPULL_TIMEOUT):
                reader, writer = await asyncio.open_connection(addr[0], addr[1])
                data = self.swim.make_pushpull(self._now(), join=join)
                writer.write(_LEN.pack(len(data)) + data)
                await writer.drain()
                reply = await _read_frame(reader)
            self.swim.receive_stream(reply, addr, self._now())
            return True
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
            log.debug("gossip push-pull with %s:%s failed: %s", addr[0], addr[1], e)
            return False
        finally:
            if writer is not None:
                writer.close()
            self._flush()

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        host = str(peer[0])
        if (sum(self._inbound.values()) >= limits.GOSSIP_TCP_CONNECTIONS
                or self._inbound.get(host, 0) >= limits.GOSSIP_TCP_CONNECTIONS_PER_PEER):
            if self._swim is not None:
                self._swim.stats.tcp_refused += 1
            writer.transport.abort()
            return
        self._inbound[host] = self._inbound.get(host, 0) + 1
        try:
            await self._serve_pushpull(reader, writer, peer)
        finally:
            self._inbound[host] -= 1
            if not self._inbound[host]:
                del self._inbound[host]

    async def _serve_pushpull(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer) -> None:
        try:
            async with asyncio.timeout(limits.GOSSIP_TCP_FRAME_DEADLINE_S):
                try:
                    async with asyncio.timeout(limits.GOSSIP_TCP_HEADER_DEADLINE_S):
                        head = await reader.readexactly(4)
                except TimeoutError:
                    if self._swim is not None:
                        self._swim.stats.tcp_refused += 1
                    raise
                n = _LEN.unpack(head)[0]
                if n > MAX_STREAM:
                    raise ValueError(f"push-pull frame of {n} bytes exceeds {MAX_STREAM}")
                if self._preauth + n > limits.GOSSIP_TCP_PREAUTH_BYTES:  # others hold the budget: not now
                    if self._swim is not None:
                        self._swim.stats.tcp_refused += 1
                    raise Unavailable(f"{n} unauthenticated bytes would pass the budget of "
                                      f"{limits.GOSSIP_TCP_PREAUTH_BYTES}")
                self._preauth += n
                try:
                    data = await _read_exactly(reader, n)
                finally:
                    self._preauth -= n
                reply = self.swim.receive_stream(data, (peer[0], peer[1]), self._now())
                if reply is not None:
                    writer.write(_LEN.pack(len(reply)) + reply)
                    await writer.drain()
        except ValueError as e:  # a frame over MAX_STREAM: counted like an oversized datagram
            if self._swim is not None:
                self._swim.stats.oversized_packets += 1
            log.debug("gossip push-pull from %s refused: %s", peer, e)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, Unavailable) as e:
            log.debug("gossip push-pull from %s refused: %s", peer, e)
        finally:
            writer.close()
            self._flush()


async def _read_exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    """n bytes read in chunks into one buffer (readexactly holds them twice at its end)."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        chunk = await reader.read(min(65536, n - got))
        if not chunk:
            raise asyncio.IncompleteReadError(bytes(view[:got]), n)
        view[got:got + len(chunk)] = chunk
        got += len(chunk)
    view.release()
    return buf  # bytes-like: the frame is only decrypted and parsed


async def _read_frame(reader: asyncio.StreamReader, head: bytes | None = None) -> bytes:
    n = _LEN.unpack(head if head is not None else await reader.readexactly(4))[0]
    if n > MAX_STREAM:
        raise ValueError(f"push-pull frame of {n} bytes exceeds {MAX_STREAM}")
    return await reader.readexactly(n)
