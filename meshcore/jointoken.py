"""The join string: the one format every part of the mesh reads and writes.

`meshctl token create` prints `<id>.<secret>.<ca-pin>`: `t` and 8 hex digits,
32 hex digits of secret (meshd stores only its SHA-256), and the SHA-256 of
the mesh CA certificate, which lets a new node trust meshd before it has a
certificate (as K3s tokens do). meshd, the agent, `meshctl install` and the
cluster builder all parse and make it here, so there is one rule and one
error text.
"""

from __future__ import annotations

import re
import secrets

from meshcore.errors import InvalidArgument

TOKEN_RE = re.compile(r"^(t[0-9a-f]{8})\.([0-9a-f]{32})(?:\.([0-9a-f]{64}))?$")
TOKEN_RULE = "a join token looks like t1a2b3c4d.<32 hex>.<64 hex>, as printed by `meshctl token create`"


def parse_token(token: str) -> tuple[str, str, str | None]:
    """(id, secret, ca pin or None) of a join string; InvalidArgument naming the format."""
    m = TOKEN_RE.match(token.strip()) if isinstance(token, str) else None
    if not m:
        raise InvalidArgument(f"malformed join token: {TOKEN_RULE}")
    return m.group(1), m.group(2), m.group(3)


def check_token(token: str) -> str:
    """Return `token` stripped if it is a well-formed join string, else InvalidArgument naming the format."""
    parse_token(token)
    return token.strip()


def new_join_string(ca_pin: str) -> str:
    """A fresh join string for the CA with this pin (made by meshd, or up front for a cluster)."""
    return join_string(f"t{secrets.token_hex(4)}", secrets.token_hex(16), ca_pin)


def join_string(token_id: str, secret: str, ca_pin: str) -> str:
    return f"{token_id}.{secret}.{ca_pin}"


#: how a join token parameter that meshd publishes and rotates begins its description: a cluster
#: builder re-applying its join parameters leaves such a parameter to meshd
PUBLISHED_BY_MESHD = "published by meshd"

#: why a join token is never taken from a command line
ARGV_REFUSED = ("a join token on the command line is readable by every local user (ps, /proc/<pid>/cmdline): "
                "put it in a file only root can read and pass --token-file PATH, or set MESH_JOIN_TOKEN")


def read_token_file(path: str) -> str:
    """The join string in `path` (surrounding whitespace removed); InvalidArgument if unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(4096).strip()
    except OSError as e:
        raise InvalidArgument(f"cannot read the join token file {path}: {e.strerror}") from None
