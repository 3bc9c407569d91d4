"""A small AWS STS endpoint that enforces a role's trust policy, `sts:ExternalId` included.

moto's STS hands out credentials for any role and any ExternalId, so a
builder that forgets the external id passes against it and fails against a
customer's account. This double looks the role up in moto's IAM and refuses
the call the way AWS does.

Written from the AWS STS API reference (Query protocol: POST / with an
application/x-www-form-urlencoded body `Action=...&Version=2011-06-15`; XML
answers in the https://sts.amazonaws.com/doc/2011-06-15/ namespace; errors as
`<ErrorResponse><Error><Type/><Code/><Message/></Error><RequestId/></ErrorResponse>`)
and the IAM guide's "How to use an external ID" and policy evaluation logic.
Error texts follow what AWS answers (as recorded in public test snapshots).

Modelled:

- GetCallerIdentity: the caller is found by the access key of the SigV4
  `Authorization` header. Credentials this double issued are that role
  session (`arn:aws:sts::<account>:assumed-role/<role>/<session>`, UserId
  `<RoleId>:<session>`), checked against their session token
  (InvalidClientTokenId, 403) and expiry (ExpiredToken, 403); an `ASIA` key it
  did not issue is InvalidClientTokenId; any other key is moto's user
  `arn:aws:iam::<account>:user/moto`; no signature at all is
  MissingAuthenticationToken (403).
- AssumeRole(RoleArn, RoleSessionName[, ExternalId][, DurationSeconds]):
  - parameter constraints of the API reference → 400 ValidationError
    "N validation error(s) detected: Value '...' at 'durationSeconds' failed to
    satisfy constraint: ..." (DurationSeconds 900..43200, RoleSessionName
    2..64 of `[\\w+=,.@-]`, ExternalId 2..1224 of `[\\w+=,.@:/-]`);
  - a RoleArn that is not `arn:aws:iam::<12 digits>:role/[<path>/]<name>` →
    400 ValidationError "<RoleArn> is invalid" (AWS's answer to a string that
    is no ARN at all; for a well-formed ARN of another kind AWS's answer is
    not documented, the double gives the same);
  - a role in another account, a role moto's IAM does not have (looked up
    with `iam.get_role` against `iam_endpoint`, us-east-1, credentials from
    the environment at `start()`; the path must match too), or a trust policy
    that does not allow the caller → 403 AccessDenied "User: <caller arn> is
    not authorized to perform: sts:AssumeRole on resource: <RoleArn>". AWS
    does not say which of these it was, nor does the double;
  - DurationSeconds above the role's MaxSessionDuration → 400 ValidationError
    "The requested DurationSeconds exceeds the MaxSessionDuration set for this
    role."; above 3600 when the caller is itself a role session (role
    chaining) → the 1-hour-limit ValidationError;
  - success: Credentials (AccessKeyId `ASIA...`, SecretAccessKey,
    SessionToken, Expiration = now + DurationSeconds, default 3600) and
    AssumedRoleUser (AssumedRoleId `<RoleId>:<session>`, Arn
    `arn:aws:sts::<account>:assumed-role/<role name>/<session>`). moto accepts
    any credentials, so these work against the moto server too.

Trust policy evaluation (`trust_allows`): the document may come decoded or
as URL-encoded JSON. Any matching Deny statement refuses; otherwise some
Allow statement must match. A statement matches when its Action (string or
list, `*`/`?` wildcards, case-insensitive) covers `sts:AssumeRole`; its
Principal is `"*"` or has an `AWS` entry naming `"*"`, the account id,
`arn:aws:iam::<account>:root`, or the caller itself (the user's ARN; for a
role session the role's ARN or the session's ARN); and its Condition, if
any, holds. The only condition understood is `StringEquals` on
`sts:ExternalId` (a string or a list of allowed ids); a request without
ExternalId fails it. Not modelled, and never satisfied: every other
condition operator or key (so a Deny carrying one does not apply),
NotAction, NotPrincipal, Service/Federated principals. Neither are
identity-based policies of the caller, session policies (Policy,
PolicyArns), tags, MFA, SourceIdentity, regions, or the SigV4 signature
itself (only the access key and session token are read).

Faults follow testbed/doubles/httpdouble.py (`faults.fail_next(n, status)`,
`faults.latency_s`, `faults.unreachable`); an injected status answers in
STS's own error format: 400 is Throttling "Rate exceeded" (`throttle_next(n)`
is the shorthand), 500 InternalFailure, 503 ServiceUnavailable. `requests`
keeps the form parameters of every call answered, faulted ones included
(a dropped connection answers nothing and is not kept), so a test can check
that every AssumeRole carried ExternalId. A real HTTP server on 127.0.0.1,
port 0, in a thread.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote
from xml.sax.saxutils import escape

from testbed.doubles.httpdouble import HTTPDouble, Reply, Request

NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"
VERSION = "2011-06-15"
ROLE_ARN = re.compile(r"^arn:aws:iam::(\d{12}):role/((?:[\w+=,.@-]+/)*)([\w+=,.@-]{1,64})$")
SESSION_NAME = re.compile(r"^[\w+=,.@-]*$")
EXTERNAL_ID = re.compile(r"^[\w+=,.@:/-]*$")
_ACCESS_KEY = re.compile(r"Credential=([^/,\s]+)/")
_KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"

# Injected statuses, answered as STS would: (code, message, fault type).
FAULTS = {
    400: ("Throttling", "Rate exceeded", "Sender"),
    500: ("InternalFailure", "An internal error has occurred.", "Receiver"),
    503: ("ServiceUnavailable", "Service is unavailable.", "Receiver"),
}


class StsError(Exception):
    def __init__(self, status: int, code: str, message: str, kind: str = "Sender") -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.kind = status, code, message, kind


@dataclass
class Session:
    """Credentials this double issued for one AssumeRole."""

    access_key: str
    secret_key: str
    token: str
    expires: float
    role_arn: str
    arn: str  # arn:aws:sts::<account>:assumed-role/<name>/<session>
    user_id: str  # <RoleId>:<session>


@dataclass
class Caller:
    arn: str
    user_id: str
    principals: frozenset[str]  # principal values in a trust policy that name this caller
    session: Session | None = None


class StsDouble(HTTPDouble):
    """STS for the moto account. `start()`, `url`, `stop()`, `requests`, `faults`, `throttle_next`."""

    def __init__(self, iam_endpoint: str, account: str = "123456789012",
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.iam_endpoint = iam_endpoint
        self.account = account
        self.clock = clock
        self.requests: list[dict[str, str]] = []
        self.sessions: dict[str, Session] = {}  # by access key id
        self._iam: Any = None
        self._iam_lock = threading.Lock()

    # --- control --------------------------------------------------------------
    def throttle_next(self, n: int = 1) -> None:
        """The next `n` calls answer 400 Throttling "Rate exceeded"."""
        self.faults.fail_next(n, 400)

    def expire_sessions(self) -> None:
        """Every credential issued so far is now expired (ExpiredToken on use)."""
        with self.lock:
            for s in self.sessions.values():
                s.expires = self.clock() - 1

    @property
    def user_arn(self) -> str:
        return f"arn:aws:iam::{self.account}:user/moto"

    def start(self) -> "StsDouble":
        import boto3
        from botocore.config import Config

        # Made here, so the credentials are the environment's at start (the tests' fake ones).
        self._iam = boto3.session.Session().client(
            "iam", endpoint_url=self.iam_endpoint, region_name="us-east-1",
            config=Config(retries={"total_max_attempts": 2}, connect_timeout=5, read_timeout=10))
        super().start()
        return self

    def __enter__(self) -> "StsDouble":
        return self.start()

    # --- HTTPDouble hooks ---------------------------------------------------------
    def is_write(self, req: Request, reply: Reply) -> bool:
        return False  # issuing credentials changes nothing in the account

    def fault_reply(self, req: Request, status: int) -> Reply:
        self._remember(req)
        code, message, kind = FAULTS.get(status, ("InjectedFault", f"injected fault {status}", "Receiver"))
        return _error(StsError(status, code, message, kind))

    def route(self, req: Request) -> Reply:
        params = self._remember(req)
        try:
            action = params.get("Action", "")
            handler = {"GetCallerIdentity": self._get_caller_identity, "AssumeRole": self._assume_role}.get(action)
            if handler is None or params.get("Version") != VERSION:
                raise StsError(400, "InvalidAction",
                               f"Could not find operation {action} for version {params.get('Version', '')}")
            caller = self._caller(req)
            return _ok(action, handler(caller, params))
        except StsError as e:
            return _error(e)
        except Exception as e:  # a bug or an unreachable moto: visible, and in STS's own format
            return _error(StsError(500, "InternalFailure", f"double failed: {type(e).__name__}: {e}", "Receiver"))

    # --- identity ---------------------------------------------------------------
    def _remember(self, req: Request) -> dict[str, str]:
        pairs = list(req.query_list)
        if req.body:
            pairs += parse_qsl(req.body.decode("utf-8", "replace"), keep_blank_values=True)
        params = dict(pairs)
        with self.lock:
            self.requests.append(dict(params))
        return params

    def _caller(self, req: Request) -> Caller:
        m = _ACCESS_KEY.search(req.headers.get("authorization", ""))
        key = m.group(1) if m else req.query.get("X-Amz-Credential", "").split("/")[0]
        if not key:
            raise StsError(403, "MissingAuthenticationToken", "Request is missing Authentication Token")
        with self.lock:
            session = self.sessions.get(key)
        if session is None:
            if key.startswith("ASIA"):
                raise StsError(403, "InvalidClientTokenId", "The security token included in the request is invalid.")
            return Caller(self.user_arn, _unique_id("AIDA", self.user_arn), frozenset({self.user_arn}))
        token = req.headers.get("x-amz-security-token") or req.query.get("X-Amz-Security-Token", "")
        if token != session.token:
            raise StsError(403, "InvalidClientTokenId", "The security token included in the request is invalid.")
        if self.clock() >= session.expires:
            raise StsError(403, "ExpiredToken", "The security token included in the request is expired")
        return Caller(session.arn, session.user_id, frozenset({session.arn, session.role_arn}), session)

    # --- actions ------------------------------------------------------------------
    def _get_caller_identity(self, caller: Caller, params: dict[str, str]) -> dict[str, str]:
        return {"Arn": caller.arn, "UserId": caller.user_id, "Account": self.account}

    def _assume_role(self, caller: Caller, params: dict[str, str]) -> dict[str, Any]:
        role_arn = params.get("RoleArn")
        session_name = params.get("RoleSessionName")
        external_id = params.get("ExternalId")
        duration = params.get("DurationSeconds")
        problems = []
        if role_arn is None:
            problems.append("Value null at 'roleArn' failed to satisfy constraint: Member must not be null")
        elif not 20 <= len(role_arn) <= 2048:
            bound = "greater than or equal to 20" if len(role_arn) < 20 else "less than or equal to 2048"
            problems.append(f"Value '{role_arn}' at 'roleArn' failed to satisfy constraint: "
                            f"Member must have length {bound}")
        if session_name is None:
            problems.append("Value null at 'roleSessionName' failed to satisfy constraint: Member must not be null")
        else:
            problems += _string_problems(session_name, "roleSessionName", 2, 64, SESSION_NAME, r"[\w+=,.@-]*")
        if external_id is not None:
            problems += _string_problems(external_id, "externalId", 2, 1224, EXTERNAL_ID, r"[\w+=,.@:\/-]*")
        seconds = 3600
        if duration is not None:
            try:
                seconds = int(duration)
            except ValueError:
                raise StsError(400, "ValidationError", f"Value '{duration}' for parameter DurationSeconds is invalid.")
            if seconds < 900:
                problems.append(f"Value '{duration}' at 'durationSeconds' failed to satisfy constraint: "
                                "Member must have value greater than or equal to 900")
            elif seconds > 43200:
                problems.append(f"Value '{duration}' at 'durationSeconds' failed to satisfy constraint: "
                                "Member must have value less than or equal to 43200")
        if problems:
            n = len(problems)
            raise StsError(400, "ValidationError",
                           f"{n} validation error{'s' if n > 1 else ''} detected: " + "; ".join(problems))
        assert role_arn is not None and session_name is not None

        m = ROLE_ARN.match(role_arn)
        if m is None:
            raise StsError(400, "ValidationError", f"{role_arn} is invalid")
        account, name = m.group(1), m.group(3)
        denied = StsError(403, "AccessDenied",
                          f"User: {caller.arn} is not authorized to perform: sts:AssumeRole on resource: {role_arn}")
        if account != self.account:
            raise denied
        role = self._get_role(name)
        if role is None or role.get("Arn") != role_arn:
            raise denied
        if not trust_allows(role.get("AssumeRolePolicyDocument"), account=self.account,
                            caller=caller.principals, external_id=external_id):
            raise denied
        if caller.session is not None and seconds > 3600:
            raise StsError(400, "ValidationError", "The requested DurationSeconds exceeds the 1 hour session limit "
                                                   "for roles assumed by role chaining.")
        if seconds > int(role.get("MaxSessionDuration") or 3600):
            raise StsError(400, "ValidationError",
                           "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.")

        role_id = str(role.get("RoleId") or _unique_id("AROA", role_arn))
        session = Session(
            access_key="ASIA" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16)),
            secret_key=base64.b64encode(secrets.token_bytes(30)).decode(),
            token=base64.b64encode(secrets.token_bytes(192)).decode(),
            expires=self.clock() + seconds, role_arn=role_arn,
            arn=f"arn:aws:sts::{self.account}:assumed-role/{name}/{session_name}",
            user_id=f"{role_id}:{session_name}")
        with self.lock:
            self.sessions[session.access_key] = session
        return {"Credentials": {"AccessKeyId": session.access_key, "SecretAccessKey": session.secret_key,
                                "SessionToken": session.token,
                                "Expiration": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(session.expires))},
                "AssumedRoleUser": {"AssumedRoleId": session.user_id, "Arn": session.arn}}

    def _get_role(self, name: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            with self._iam_lock:
                return self._iam.get_role(RoleName=name)["Role"]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "NoSuchEntity":
                return None
            raise


# --- trust policy -----------------------------------------------------------------
def trust_allows(document: Any, *, account: str, caller: Iterable[str] = (), external_id: str | None) -> bool:
    """Whether a role's trust policy lets `caller` (principal ARNs) of `account` call sts:AssumeRole."""
    policy = _decode(document)
    statements = policy.get("Statement", []) if isinstance(policy, dict) else []
    if isinstance(statements, dict):
        statements = [statements]
    names = {"*", account, f"arn:aws:iam::{account}:root", *caller}
    matching = [s for s in statements if isinstance(s, dict) and _matches(s, names, external_id)]
    if any(s.get("Effect") == "Deny" for s in matching):
        return False
    return any(s.get("Effect") == "Allow" for s in matching)


def _decode(document: Any) -> Any:
    if isinstance(document, (bytes, str)):
        text = document.decode() if isinstance(document, bytes) else document
        try:
            return json.loads(text)
        except ValueError:
            return json.loads(unquote(text))
    return document or {}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _matches(statement: dict[str, Any], names: set[str], external_id: str | None) -> bool:
    if "NotAction" in statement or "NotPrincipal" in statement:
        return False
    actions = [a for a in _as_list(statement.get("Action")) if isinstance(a, str)]
    if not any(fnmatch.fnmatchcase("sts:assumerole", a.lower()) for a in actions):
        return False
    principal = statement.get("Principal")
    if principal != "*":
        if not isinstance(principal, dict) or not set(_as_list(principal.get("AWS"))) & names:
            return False
    return _condition_holds(statement.get("Condition") or {}, external_id)


def _condition_holds(condition: Any, external_id: str | None) -> bool:
    if not isinstance(condition, dict):
        return False
    for operator, keys in condition.items():
        if operator != "StringEquals" or not isinstance(keys, dict):
            return False
        for key, allowed in keys.items():
            if key.lower() != "sts:externalid" or external_id is None or external_id not in _as_list(allowed):
                return False
    return True


# --- wire format -------------------------------------------------------------------
def _string_problems(value: str, field: str, low: int, high: int, pattern: re.Pattern[str], shown: str) -> list[str]:
    out = []
    if len(value) < low:
        out.append(f"Value '{value}' at '{field}' failed to satisfy constraint: "
                   f"Member must have length greater than or equal to {low}")
    if len(value) > high:
        out.append(f"Value '{value}' at '{field}' failed to satisfy constraint: "
                   f"Member must have length less than or equal to {high}")
    if not pattern.match(value):
        out.append(f"Value '{value}' at '{field}' failed to satisfy constraint: "
                   f"Member must satisfy regular expression pattern: {shown}")
    return out


def _unique_id(prefix: str, seed: str) -> str:
    digest = hashlib.sha256(seed.encode()).digest()
    return prefix + "".join(_KEY_ALPHABET[b % 32] for b in digest[:17])


def _xml(value: Any) -> str:
    if isinstance(value, dict):
        return "".join(f"<{k}>{_xml(v)}</{k}>" for k, v in value.items())
    return escape(str(value))


def _ok(action: str, result: dict[str, Any]) -> Reply:
    rid = str(uuid.uuid4())
    body = (f'<{action}Response xmlns="{NAMESPACE}"><{action}Result>{_xml(result)}</{action}Result>'
            f"<ResponseMetadata><RequestId>{rid}</RequestId></ResponseMetadata></{action}Response>")
    return Reply(200, body.encode(), {"Content-Type": "text/xml", "x-amzn-RequestId": rid})


def _error(e: StsError) -> Reply:
    rid = str(uuid.uuid4())
    body = (f'<ErrorResponse xmlns="{NAMESPACE}"><Error><Type>{e.kind}</Type><Code>{escape(e.code)}</Code>'
            f"<Message>{escape(e.message)}</Message></Error><RequestId>{rid}</RequestId></ErrorResponse>")
    return Reply(e.status, body.encode(), {"Content-Type": "text/xml", "x-amzn-RequestId": rid})
