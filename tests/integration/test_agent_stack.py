"""meshagent with K3s (a fake k3s that records how it was run) and the spot interruption watch (IMDS double)."""

from __future__ import annotations

import asyncio
import json

from mesh.v1 import catalog_pb2, nodes_pb2, types_pb2
from meshagent.agent import Agent
from testbed.doubles.imds import ImdsDouble
from tests.meshfix import Mesh, until
from tests.unit.test_k3s import fake_k3s, records


async def test_agent_joins_k3s_with_the_token_from_meshd_and_no_kubeconfig(tmp_path):
    (tmp_path / "k3s-token").write_text("K10feed::server:agent-secret\n")
    m = Mesh(tmp_path, k3s_server_url="https://127.77.0.1:6443", k3s_token_file=str(tmp_path / "k3s-token"))
    await m.start()
    try:
        fake_k3s(tmp_path / "bin", tmp_path / "k3s.rec")
        a = await m.agent("worker", token=await m.token(**{"mesh.k3s": "agent"}), k3s=True, k3s_binary=str(tmp_path / "bin" / "k3s"),
                          labels={"gpu.model": "L4"})
        await until(lambda: records(tmp_path / "k3s.rec"), timeout=15)
        run = records(tmp_path / "k3s.rec")[0]
        argv = run["argv"]
        assert argv[0] == "agent"
        assert argv[argv.index("--node-ip") + 1] == a.identity.mesh_address
        assert argv[argv.index("--server") + 1] == "https://127.77.0.1:6443"
        assert argv[argv.index("--node-name") + 1] == "worker"
        assert "gpu.model=L4" in argv
        assert run["env"]["K3S_TOKEN"] == "K10feed::server:agent-secret"
        assert "agent-secret" not in " ".join(argv)  # never in argv, where /proc shows it to everyone
        assert not list(tmp_path.rglob("kubeconfig*")) and not any("KUBECONFIG" in k for k in run["env"])
    finally:
        await m.close()


async def test_spot_stop_notice_withdraws_names_and_the_node_comes_back_under_its_name(tmp_path):
    m = await Mesh(tmp_path).start()
    imds = ImdsDouble(lifecycle="spot").start()
    try:
        a = await m.agent("spotty", spot=True, imds=imds.url)
        resp = await a.catalog_stub.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(name="model", port=8000)))
        a.desired.remember(resp.service)
        imds.post_notice("stop")

        async def state():
            return (await m.nodes().GetNode(nodes_pb2.GetNodeRequest(id_or_name="spotty"))).node.state

        for _ in range(300):  # bounded: the watch polls every 5 s at most twice
            if await state() == types_pb2.NODE_STATE_LEFT:
                break
            await asyncio.sleep(0.05)
        assert await state() == types_pb2.NODE_STATE_LEFT
        assert not (await m.catalog().ListServices(catalog_pb2.ListServicesRequest())).services
        # the VM starts again: same identity, same name, its services re-asserted
        await a.stop()
        m.agents.remove(a)
        imds.clear_notice()
        back = Agent(m.agent_config("spotty", spot=False))
        m.agents.append(back)
        await back.start()
        assert back.identity.node_id == a.identity.node_id
        await until(lambda: "model" in back.catalog.services.items, timeout=15)
        assert json.loads((tmp_path / "agent-spotty" / "services.json").read_text())[0]["name"] == "model"
    finally:
        imds.stop()
        await m.close()
