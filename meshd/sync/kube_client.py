"""Talking to the Kubernetes API: configuration, the official client, and error translation.

Model: `KubernetesConfig` says which cluster (a kubeconfig file and context,
or the in-cluster service account) and which namespace. `KubeAPI` holds an
official `kubernetes` client and exposes the handful of calls the sync needs
on Services and EndpointSlices, as plain JSON dicts (no model
deserialization: we compare a few fields, and dicts keep unknown fields
intact on replace). Calls are blocking, so callers run them through
`asyncio.to_thread`; each is counted (`calls`, `writes`).

Errors become mesh errors: 404 NotFound, 409 Conflict (resourceVersion lost
a race) or AlreadyExists, 401/403 PermissionDenied, 400/422 InvalidArgument,
and 429, 5xx or no connection Unavailable (retried by the SyncLoop).

The `kubernetes` package is imported lazily.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from typing import Any, Iterator

from meshcore.errors import (AlreadyExists, ConfigError, Conflict, InvalidArgument, MeshError, NotFound,
                             PermissionDenied, Unavailable)
from meshcore.names import is_name

SERVICES = "services"
SLICES = "endpointslices"


@dataclass
class KubernetesConfig:
    """Which cluster and namespace the Kubernetes sync writes to."""

    # Path of a kubeconfig file (empty: the client's default, ~/.kube/config).
    kubeconfig: str = ""
    # Context in that kubeconfig (empty: its current-context).
    context: str = ""
    # Use the pod's service account instead of a kubeconfig (meshd running in the cluster).
    in_cluster: bool = False
    # Namespace of the Services: names resolve as <name>.<namespace>.svc.cluster.local.
    namespace: str = "default"
    # Seconds for one API call (connect and read) before the API counts as unreachable.
    timeout_s: float = 10.0
    # Keep the view of our objects current with watches (repairs drift at once);
    # off: conditional updates only, and drift is found at the periodic resync.
    watch: bool = True
    # Server-side length of one watch request; the watch is then resumed from
    # its last resourceVersion. Shorter than typical load-balancer idle timeouts.
    watch_timeout_s: int = 240

    def __post_init__(self) -> None:
        if not is_name(self.namespace):
            raise ConfigError(f"invalid kubernetes namespace {self.namespace!r}: must be an RFC 1123 label")
        if self.in_cluster and self.kubeconfig:
            raise ConfigError("invalid kubernetes config: choose in_cluster or a kubeconfig path, not both")
        if self.in_cluster and self.context:
            raise ConfigError("invalid kubernetes config: a context names a kubeconfig entry; in_cluster has none")
        if self.kubeconfig and not os.path.exists(self.kubeconfig):
            raise ConfigError(f"invalid kubernetes config: kubeconfig {self.kubeconfig} does not exist")
        if self.timeout_s <= 0 or self.watch_timeout_s <= 0:
            raise ConfigError("invalid kubernetes config: timeout_s and watch_timeout_s must be positive")


def translate(what: str, e: Exception) -> MeshError:
    """One mesh error, one clear line, for a failed API call."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(e, MeshError):
        return e
    if isinstance(e, ApiException):
        reason, message = "", ""
        try:
            body = json.loads(e.body or "{}")
            reason, message = body.get("reason", ""), body.get("message", "")
        except (ValueError, TypeError, AttributeError):
            message = str(e.body or e.reason or "")
        text = f"Kubernetes API refused {what}: {e.status} {reason} {message}".rstrip()
        if e.status == 0:
            return Unavailable(f"Kubernetes API unreachable on {what}: {e.reason}")
        if e.status == 404:
            return NotFound(text)
        if e.status == 409:
            return AlreadyExists(text) if reason == "AlreadyExists" else Conflict(text)
        if e.status in (401, 403):
            return PermissionDenied(text + " (the sync needs get/list/watch/create/update/delete on "
                                    "services and discovery.k8s.io endpointslices in its namespace)")
        if e.status in (400, 422):
            return InvalidArgument(text)
        return Unavailable(text)
    return Unavailable(f"Kubernetes API unreachable on {what}: {type(e).__name__}: {e}")


class KubeAPI:
    """Services and EndpointSlices in one namespace, as dicts; blocking calls."""

    def __init__(self, config: KubernetesConfig) -> None:
        from kubernetes import client
        from kubernetes import config as kconfig

        self.config = config
        cfg = client.Configuration()
        if config.in_cluster:
            kconfig.load_incluster_config(client_configuration=cfg)
        else:
            kconfig.load_kube_config(config_file=config.kubeconfig or None, context=config.context or None,
                                     client_configuration=cfg, persist_config=False)
        # One transparent retry for a stale pooled connection; real retries are the SyncLoop's.
        cfg.retries = 1
        self._api_client = client.ApiClient(cfg)
        self._core = client.CoreV1Api(self._api_client)
        self._disc = client.DiscoveryV1Api(self._api_client)
        self._lock = threading.Lock()
        self.calls = 0
        self.writes = 0
        self.watch_calls = 0  # counted apart: watches run outside reconciles
        self.ns = config.namespace

    def _count(self, write: bool) -> None:
        with self._lock:
            self.calls += 1
            if write:
                self.writes += 1

    def _do(self, what: str, fn: Any, *args: Any, write: bool = False, **kw: Any) -> dict[str, Any]:
        self._count(False)
        try:
            resp = fn(*args, _preload_content=False, _request_timeout=self.config.timeout_s, **kw)
            data = json.loads(resp.data or b"{}")
        except Exception as e:
            raise translate(what, e) from e
        if write:
            with self._lock:
                self.writes += 1
        return data

    def _fns(self, resource: str) -> dict[str, Any]:
        if resource == SERVICES:
            c = self._core
            return {"list": c.list_namespaced_service, "get": c.read_namespaced_service,
                    "create": c.create_namespaced_service, "replace": c.replace_namespaced_service,
                    "delete": c.delete_namespaced_service}
        d = self._disc
        return {"list": d.list_namespaced_endpoint_slice, "get": d.read_namespaced_endpoint_slice,
                "create": d.create_namespaced_endpoint_slice, "replace": d.replace_namespaced_endpoint_slice,
                "delete": d.delete_namespaced_endpoint_slice}

    def list(self, resource: str, selector: str) -> dict[str, Any]:
        return self._do(f"list {resource}", self._fns(resource)["list"], self.ns, label_selector=selector)

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        try:
            return self._do(f"get {resource}/{name}", self._fns(resource)["get"], name, self.ns)
        except NotFound:
            return None

    def create(self, resource: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        return self._do(f"create {resource}/{name}", self._fns(resource)["create"], self.ns, body, write=True)

    def replace(self, resource: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        return self._do(f"replace {resource}/{name}", self._fns(resource)["replace"], name, self.ns, body,
                        write=True)

    def delete(self, resource: str, name: str, resource_version: str) -> None:
        # The precondition makes the delete lose to anyone who changed the object since we
        # read it (e.g. replaced it with an unmanaged one): we never delete what we did not see.
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"resourceVersion": resource_version}}
        try:
            self._do(f"delete {resource}/{name}", self._fns(resource)["delete"], name, self.ns, body=body,
                     write=True)
        except NotFound:
            pass

    def watch(self, resource: str, selector: str, resource_version: str, holder: list[Any],
              stop: threading.Event | None = None) -> Iterator[dict]:
        """Events after `resource_version`, one dict per line. The open response is put in
        `holder` so another thread can end the watch with `shutdown()`; `stop`, if set by
        the time the response arrives, ends it at once (it raced with that shutdown)."""
        with self._lock:
            self.watch_calls += 1
        try:
            resp = self._fns(resource)["list"](
                self.ns, label_selector=selector, watch=True, resource_version=resource_version,
                allow_watch_bookmarks=True, timeout_seconds=self.config.watch_timeout_s, _preload_content=False,
                _request_timeout=(self.config.timeout_s, self.config.watch_timeout_s + 30))
        except Exception as e:
            raise translate(f"watch {resource}", e) from e
        raw = getattr(resp, "response", resp)  # RESTResponse wraps the urllib3 response
        holder.append(raw)
        buf = b""
        try:
            if stop is not None and stop.is_set():
                return
            for chunk in raw.stream(amt=None, decode_content=False):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        except Exception as e:
            raise translate(f"watch {resource}", e) from e
        finally:
            if raw in holder:  # ended: nothing left for another thread to shut down
                holder.remove(raw)
            raw.release_conn()

    def close(self) -> None:
        self._api_client.close()
