"""Names: RFC 1123 labels, ports and the default service name.

A mesh name is one DNS label: 1-63 characters, lowercase letters, digits and
'-', starting and ending with a letter or digit (RFC 1123 label): node,
cluster and admin names.

A service name is stricter: a DNS-1035 label, which also starts with a
letter, because that is the rule of Kubernetes Service names and every
service is mirrored as `<name>.default.svc.cluster.local`. Names stored
before this rule keep resolving; the Kubernetes mirror reports them as not
mirrored (`is_service_name`).
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Mapping

from meshcore.errors import InvalidArgument

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
NAME_RULE = "a name must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit (RFC 1123 label)"


def check_name(name: str, what: str = "name") -> str:
    """Return `name` if it is a valid RFC 1123 label, else raise InvalidArgument naming the rule."""
    return _check(name, what, _LABEL, "-", NAME_RULE, "must not start or end with '-'")


_DNS1035 = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
SERVICE_NAME_RULE = ("a service name must be 1-63 lowercase letters, digits or '-', starting with a letter and "
                     "ending with a letter or digit (DNS-1035 label, as Kubernetes Service names)")


def check_service_name(name: str, what: str = "service name") -> str:
    """Return `name` if it is a DNS-1035 label, else raise InvalidArgument naming the rule."""
    if isinstance(name, str) and name and len(name) <= 63 and name[0].isdigit() and _LABEL.match(name):
        raise InvalidArgument(f"invalid {what} '{name}': must start with a letter; {SERVICE_NAME_RULE}")
    return _check(name, what, _DNS1035, "-", SERVICE_NAME_RULE, "must not start or end with '-'")


def is_service_name(name: str) -> bool:
    return bool(isinstance(name, str) and _DNS1035.match(name))


_CLUSTER = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")
CLUSTER_NAME_RULE = ("a cluster name must be 1-63 lowercase letters, digits, '-' or '.', "
                     "starting and ending with a letter or digit")


def check_cluster_name(name: str, what: str = "cluster name") -> str:
    """Grid's cluster name rule: an RFC 1123 label that may also contain '.'."""
    return _check(name, what, _CLUSTER, "-.", CLUSTER_NAME_RULE, "must start and end with a letter or digit")


def _check(name: str, what: str, pattern: re.Pattern, punct: str, rule: str, edge: str) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"invalid {what} '': {rule}")
    if len(name) > 63:
        raise InvalidArgument(f"invalid {what} '{name[:20]}…': longer than 63 characters; {rule}")
    if not pattern.match(name):
        if name.lower() != name:
            why = "uppercase letters are not allowed"
        elif name[0] in punct or name[-1] in punct:
            why = edge
        else:
            bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in punct))})
            why = f"character(s) {''.join(bad)!r} not allowed" if bad else "not a valid label"
        raise InvalidArgument(f"invalid {what} '{name}': {why}; {rule}")
    return name


def is_name(name: str) -> bool:
    return bool(isinstance(name, str) and _LABEL.match(name))


def normalize_name(raw: str) -> str:
    """Turn a host or cluster name into a valid label: a host name's first label
    (ip-10-4-0-4.ec2.internal -> ip-10-4-0-4), lowercased, '_' and spaces to '-',
    anything else dropped, trimmed to 63. Raises InvalidArgument if nothing is left."""
    s = raw.strip().lower().lstrip(".").split(".")[0]
    s = re.sub(r"[_\s]+", "-", s)
    s = re.sub(r"[^a-z0-9-]", "", s)
    s = re.sub(r"-{2,}", "-", s).strip("-")[:63].strip("-")
    if not s:
        raise InvalidArgument(f"cannot derive a name from '{raw}': {NAME_RULE}")
    return s


def check_port(port: int) -> int:
    """Return `port` if it is 1-65535, else raise InvalidArgument naming the rule."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidArgument(f"invalid port {port!r}: a port must be between 1 and 65535")
    return port


def default_service_name(env: Mapping[str, str], hostname: str | None = None) -> str:
    """The VM's SkyPilot cluster name when launched by SkyPilot, else the host name.

    SkyPilot gives its tasks SKYPILOT_CLUSTER_INFO, a JSON object whose
    `cluster_name` is the `sky launch -c` name. A default that is no service
    name (a host called 4090-box) is refused with the rule: give --name.
    """
    info = env.get("SKYPILOT_CLUSTER_INFO")
    source, raw = "host name", hostname if hostname is not None else socket.gethostname()
    if info:
        try:
            name = json.loads(info).get("cluster_name")
        except (ValueError, AttributeError):
            name = None
        if isinstance(name, str) and name:
            source, raw = "SkyPilot cluster name", name
    name = normalize_name(raw)
    try:
        return check_service_name(name)
    except InvalidArgument as e:
        raise InvalidArgument(f"{e} (derived from the {source} {raw!r}): give one with --name") from None


# Node labels follow Kubernetes' label syntax (k8s.io/apimachinery validation),
# since they become K3s node labels: an optional DNS-subdomain prefix and '/',
# then a name of at most 63 characters; a value is empty or such a name.
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_RULE = ("a label key is [prefix/]name and a value is empty or a name: names are at most 63 "
              "characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit; "
              "a prefix is a DNS subdomain of at most 253 characters (Kubernetes label syntax)")


def is_label(key: str, value: str) -> bool:
    if not isinstance(key, str) or not isinstance(value, str):
        return False
    prefix, _, name = key.rpartition("/")
    ok = bool(_LABEL_NAME.match(name)) and (not prefix or (len(prefix) <= 253 and bool(_DNS_SUBDOMAIN.match(prefix))))
    return ok and (value == "" or bool(_LABEL_NAME.match(value)))


def check_label(key: str, value: str, what: str = "label") -> None:
    """Raise InvalidArgument naming the rule unless key=value is a valid label."""
    if not is_label(key, value):
        raise InvalidArgument(f"invalid {what} {key}={value!r}: {LABEL_RULE}")


def check_labels(labels: Mapping[str, str], what: str = "label") -> dict[str, str]:
    """Each label by the label rule, and the set by its bounds (meshcore.limits): labels travel
    in gossip facts, which must fit one datagram."""
    from meshcore import limits
    if len(labels) > limits.MAX_LABELS:
        raise InvalidArgument(f"{len(labels)} {what}s: at most {limits.MAX_LABELS}")
    size = sum(len(k.encode()) + len(v.encode()) for k, v in labels.items()
               if isinstance(k, str) and isinstance(v, str))
    if size > limits.MAX_LABELS_BYTES:
        raise InvalidArgument(f"{what}s take {size} bytes (keys and values): at most {limits.MAX_LABELS_BYTES}")
    for k, v in labels.items():
        check_label(k, v, what)
    return dict(labels)


def parse_labels(items: list[str] | tuple[str, ...], what: str = "--label") -> dict[str, str]:
    """`key=value` strings (as typed after --label) to a dict, each checked by the label rule."""
    labels: dict[str, str] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise InvalidArgument(f"invalid {what} {item!r}: expected key=value")
        check_label(k, v, what)
        labels[k] = v
    return labels


def parse_hostport(addr: str, what: str = "address", *, allow_zero: bool = False,
                   default_host: str | None = None,
                   error: type[InvalidArgument] = InvalidArgument) -> tuple[str, int]:
    """'host:port' or '[v6]:port' to (host, port); InvalidArgument naming the rule.

    `allow_zero` admits port 0 (bind to any free port); `default_host` fills in an
    empty host (':8080' -> (default_host, 8080)); without it a host is required.
    `error` is the exception raised (ConfigError for options and files).
    """
    host, sep, port = addr.rpartition(":") if isinstance(addr, str) else ("", "", "")
    host = host.strip("[]")
    lo = 0 if allow_zero else 1
    if not host and default_host is not None:
        host = default_host
    if not sep or not host or not port.isdigit() or not lo <= int(port) <= 65535:
        raise error(f"invalid {what} {addr!r}: expected host:port with a port of {lo}-65535")
    return host, int(port)
