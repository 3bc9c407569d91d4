"""meshd beyond 1,000 agents: 5,000 simulated agents on one meshd, and 2,000 over three replicas
on one real etcd next to the same fleet on one replica (bench/fleet.py drives them).

About 17 minutes on a 2-core machine, so not part of `make bench` (which stays within
BENCH.md's 20 minutes); run it alone with `make bench BENCH=scale`. The figures keep the
names the control benchmark gives them (`meshd_rpc_p99_ms_5000_agents`, ...).
"""

from __future__ import annotations

from bench.control import bench_agents, bench_agents_replicas


def run() -> list[dict]:
    return bench_agents(5000) + bench_agents_replicas(2000, 3)
