"""The one door to boto3: clients per (service, region), retries, typed errors, call counts.

Every AWS call the builder makes goes through `Aws.call(service, region,
"OperationName", ...)`, named as IAM names it (ec2:CreateVpc), so that

- throttling is retried here, with exponential backoff and full jitter,
  a bounded number of times, on an injected sleep and random generator
  (botocore's own retries are switched off so there is one policy, ours);
- failures become typed errors with one clear line: missing credentials,
  a denied call naming the IAM action to grant, a throttle that never eased;
- calls are counted (benchmarks report them) and observable through
  botocore's event hooks (the policy test records every operation).

boto3 is imported lazily: `meshctl --help` must not pay for it.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from meshcore import backoff
from meshcore.errors import (FailedPrecondition, InvalidArgument, MeshError, PermissionDenied, Unauthenticated,
                             Unavailable)

THROTTLE_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded",
    "TooManyRequestsException", "RequestThrottled", "RequestThrottledException",
    "SlowDown", "ServiceUnavailable", "ServiceUnavailableException", "Unavailable",
    "InternalError", "InternalFailure", "InternalServerError",
})
DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation",
                          "UnauthorizedException"})
AUTH_CODES = frozenset({"AuthFailure", "InvalidClientTokenId", "ExpiredToken", "ExpiredTokenException",
                        "SignatureDoesNotMatch", "UnrecognizedClientException", "InvalidAccessKeyId"})

# boto3 service name → IAM action prefix, where they differ.
IAM_PREFIX = {"service-quotas": "servicequotas", "elbv2": "elasticloadbalancing"}

CREDENTIALS_HINT = ("set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                    "or run `aws configure` / `aws sso login`")


class AwsError(FailedPrecondition):
    """AWS refused a call for a reason other than permissions, credentials or throttling."""

    def __init__(self, message: str, aws_code: str, action: str, region: str) -> None:
        super().__init__(message, aws_code=aws_code, action=action, region=region)
        self.aws_code = aws_code
        self.action = action
        self.region = region


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with full jitter: the mesh's capped schedule
    (meshcore.backoff), each wait drawn uniformly below it, as AWS advises for throttling."""

    max_attempts: int = 8
    base_s: float = 0.5
    max_s: float = 20.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds before the retry that follows failed attempt `attempt` (0-based)."""
        return rng.uniform(0.0, backoff.delay(attempt + 1, self.base_s, self.max_s, jitter=0))


SessionFactory = Callable[[], Any]


def default_session_factory() -> Any:
    import boto3

    return boto3.session.Session()


class Aws:
    """Clients and calls for one account. Thread-safe: regions are applied in parallel."""

    def __init__(self, session_factory: SessionFactory = default_session_factory, *,
                 endpoint_url: str | None = None,
                 endpoint_urls: Mapping[str, str] | None = None,
                 retry: RetryPolicy = RetryPolicy(),
                 sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None,
                 on_client: Callable[[Any], None] | None = None,
                 clients: dict[tuple[str, str, str | None], Any] | None = None) -> None:
        """`clients` lets short-lived Aws objects of one process share clients (each costs ~50 ms to make)."""
        self._session_factory = session_factory
        self._session: Any = None
        self._endpoint_url = endpoint_url
        self._endpoint_urls = dict(endpoint_urls or {})
        self.retry = retry
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._on_client = on_client
        self._clients: dict[tuple[str, str, str | None], Any] = {} if clients is None else clients
        self._lock = threading.Lock()
        self.calls = 0
        self.throttled = 0
        self.operations: Counter[str] = Counter()

    def client(self, service: str, region: str) -> Any:
        url = self._endpoint_urls.get(service, self._endpoint_url)
        key = (service, region, url)
        with self._lock:
            c = self._clients.get(key)
            if c is None:
                from botocore.config import Config
                from botocore.exceptions import ProfileNotFound

                cfg = Config(retries={"total_max_attempts": 1}, connect_timeout=10, read_timeout=60,
                             user_agent_extra="meshctl-infra", max_pool_connections=16)
                try:
                    if self._session is None:
                        self._session = self._session_factory()
                    c = self._session.client(service, region_name=region, endpoint_url=url, config=cfg)
                except ProfileNotFound as e:
                    raise Unauthenticated(f"{e}: {CREDENTIALS_HINT}") from None
                if self._on_client is not None:
                    self._on_client(c)
                self._clients[key] = c
            return c

    def call(self, service: str, region: str, operation: str, **params: Any) -> dict[str, Any]:
        """Call `operation` (IAM/API name, e.g. "CreateVpc") in `region`, retrying throttles."""
        from botocore import xform_name
        from botocore.exceptions import (ClientError, ConnectTimeoutError, EndpointConnectionError,
                                         NoCredentialsError, NoRegionError, ParamValidationError,
                                         PartialCredentialsError, ReadTimeoutError)
        from botocore.parsers import ResponseParserError

        action = f"{IAM_PREFIX.get(service, service)}:{operation}"
        method = getattr(self.client(service, region), xform_name(operation))
        attempt = 0
        while True:
            with self._lock:
                self.calls += 1
                self.operations[action] += 1
            try:
                return method(**params)
            except (NoCredentialsError, PartialCredentialsError):
                raise Unauthenticated(f"no AWS credentials found for {action}: {CREDENTIALS_HINT}") from None
            except NoRegionError:
                raise FailedPrecondition(f"no AWS region for {action}: pass a region") from None
            except ParamValidationError as e:
                raise InvalidArgument(f"{action} in {region}: invalid parameters: {e}") from None
            except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as e:
                err: MeshError = Unavailable(f"cannot reach AWS for {action} in {region}: {e}")
                code = "Unreachable"
            except ResponseParserError:
                err = Unavailable(f"AWS answered {action} in {region} with something unreadable "
                                  f"{self.retry.max_attempts} times; try again later")
                code = "Unreadable"
            except ClientError as e:
                code = e.response.get("Error", {}).get("Code", "Unknown")
                msg = e.response.get("Error", {}).get("Message", "")
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if code in DENIED_CODES or (status == 403 and code not in AUTH_CODES):
                    raise PermissionDenied(
                        f"permission denied for {action} in {region}: grant the IAM action {action} "
                        f"(`meshctl infra policy` prints every action needed)",
                        action=action, region=region) from None
                if code in AUTH_CODES:
                    raise Unauthenticated(f"AWS rejected the credentials for {action} ({code}): "
                                          f"{CREDENTIALS_HINT}") from None
                if code not in THROTTLE_CODES:
                    raise AwsError(f"{action} in {region} failed: {code}: {msg}".rstrip(": "),
                                   aws_code=code, action=action, region=region) from None
                err = Unavailable(f"{action} in {region} still throttled after {self.retry.max_attempts} "
                                  f"attempts ({code}); try again later or lower max_parallel_regions")
            attempt += 1
            with self._lock:
                self.throttled += 1
            if attempt >= self.retry.max_attempts:
                raise err
            self._sleep(self.retry.delay(attempt - 1, self._rng))

    def paginate(self, service: str, region: str, operation: str, key: str,
                 token_in: str = "NextToken", token_out: str = "NextToken",
                 max_pages: int = 100, **params: Any) -> list[Any]:
        """All items under `key` across pages (bounded: a runaway token cannot loop forever)."""
        items: list[Any] = []
        for _ in range(max_pages):
            page = self.call(service, region, operation, **params)
            items.extend(page.get(key, []))
            token = page.get(token_out)
            if not token:
                return items
            params = {**params, token_in: token}
        raise Unavailable(f"{service}:{operation} in {region} returned more than {max_pages} pages")


def aws_from_config(cfg: Any, session_factory: SessionFactory = default_session_factory, *,
                    endpoint_url: str | None = None, endpoint_urls: Mapping[str, str] | None = None,
                    sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None,
                    on_client: Callable[[Any], None] | None = None,
                    clients: dict[tuple[str, str, str | None], Any] | None = None) -> Aws:
    """An Aws whose retry policy comes from an InfraConfig."""
    return Aws(session_factory, endpoint_url=endpoint_url, endpoint_urls=endpoint_urls,
               retry=RetryPolicy(cfg.max_attempts, cfg.backoff_base_s, cfg.backoff_max_s),
               sleep=sleep, rng=rng, on_client=on_client, clients=clients)
