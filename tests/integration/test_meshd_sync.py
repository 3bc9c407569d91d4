"""meshd mirrors its catalog into Consul and Kubernetes (the vendors' APIs served by the doubles)."""

from __future__ import annotations

import asyncio

from mesh.v1 import catalog_pb2, types_pb2
from meshd.sync.consul_client import ConsulConfig
from meshd.sync.kube_client import KubernetesConfig
from testbed.doubles.consul import ConsulDouble
from testbed.doubles.kubernetes import KubernetesDouble
from testbed.doubles.sync_helpers import write_kubeconfig
from tests.meshfix import Mesh, until


async def test_expose_reaches_consul_and_kubernetes_and_collisions_are_reported(tmp_path):
    k8s = KubernetesDouble(token="t").start()
    consul = ConsulDouble().start()
    m = Mesh(tmp_path)
    m.config.kubernetes = KubernetesConfig(kubeconfig=str(write_kubeconfig(tmp_path / "kc", k8s.url, "t")),
                                           timeout_s=2)
    m.config.consul = ConsulConfig(address=consul.url, timeout_s=2)
    try:
        await m.start()
        a = await m.agent("gpu-1")
        k8s.put("services", {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "taken"},
                             "spec": {"ports": [{"port": 80}]}})
        for name in ("llm", "taken"):
            await a.catalog_stub.Expose(catalog_pb2.ExposeRequest(service=types_pb2.Service(name=name, port=8000)))

        def in_consul(name: str) -> bool:
            return any(s.get("Service") == name for s in consul.services.get("gpu-1", {}).values())

        await until(lambda: k8s.get("services", "llm") is not None and in_consul("llm"), timeout=15)
        assert k8s.get("endpointslices", "llm-mesh")["endpoints"][0]["addresses"] == [a.identity.mesh_address]
        errors: dict[str, str] = {}
        for _ in range(200):  # bounded: ~10 s
            errors = dict((await m.catalog().ListServices(catalog_pb2.ListServicesRequest())).sync_errors)
            if "taken" in errors:
                break
            await asyncio.sleep(0.05)
        assert "not managed by the mesh" in errors["taken"], errors
        assert k8s.get("services", "taken")["spec"]["ports"] == [{"port": 80}]  # never overwritten
        await a.catalog_stub.Unexpose(catalog_pb2.UnexposeRequest(name="llm"))
        await until(lambda: k8s.get("services", "llm") is None and not in_consul("llm"), timeout=15)
    finally:
        await m.close()
        k8s.stop()
        consul.stop()
