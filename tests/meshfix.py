"""Fixtures for control-plane tests: a real meshd (grpc.aio on port 0) and real agents, in-process."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from mesh.v1 import admission_pb2, admission_pb2_grpc, catalog_pb2_grpc, nodes_pb2_grpc
from meshagent.agent import Agent
from meshagent.config import AgentConfig
from meshcore.clock import ManualClock
from meshd.server import Coordinator, MeshdConfig

_names = itertools.count()


def manual_clock() -> ManualClock:
    """The clock control-plane tests move by hand (meshcore.clock.ManualClock)."""
    return ManualClock(monotonic=1000.0, wall=1_800_000_000.0)


class Mesh:
    """A coordinator plus the agents a test starts; everything is stopped at the end."""

    def __init__(self, tmp: Path, clock: ManualClock | None = None, **config) -> None:
        self.tmp = tmp
        self.clock = clock
        self.config = MeshdConfig(state_dir=tmp / "meshd", listen="127.0.0.1:0", join_listen="127.0.0.1:0",
                                  admin_socket=str(tmp / "admin.sock"), metrics="", overlay_pool="127.77.0.0/24",
                                  **config)
        self.coordinator: Coordinator | None = None
        self.agents: list[Agent] = []
        self._admin: grpc.aio.Channel | None = None

    async def start(self) -> Mesh:
        self.coordinator = Coordinator(self.config, clock=self.clock) if self.clock else Coordinator(self.config)
        await self.coordinator.start()
        self._admin = grpc.aio.insecure_channel(f"unix:{self.config.admin_socket}")
        return self

    async def restart(self) -> None:
        await self.stop_coordinator()
        self.config.listen = f"127.0.0.1:{self.ports['listen']}"
        self.config.join_listen = f"127.0.0.1:{self.ports['join']}"
        await self.start()

    async def stop_coordinator(self) -> None:
        self.ports = dict(self.coordinator.ports)
        if self._admin:
            await self._admin.close()
        await self.coordinator.stop(0)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.coordinator.ports['listen']}"

    @property
    def join_address(self) -> str:
        return f"127.0.0.1:{self.coordinator.ports['join']}"

    def admission(self) -> admission_pb2_grpc.AdmissionServiceStub:
        return admission_pb2_grpc.AdmissionServiceStub(self._admin)

    def nodes(self) -> nodes_pb2_grpc.NodeServiceStub:
        return nodes_pb2_grpc.NodeServiceStub(self._admin)

    def catalog(self) -> catalog_pb2_grpc.CatalogServiceStub:
        return catalog_pb2_grpc.CatalogServiceStub(self._admin)

    async def token(self, uses: int = 1, ttl_s: int = 3600, **labels: str) -> str:
        resp = await self.admission().CreateToken(admission_pb2.CreateTokenRequest(ttl_s=ttl_s, max_uses=uses,
                                                                                   labels=labels))
        return resp.secret

    async def watch_until_synced(self, from_revision: int) -> list[tuple[str, str]]:
        """(event type, service name) from WatchServices at `from_revision` up to and including SYNCED."""
        from mesh.v1 import types_pb2

        events = []
        stream = self.catalog().WatchServices(types_pb2.WatchRequest(from_revision=from_revision))
        async for ev in stream:
            events.append((types_pb2.EventType.Name(ev.type), ev.service.name))
            if ev.type == types_pb2.EVENT_TYPE_SYNCED:
                break
        stream.cancel()
        return events

    def agent_config(self, name: str | None = None, token: str = "", **kw) -> AgentConfig:
        name = name or f"node-{next(_names)}"
        return AgentConfig(state_dir=self.tmp / f"agent-{name}", coordinator=self.address,
                           join_address=self.join_address, token=token, name=name,
                           socket=kw.pop("socket", str(self.tmp / f"{name}.sock")), dns="127.0.0.1:0", dns_upstreams=(),
                           metrics="", backoff_min_s=0.05, backoff_max_s=0.5, gossip=kw.pop("gossip", "0.0.0.0:0"),
                           gossip_profile=kw.pop("gossip_profile", "local"), spot=kw.pop("spot", False),
                           imds=kw.pop("imds", ""), gpus=kw.pop("gpus", False), **kw)

    async def agent(self, name: str | None = None, token: str | None = None, clock=None, **kw) -> Agent:
        cfg = self.agent_config(name, token if token is not None else await self.token(), **kw)
        a = Agent(cfg, clock=clock) if clock is not None else Agent(cfg)
        self.agents.append(a)
        await asyncio.wait_for(a.start(), 20)
        if a.gossip:  # the first renewal registers the gossip port: let it land before the test measures
            from mesh.v1 import nodes_pb2

            async def registered() -> None:
                while not (await self.nodes().GetNode(nodes_pb2.GetNodeRequest(id_or_name=a.identity.node_id))
                           ).node.gossip_port:
                    await asyncio.sleep(0.02)
            await asyncio.wait_for(registered(), 10)
        return a

    async def close(self) -> None:
        for a in self.agents:
            await a.stop()
        if self.coordinator and self.coordinator.server:
            await self.stop_coordinator()


async def until(predicate, timeout: float = 10.0, interval: float = 0.02) -> None:
    """Wait until predicate() is true; bounded in time (fails the test on timeout)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


async def eventually(pred: Callable[[], bool], timeout_s: float = 5.0, step_s: float = 0.01) -> bool:
    """Await until `pred()` is true or `timeout_s` passes (bounded in count and time)."""
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / step_s) + 1):
        if pred():
            return True
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(step_s)
    return pred()


class HeldPauses:
    """Batch watch streams' pauses after live changes (meshd.servicers.WatchSlots.wait), as they
    are until `armed` is set; from then on a pause sets `paused` and lasts until `release` is
    set, so a test can make changes while a stream waits."""

    def __init__(self, monkeypatch) -> None:
        from meshd import servicers
        self.armed, self.paused, self.release = asyncio.Event(), asyncio.Event(), asyncio.Event()
        plain = servicers.WatchSlots.wait

        async def wait(slots, seconds: float) -> None:
            if not self.armed.is_set():
                return await plain(slots, seconds)
            self.paused.set()
            await self.release.wait()
        monkeypatch.setattr(servicers.WatchSlots, "wait", wait)


async def synced(stream):
    """The events of a watch stream, read past its SYNCED."""
    from mesh.v1 import types_pb2
    events = stream.__aiter__()
    while (await asyncio.wait_for(anext(events), 10)).type != types_pb2.EVENT_TYPE_SYNCED:
        pass
    return events


def wait_for(fn, timeout: float = 10.0, what: str = "condition", interval: float = 0.05):
    """Call fn() until it returns something true (returned); bounded in time, for tests outside asyncio."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not true within {timeout}s")


@pytest.fixture
async def mesh(tmp_path):
    m = await Mesh(tmp_path).start()
    try:
        yield m
    finally:
        await m.close()
