"""Connections from meshctl: the agent's local socket and meshd's admin socket.

On a VM, meshctl talks to its agent (which forwards writes to meshd with the
node's certificate). On the main node, admin commands go to meshd's root-only
unix socket. gRPC errors become one clear line; an unreachable socket says
which daemon to check.

Commands both daemons answer (services, nodes, status, unexpose) go to the
daemon the user meant, never to the other one as a fallback: to meshd with
`--admin`, or on the main node when no agent socket was given and none is at
the default path; to the agent otherwise, and a missing agent socket is an
error naming it. (A mistyped agent socket once sent `unexpose` to meshd,
which removed another node's service.)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from mesh.v1 import admission_pb2_grpc, agent_pb2_grpc, catalog_pb2_grpc, nodes_pb2_grpc
from meshctl.output import fail

AGENT_SOCKET = "/run/meshagent/agent.sock"
ADMIN_SOCKET = "/run/meshd/admin.sock"
T = TypeVar("T")
#: the daemon and socket the last channel was opened to, named in errors
_tried = ""


@dataclass
class Endpoints:
    agent_socket: str = os.environ.get("MESH_AGENT_SOCKET", AGENT_SOCKET)
    admin_socket: str = os.environ.get("MESHD_ADMIN_SOCKET", ADMIN_SOCKET)
    #: with an admin certificate (`meshctl admin cert`), admin calls go over mTLS from anywhere
    cert_dir: str = os.environ.get("MESH_ADMIN_CERT_DIR", "")
    coordinator: str = os.environ.get("MESH_COORDINATOR", "")
    timeout: float = 10.0
    #: the agent socket was given (--agent-socket or MESH_AGENT_SOCKET): never go to meshd instead
    agent_given: bool = "MESH_AGENT_SOCKET" in os.environ
    #: --admin: commands both daemons answer go to meshd
    admin: bool = False

    def agent(self) -> agent_pb2_grpc.AgentServiceStub:
        return agent_pb2_grpc.AgentServiceStub(self._channel(self.agent_socket, "meshagent"))

    def admission(self) -> admission_pb2_grpc.AdmissionServiceStub:
        return admission_pb2_grpc.AdmissionServiceStub(self._admin())

    def nodes(self) -> nodes_pb2_grpc.NodeServiceStub:
        return nodes_pb2_grpc.NodeServiceStub(self._admin())

    def catalog(self) -> catalog_pb2_grpc.CatalogServiceStub:
        return catalog_pb2_grpc.CatalogServiceStub(self._admin())

    def _admin(self) -> grpc.Channel:
        if not self.cert_dir:
            return self._channel(self.admin_socket, "meshd")
        return grpc.secure_channel(self.coordinator, self._admin_credentials(), options=self._tls_options())

    def admin_aio(self) -> grpc.aio.Channel:
        """The same door to meshd as the admin stubs, as an asyncio channel (call it inside the loop)."""
        if not self.cert_dir:
            self._channel(self.admin_socket, "meshd").close()  # the same checks and errors
            return grpc.aio.insecure_channel(f"unix:{self.admin_socket}")
        return grpc.aio.secure_channel(self.coordinator, self._admin_credentials(), options=self._tls_options())

    @property
    def admin_door(self) -> str:
        """meshd as the admin stubs reach it, for messages."""
        return f"meshd at {self.coordinator}" if self.cert_dir else f"meshd at {self.admin_socket}"

    def _admin_credentials(self) -> grpc.ChannelCredentials:
        if not self.coordinator:
            fail("MESH_ADMIN_CERT_DIR is set but not MESH_COORDINATOR (meshd's host:port)")
        files = {n: os.path.join(self.cert_dir, n) for n in ("ca.crt", "admin.key", "admin.crt")}
        try:
            ca, key, crt = (open(files[n], "rb").read() for n in ("ca.crt", "admin.key", "admin.crt"))
        except OSError as e:
            fail(f"cannot read the admin certificate in {self.cert_dir}: {e.strerror} ({e.filename})")
        return grpc.ssl_channel_credentials(ca, key, crt)

    @staticmethod
    def _tls_options() -> list[tuple[str, str]]:
        from meshcore.pki import SERVER_NAME
        return [("grpc.ssl_target_name_override", SERVER_NAME)]

    def to_agent(self) -> bool:
        """Whether a command both daemons answer goes to the agent (see the module docstring)."""
        if self.admin:
            return False
        if self.agent_given or os.path.exists(self.agent_socket):
            return True
        return not (self.cert_dir or os.path.exists(self.admin_socket))  # the main node, with no agent

    def _channel(self, path: str, daemon: str) -> grpc.Channel:
        global _tried
        _tried = f"{daemon} at {path}"
        if not os.path.exists(path):
            if daemon == "meshagent":
                fail(f"no meshagent socket at {path}: is meshagent running on this VM? "
                     f"(--agent-socket or MESH_AGENT_SOCKET; --admin talks to meshd on the main node)")
            fail(f"no meshd socket at {path}: is meshd (on the main node, as root) running? "
                 f"(--admin-socket or MESHD_ADMIN_SOCKET)")
        if not os.access(path, os.R_OK | os.W_OK):
            fail(f"permission denied on {path}: run meshctl as root (sudo)")
        return grpc.insecure_channel(f"unix:{path}")


def call(fn: Callable[..., T], request, timeout: float = 10.0) -> T:
    """Make one RPC; a gRPC error becomes `error: <message> (<CODE>)` and exit code 1."""
    try:
        return fn(request, timeout=timeout)
    except grpc.RpcError as e:
        code = e.code()
        details = e.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE and ("connect" in details.lower() or "socket" in details.lower()):
            details = f"{_tried or 'the daemon'} is not answering ({details})"
        fail(f"{details} ({code.name})")
