"""A short-lived cluster join token, minted by meshd and republished before it expires.

`meshd --publish-join-token ssm:<region>:<parameter>` keeps one join token
(unlimited uses, `--publish-join-token-ttl`, 24 h by default) in an SSM
parameter, where the cluster's VMs read it at boot with their instance
role. Once the published token has less than `--publish-join-token-overlap`
left (6 h by default), meshd mints a fresh one and overwrites the parameter;
the previous one keeps working until its own expiry, so a VM that read it a
moment before the change still joins, and then it is refused like any
expired token. A token revoked by hand (`meshctl token revoke`) is replaced
at the next check.

What is published is decided from what is there, not from memory: the
parameter's token is looked up in the store, so a restarted meshd, or
another replica that became leader, keeps the current token instead of
minting one per start. Only the leader publishes (replicas on etcd elect
one; a single meshd leads alone). The parameter's description begins with
`meshcore.jointoken.PUBLISHED_BY_MESHD`, which tells the cluster builder
to leave it to meshd.

boto3 is imported only when publishing is configured (the `aws` extra);
credentials and endpoint come from its usual chain (the instance role on
EC2, AWS_ENDPOINT_URL for a test server).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from meshcore.clock import SYSTEM, Clock
from meshcore.errors import ConfigError, InvalidArgument
from meshcore.jointoken import PUBLISHED_BY_MESHD, parse_token
from meshd import metrics
from meshd.admission import PREFIX, Admission, TokenRecord

log = logging.getLogger("meshd")

TARGET_RE = re.compile(r"^ssm:([a-z]{2}(?:-[a-z]+)+-\d):(/[A-Za-z0-9_.\-/]{1,1010})$")
TARGET_RULE = "a join token target looks like ssm:us-east-1:/mesh/<cluster>/join-token"
DEFAULT_TTL_S = 24 * 3600.0
DEFAULT_OVERLAP_S = 6 * 3600.0
CHECK_S = 60.0


def parse_target(target: str) -> tuple[str, str]:
    """(region, parameter name) of `ssm:<region>:<name>`; ConfigError naming the rule."""
    m = TARGET_RE.match(target or "")
    if not m:
        raise ConfigError(f"invalid --publish-join-token {target!r}: {TARGET_RULE}")
    return m.group(1), m.group(2)


class Sink(Protocol):
    def read(self) -> str | None: ...

    def write(self, value: str, description: str) -> None: ...


class SsmParameter:
    """One SecureString parameter (boto3, imported here only)."""

    def __init__(self, region: str, name: str) -> None:
        try:
            import boto3
        except ImportError:
            raise ConfigError("--publish-join-token needs boto3: install meshd with the aws extra "
                              "(pip install 'mesh[aws]')") from None
        self.name = name
        self._ssm = boto3.client("ssm", region_name=region)

    def read(self) -> str | None:
        try:
            return self._ssm.get_parameter(Name=self.name, WithDecryption=True)["Parameter"]["Value"]
        except self._ssm.exceptions.ParameterNotFound:
            return None

    def write(self, value: str, description: str) -> None:
        self._ssm.put_parameter(Name=self.name, Value=value, Type="SecureString", Overwrite=True,
                                Description=description)


@dataclass
class Publisher:
    admission: Admission
    sink: Sink
    ttl_s: float = DEFAULT_TTL_S
    overlap_s: float = DEFAULT_OVERLAP_S
    labels: dict[str, str] = field(default_factory=dict)
    clock: Clock = SYSTEM
    is_leader: Callable[[], bool] = lambda: True
    check_s: float = 0.0  # 0: CHECK_S, or a quarter of the time between two tokens when that is shorter
    published: int = 0  # tokens published by this process
    _pending: tuple[TokenRecord, str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.ttl_s:
            raise ConfigError(f"invalid --publish-join-token-ttl {self.ttl_s}: at least 1 second")
        if not 0 <= self.overlap_s < self.ttl_s:
            raise ConfigError(f"invalid --publish-join-token-overlap {self.overlap_s}: from 0 to less than the TTL "
                              f"({self.ttl_s:.0f} s)")
        self.check_s = self.check_s or min(CHECK_S, max(0.2, (self.ttl_s - self.overlap_s) / 4))

    async def current(self) -> TokenRecord | None:
        """The published token's record if it is this mesh's, known, not revoked, not expired and
        not longer-lived than the TTL."""
        value = await asyncio.to_thread(self.sink.read)
        if not value:
            return None
        try:
            token_id, _, pin = parse_token(value)
        except InvalidArgument:
            return None
        if pin is not None and pin != self.admission.ca_pin:
            return None
        kv = await self.admission.store.get(PREFIX + token_id)
        if kv is None:
            return None
        rec = TokenRecord.decode(kv.value)
        left = rec.expires_at - self.clock.wall()
        # one living longer than the TTL was not published by this configuration (a long-lived token a
        # setup script stored before, or a shorter TTL now): replaced, not kept until its overlap
        return None if rec.revoked or left <= 0 or left > self.ttl_s else rec

    async def step(self) -> TokenRecord | None:
        """Publish a fresh token if the current one is missing or within the overlap of its expiry;
        the new token's record if one was published."""
        if not self.is_leader():
            return None
        rec = await self.current()
        if rec is not None and rec.expires_at - self.clock.wall() > self.overlap_s:
            return None
        # a token minted for a write that failed is written again, not replaced by one more record per check
        if self._pending is None or self._pending[0].expires_at - self.clock.wall() <= self.overlap_s:
            self._pending = await self.admission.create(
                ttl_s=max(1, int(self.ttl_s)), max_uses=0, labels=self.labels,
                description="published join token (--publish-join-token)")
        new, token = self._pending
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(new.expires_at))
        await asyncio.to_thread(self.sink.write, token, f"{PUBLISHED_BY_MESHD}; token {new.id}, expires {expires}")
        self._pending = None
        self.published += 1
        metrics.JOIN_TOKENS_PUBLISHED.inc()
        log.info("published join token %s (expires %s); the previous one expires on its own", new.id, expires)
        return new

    async def run(self) -> None:
        """Check every `check_s` until cancelled; a failed check (SSM away, the store away) is retried."""
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - logged and retried at the next check
                metrics.JOIN_TOKEN_PUBLISH_ERRORS.inc()
                log.warning("join token not published: %s", e)
            await asyncio.sleep(self.check_s)


def from_config(target: str, admission: Admission, **kw: Any) -> Publisher:
    region, name = parse_target(target)
    return Publisher(admission, SsmParameter(region, name), **kw)
