"""Spot interruption watch: leave the mesh before a spot VM goes away.

Model: on EC2, a spot instance learns of its interruption about two minutes
ahead through the instance metadata service (IMDSv2):

    PUT /latest/api/token   (header X-aws-ec2-metadata-token-ttl-seconds)  -> token
    GET /latest/meta-data/instance-life-cycle   -> "spot" | "on-demand" | ...
    GET /latest/meta-data/spot/instance-action  -> 404 while there is no notice,
        then {"action": "terminate" | "stop" | "hibernate", "time": "...Z"}

The watcher first asks the life cycle; only a spot VM is watched. It then
polls instance-action every `poll_s` (AWS suggests every 5 s) and calls the
`leave(notice)` callback exactly once when a notice appears, then returns.

What leave does depends on the action, and `InterruptionNotice.keeps_name`
says which: on *terminate* the node leaves the mesh for good and its names
are released at once (no waiting for gossip to declare it dead); on *stop* or
*hibernate* the root volume, and with it /var/lib/meshagent, survives, so the
node withdraws its services (they vanish from DNS at once) but keeps its
identity and name, and comes back under the same name when started again.

Faults: IMDS unreachable or answering 5xx is logged (once per outage, with
what was tried) and retried at the poll interval; it never raises. A 401
means the token expired: it is fetched again. A VM that is not on EC2 at all
(no IMDS on the first look-up) is logged and not watched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

TOKEN_PATH = "/latest/api/token"
LIFECYCLE_PATH = "/latest/meta-data/instance-life-cycle"
ACTION_PATH = "/latest/meta-data/spot/instance-action"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"


@dataclass(frozen=True)
class SpotConfig:
    """How the agent watches for a spot interruption.

    endpoint: the instance metadata service (link-local on every EC2 VM).
    poll_s: between two looks at instance-action; notices come ~2 min ahead.
    timeout_s: per HTTP request; IMDS answers in milliseconds when present.
    token_ttl_s: lifetime asked for the IMDSv2 session token (max 21600).
    lifecycle_attempts: how many times the first life-cycle look-up is tried
        before deciding this is not an EC2 VM.
    """

    endpoint: str = "http://169.254.169.254"
    poll_s: float = 5.0
    timeout_s: float = 2.0
    token_ttl_s: int = 21600
    lifecycle_attempts: int = 3


@dataclass(frozen=True)
class InterruptionNotice:
    action: str  # "terminate", "stop" or "hibernate"
    time: str  # when EC2 acts, ISO 8601 UTC

    @property
    def keeps_name(self) -> bool:
        """A stopped or hibernated VM keeps its disk, identity and name."""
        return self.action in ("stop", "hibernate")


class ImdsError(Exception):
    """IMDS could not be reached or answered with an unexpected status."""


class ImdsClient:
    """A minimal IMDSv2 client (blocking; the watcher runs it in a thread)."""

    def __init__(self, config: SpotConfig) -> None:
        self.config = config
        self._token: str | None = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # IMDS is never proxied

    def _request(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        req = urllib.request.Request(self.config.endpoint.rstrip("/") + path, method=method, headers=headers)
        try:
            with self._opener.open(req, timeout=self.config.timeout_s) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ImdsError(f"instance metadata at {self.config.endpoint} unreachable: {reason}") from None

    def _fetch_token(self) -> str:
        status, body = self._request("PUT", TOKEN_PATH, {TTL_HEADER: str(self.config.token_ttl_s)})
        if status != 200:
            raise ImdsError(f"IMDSv2 token request answered {status}")
        return body.decode().strip()

    def get(self, path: str) -> tuple[int, bytes]:
        """GET with a session token; a 401 (expired token) fetches a new one once."""
        for _ in range(2):
            if self._token is None:
                self._token = self._fetch_token()
            status, body = self._request("GET", path, {TOKEN_HEADER: self._token})
            if status != 401:
                return status, body
            self._token = None
        raise ImdsError(f"IMDS refused a fresh token for {path} (401)")

    def lifecycle(self) -> str:
        status, body = self.get(LIFECYCLE_PATH)
        if status != 200:
            raise ImdsError(f"{LIFECYCLE_PATH} answered {status}")
        return body.decode().strip()

    def notice(self) -> InterruptionNotice | None:
        status, body = self.get(ACTION_PATH)
        if status == 404:
            return None
        if status != 200:
            raise ImdsError(f"{ACTION_PATH} answered {status}")
        try:
            data = json.loads(body)
            return InterruptionNotice(action=str(data["action"]), time=str(data.get("time", "")))
        except (ValueError, KeyError, TypeError):
            raise ImdsError(f"{ACTION_PATH} sent something that is not a notice: {body[:100]!r}") from None


Leave = Callable[[InterruptionNotice], Awaitable[None]]
Sleep = Callable[[float], Awaitable[None]]


class SpotWatcher:
    def __init__(self, leave: Leave, config: SpotConfig | None = None,
                 client: ImdsClient | None = None, sleep: Sleep = asyncio.sleep) -> None:
        self.config = config or SpotConfig()
        self.client = client or ImdsClient(self.config)
        self._leave = leave
        self._sleep = sleep
        self.polls = 0
        self.notice: InterruptionNotice | None = None

    async def is_spot(self) -> bool | None:
        """True/False from IMDS; None when IMDS cannot be reached (not on EC2)."""
        for attempt in range(self.config.lifecycle_attempts):
            try:
                return await asyncio.to_thread(self.client.lifecycle) == "spot"
            except ImdsError as e:
                last = e
                if attempt + 1 < self.config.lifecycle_attempts:
                    await self._sleep(self.config.poll_s)
        log.warning("not watching for spot interruptions: %s (tried %d times)", last, self.config.lifecycle_attempts)
        return None

    async def run(self, max_polls: int | None = None) -> InterruptionNotice | None:
        """Watch until a notice arrives (then leave once and return it)."""
        spot = await self.is_spot()
        if not spot:
            if spot is False:
                log.info("on-demand instance: no spot interruption watch")
            return None
        log.info("spot instance: watching %s every %.0fs", ACTION_PATH, self.config.poll_s)
        failing = False
        while max_polls is None or self.polls < max_polls:
            self.polls += 1
            try:
                notice = await asyncio.to_thread(self.client.notice)
            except ImdsError as e:
                if not failing:  # once per outage, not every 5 s
                    log.warning("spot watch: %s; retrying every %.0fs", e, self.config.poll_s)
                failing = True
                notice = None
            else:
                if failing:
                    log.info("spot watch: instance metadata reachable again")
                failing = False
            if notice is not None:
                self.notice = notice
                log.warning("spot interruption notice: %s at %s; %s", notice.action, notice.time,
                            "withdrawing services, keeping the node's name" if notice.keeps_name
                            else "leaving the mesh")
                await self._leave(notice)
                return notice
            await self._sleep(self.config.poll_s)
        return None
