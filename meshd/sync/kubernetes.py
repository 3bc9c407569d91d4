"""Kubernetes sync: a Service and an EndpointSlice per exposed mesh service.

Model (objects in kube_objects.py): the target keeps a view of *our*
objects, the ones labelled `app.kubernetes.io/managed-by=mesh`, in one
namespace. It lists them once (two calls, which also give a
resourceVersion), then keeps the view current with two label-selected
watches resumed from that resourceVersion, each in its own thread. A
reconcile diffs the desired objects against the view and only writes:

- missing -> look the name up first (one GET): if an unmanaged Service holds
  it, the service gets a per-service error (shown on `meshctl services`) and
  nothing is written; else create the EndpointSlice, then the Service, so
  the name never resolves to a Service without endpoints (a 409
  AlreadyExists on create is resolved the same way: adopted if ours, an
  error if not);
- different in a field we own -> replace, conditional on the resourceVersion
  we saw (409 Conflict: read that one object again and retry once);
- ours but no longer wanted -> delete with a resourceVersion precondition,
  the Service before its EndpointSlice.

A watch event on one of our objects (someone deleted our Service, edited
our EndpointSlice) updates the view and kicks the SyncLoop, so drift is
repaired at once, not at the next periodic resync. If a watch is expired
(410 Gone) or broken beyond its own retries, the next reconcile lists again.
With `watch=False` the view is refreshed only by `invalidate()` (periodic).

All API calls block, so they run in worker threads (`asyncio.to_thread`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Callable

from meshcore.backoff import Backoff
from meshcore.errors import AlreadyExists, Conflict, InvalidArgument, NotFound
from meshcore.names import is_service_name
from meshd.sync.base import Node, Service, SyncReport, service_address, service_is_healthy, service_is_live
from meshd.sync.kube_client import SERVICES, SLICES, KubeAPI, KubernetesConfig
from meshd.sync.kube_objects import (SELECTOR, address_type, is_managed, merged, owned_service, owned_slice,
                                     service_object, slice_name, slice_object)

log = logging.getLogger(__name__)

OWNED = {SERVICES: owned_service, SLICES: owned_slice}


class _View:
    """Our objects by resource and name, shared by the reconcile and the watch threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.objects: dict[str, dict[str, dict[str, Any]]] = {SERVICES: {}, SLICES: {}}
        self.versions: dict[str, str] = {}
        self.stale = False  # a watch lost track: list again

    def _older(self, resource: str, obj: dict[str, Any]) -> bool:
        """True if the view already holds a newer version of `obj` (a late watch event).
        resourceVersions are opaque by contract, but integers on every etcd-backed server;
        when they are not, every event is taken."""
        cur = self.objects[resource].get(obj["metadata"]["name"])
        try:
            return cur is not None and int(cur["metadata"]["resourceVersion"]) > int(obj["metadata"]["resourceVersion"])
        except (KeyError, TypeError, ValueError):
            return False

    def put(self, resource: str, obj: dict[str, Any]) -> bool:
        """Record `obj`; False if the view already held exactly this version (our own write)."""
        name = obj["metadata"]["name"]
        with self.lock:
            if self._older(resource, obj):
                return False
            cur = self.objects[resource].get(name)
            if is_managed(obj):
                self.objects[resource][name] = obj
                return cur is None or cur["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion")
            # It stopped being ours (label removed): no longer in our view.
            return self.objects[resource].pop(name, None) is not None

    def drop(self, resource: str, name: str, seen: dict[str, Any] | None = None) -> bool:
        """Forget `name`; False if it was not in the view (already dropped by our delete)."""
        with self.lock:
            if seen is not None and self._older(resource, seen):
                return False
            return self.objects[resource].pop(name, None) is not None

    def snapshot(self, resource: str) -> dict[str, dict[str, Any]]:
        with self.lock:
            return dict(self.objects[resource])


class KubernetesTarget:
    """SyncTarget for Kubernetes Services and EndpointSlices."""

    name = "kubernetes"

    def __init__(self, config: KubernetesConfig | None = None) -> None:
        self.config = config or KubernetesConfig()
        self._api: KubeAPI | None = None
        self._view: _View | None = None
        self._foreign: set[str] = set()
        self._kick: Callable[[], None] = lambda: None
        self._stop = threading.Event()
        self._watchers: list[threading.Thread] = []
        self._responses: list[Any] = []

    @property
    def api(self) -> KubeAPI:
        if self._api is None:
            self._api = KubeAPI(self.config)
        return self._api

    def set_kick(self, kick: Callable[[], None]) -> None:
        self._kick = kick

    def invalidate(self) -> None:
        # Names held by unmanaged objects are checked again (the owner may have deleted them).
        self._foreign.clear()
        if self._view is not None and (not self.config.watch or self._view.stale
                                       or not all(t.is_alive() for t in self._watchers)):
            self._view = None

    # --- list and watch -------------------------------------------------------------
    async def _list(self) -> _View:
        await self._stop_watchers()
        view = _View()
        for resource in (SERVICES, SLICES):
            data = await asyncio.to_thread(self.api.list, resource, SELECTOR)
            for obj in data.get("items") or []:
                view.put(resource, obj)
            view.versions[resource] = (data.get("metadata") or {}).get("resourceVersion", "")
        if self.config.watch:
            self._stop = threading.Event()
            for resource in (SERVICES, SLICES):
                t = threading.Thread(target=self._watch, args=(self.api, view, resource, self._stop),
                                     name=f"k8s-watch-{resource}", daemon=True)
                t.start()
                self._watchers.append(t)
        return view

    def _watch(self, api: KubeAPI, view: _View, resource: str, stop: threading.Event) -> None:
        """Follow changes to our objects of one resource until stopped or expired."""
        version = view.versions.get(resource, "")
        backoff = Backoff(initial=0.4, maximum=5.0, jitter=0.2)
        while not stop.is_set():
            try:
                for event in api.watch(resource, SELECTOR, version, self._responses, stop):
                    backoff.reset()
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        # 410 Gone: our version is older than the server keeps; list again.
                        view.stale = True
                        self._kick()
                        return
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if kind == "BOOKMARK":
                        continue
                    if kind == "DELETED":
                        changed = view.drop(resource, obj["metadata"]["name"], obj)
                    else:
                        changed = view.put(resource, obj)
                    if changed:  # not the echo of a write of ours: someone else changed it
                        self._kick()
            except Exception as e:
                if stop.is_set():
                    return
                if backoff.attempts >= 4:  # the fifth failure in a row
                    log.warning("kubernetes watch of %s keeps failing (%s); will list again", resource, e)
                    view.stale = True
                    self._kick()
                    return
                stop.wait(backoff.next())

    async def _stop_watchers(self) -> None:
        self._stop.set()
        for resp in list(self._responses):
            try:
                resp.shutdown()  # unblocks a read waiting for the next event
            except Exception:
                pass
        for t in self._watchers:
            await asyncio.to_thread(t.join, 5)
        self._watchers, self._responses = [], []

    async def close(self) -> None:
        await self._stop_watchers()
        if self._api is not None:
            self._api.close()
            self._api = None
        self._view = None

    # --- reconcile -------------------------------------------------------------------
    async def reconcile(self, services: list[Service], nodes: dict[str, Node]) -> SyncReport:
        api = self.api
        calls0, writes0 = api.calls, api.writes
        report = SyncReport()
        try:
            if self._view is None or self._view.stale:
                self._view = await self._list()
            await self._apply(self._view, services, nodes, report)
        finally:
            report.api_calls = api.calls - calls0
            report.writes = api.writes - writes0
        return report

    def _desired(self, services: list[Service], nodes: dict[str, Node],
                 errors: dict[str, str]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
        ns = self.config.namespace
        want: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        for svc in services:
            if not service_is_live(svc, nodes):
                continue
            node, addr = nodes[svc.node_id], service_address(svc, nodes)
            if not is_service_name(svc.name):  # stored before service names had to start with a letter
                errors[svc.name] = (f"not mirrored to Kubernetes: {svc.name!r} is no Service name there "
                                    f"(DNS-1035: it must start with a letter); expose it under another name")
                continue
            try:
                address_type(addr)
            except ValueError:
                errors[svc.name] = (f"cannot publish {svc.name} in Kubernetes: node {node.name} "
                                    "has no valid mesh address")
                continue
            want[svc.name] = (service_object(svc, node, ns),
                              slice_object(svc, node, addr, service_is_healthy(svc, nodes), ns))
        return want

    async def _apply(self, view: _View, services: list[Service], nodes: dict[str, Node],
                     report: SyncReport) -> None:
        want = self._desired(services, nodes, report.errors)
        have_svc, have_eps = view.snapshot(SERVICES), view.snapshot(SLICES)
        for name, (svc_obj, eps_obj) in sorted(want.items()):
            if name in self._foreign:
                report.errors[name] = self._collision(name)
                continue
            try:
                await self._publish(view, name, svc_obj, eps_obj, have_svc.get(name),
                                    have_eps.get(slice_name(name)), report)
            except InvalidArgument as e:  # the API refused our object: a per-service problem, not an outage
                report.errors[name] = str(e)
        # The name goes first, then what it pointed at.
        for name, obj in sorted(have_svc.items()):
            if name not in want:
                await self._delete(view, SERVICES, obj, report)
        wanted_slices = {slice_name(n) for n in want}
        for name, obj in sorted(have_eps.items()):
            if name not in wanted_slices:
                await self._delete(view, SLICES, obj, report)

    async def _publish(self, view: _View, name: str, svc_obj: dict[str, Any], eps_obj: dict[str, Any],
                       have_svc: dict[str, Any] | None, have_eps: dict[str, Any] | None, report: SyncReport) -> None:
        if have_svc is None:
            # A name not in our view may belong to someone else: look before writing anything,
            # since our EndpointSlice would otherwise feed their Service.
            have_svc = await asyncio.to_thread(self.api.get, SERVICES, name)
            if have_svc is not None and not is_managed(have_svc):
                self._foreign.add(name)
                report.errors[name] = self._collision(name)
                return
            if have_svc is not None:
                view.put(SERVICES, have_svc)  # ours, but the view had missed it
        # Endpoints before the Service, so the name never resolves to a Service with
        # nothing behind it.
        if not await self._ensure(view, SLICES, eps_obj, have_eps, report):
            report.errors[name] = (f"cannot publish {name} in Kubernetes: an EndpointSlice named "
                                   f"{slice_name(name)} exists and is not managed by the mesh")
            return
        if not await self._ensure(view, SERVICES, svc_obj, have_svc, report):
            # Someone created an unmanaged Service of that name since we looked: take our endpoints back.
            self._foreign.add(name)
            report.errors[name] = self._collision(name)
            ours = view.snapshot(SLICES).get(slice_name(name))
            if ours is not None:
                await self._delete(view, SLICES, ours, report)

    @staticmethod
    def _collision(name: str) -> str:
        return (f"cannot publish {name} in Kubernetes: a Service named {name} exists and is not managed by the "
                f"mesh (label app.kubernetes.io/managed-by=mesh); rename the mesh service or remove that Service")

    async def _ensure(self, view: _View, resource: str, want: dict[str, Any], have: dict[str, Any] | None,
                      report: SyncReport) -> bool:
        """Make one object match; False if its name is held by an unmanaged object."""
        api, owned = self.api, OWNED[resource]
        label = f"{'Service' if resource == SERVICES else 'EndpointSlice'}/{want['metadata']['name']}"
        for attempt in range(3):  # create/replace races are retried a bounded number of times
            if have is None:
                try:
                    created = await asyncio.to_thread(api.create, resource, want)
                except AlreadyExists:
                    have = await asyncio.to_thread(api.get, resource, want["metadata"]["name"])
                    if have is None:
                        continue  # deleted in between: create again
                    if not is_managed(have):
                        return False
                    view.put(resource, have)
                    continue  # ours after all (an earlier create whose answer was lost)
                view.put(resource, created)
                report.created.append(label)
                return True
            if owned(have) == owned(want):
                return True
            if resource == SLICES and have.get("addressType") != want["addressType"]:
                # addressType is immutable: replace the slice by delete + create.
                await asyncio.to_thread(api.delete, resource, have["metadata"]["name"],
                                        have["metadata"]["resourceVersion"])
                view.drop(resource, have["metadata"]["name"])
                have = None
                continue
            try:
                updated = await asyncio.to_thread(api.replace, resource, merged(have, want))
            except (Conflict, NotFound):
                have = await asyncio.to_thread(api.get, resource, want["metadata"]["name"])
                if have is not None and not is_managed(have):
                    return False
                continue
            view.put(resource, updated)
            report.updated.append(label)
            return True
        raise Conflict(f"Kubernetes {label} kept changing under the sync; will retry")

    async def _delete(self, view: _View, resource: str, obj: dict[str, Any], report: SyncReport) -> None:
        name = obj["metadata"]["name"]
        try:
            await asyncio.to_thread(self.api.delete, resource, name, obj["metadata"]["resourceVersion"])
        except Conflict:
            # Changed since we saw it: look again; delete only if still ours.
            fresh = await asyncio.to_thread(self.api.get, resource, name)
            if fresh is None or not is_managed(fresh):
                view.drop(resource, name)
                return
            await asyncio.to_thread(self.api.delete, resource, name, fresh["metadata"]["resourceVersion"])
        view.drop(resource, name)
        report.deleted.append(f"{'Service' if resource == SERVICES else 'EndpointSlice'}/{name}")
