"""What every facts source shares: the error type and a bounded HTTP fetcher."""

from __future__ import annotations

from collections.abc import Callable

#: No metadata document we read is anywhere near this; a larger answer is refused.
MAX_BODY = 64 * 1024


class FactsError(Exception):
    """A source is absent, refused, or answered something that is not what it documents."""


#: fetch(method, path, headers) -> (status, body)
Fetch = Callable[[str, str, dict[str, str]], tuple[int, bytes]]


def http_fetcher(endpoint: str, timeout_s: float) -> Fetch:
    """Blocking HTTP against `endpoint`, never through a proxy, each request within `timeout_s`.
    (urllib is imported here: an agent that reads no metadata service never loads it.)"""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    base = endpoint.rstrip("/")

    def fetch(method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        req = urllib.request.Request(base + path, method=method, headers=headers)
        try:
            with opener.open(req, timeout=timeout_s) as resp:
                return resp.status, _bounded(resp)
        except urllib.error.HTTPError as e:
            return e.code, _bounded(e)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise FactsError(f"{base} unreachable: {getattr(e, 'reason', e)}") from None

    return fetch


def _bounded(resp) -> bytes:
    body = resp.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise FactsError(f"metadata answer larger than {MAX_BODY} bytes")
    return body


def text(body: bytes, what: str, limit: int = 256) -> str:
    """A short printable one-line value, or FactsError naming it."""
    try:
        s = body.decode("ascii").strip()
    except UnicodeDecodeError:
        raise FactsError(f"{what}: not ASCII text") from None
    if len(s) > limit or not s.isprintable():
        raise FactsError(f"{what}: not a short printable value")
    return s
