"""HA benchmark: the etcd store against SQLite, and etcd leader failover.

- `sqlite_store_put_p99_ms` and `etcd_store_put_p99_ms`: the same number of
  sequential puts through each store, in the same run, on the same disk (a
  three-member etcd cluster on loopback, the store given all three endpoints).
- `etcd_member_failover_s`: a writer puts keys one after another through EtcdStore; the
  etcd leader member (not a meshd) is SIGKILLed; the time from the kill to the next
  acknowledged write. etcd runs with its default timings (heartbeat 100 ms,
  election timeout 1 s), the store with its default configuration. Several
  trials (the killed member rejoins between them); the median is reported,
  the worst as `etcd_member_failover_s_max`.
- `etcd_member_failover_lost_writes`: writes acknowledged before a kill that are
  missing afterwards, summed over the trials (must be 0).
- `failover_s` / `failover_lost_writes` (SIGKILL of the meshd leader replica
  with writes in flight through meshd) are not measured by this bench yet:
  they are left out rather than filled with the etcd member figure.

- `etcd_writes_per_node_s`: 200 simulated agents renew (every third of a
  15 s lease) round-robin through three replicas' lease tables on one real
  etcd member, for a simulated 120 s on a manual clock; each replica runs its
  lease tick every second. The etcd revisions written, per node per second
  (before renewal digests: one write per renewal, 0.2).

- `cluster_create_s_moto` / `cluster_delete_s_moto` (and `_calls_moto`): a
  performance cluster (three coordinators behind a load balancer, one warm
  g6.xlarge) for LMRun's instance types, through the assumed cluster role,
  on a moto server in this process; `cluster_rerun_calls_moto` is a create
  run again with nothing to do. Region selection is warmed first (moto
  builds each region's backend on first use) and reported in params.
  Creates include the quota check (Service Quotas double, ample quotas) and
  the cost estimate of both profiles (Price List double, empty memory
  cache): `price_calls` and `quota_calls` in params say how many of the
  calls were theirs.

- `profile_switch_s` and `profile_switch_rejoins`: the store move of a
  profile switch with real processes on loopback (testbed/storeswitch.py):
  a meshd on SQLite with three real agents connected; its meshd stopped,
  `meshd store copy` into a real three-member etcd (TLS with client
  certificates, as on the replicas), meshd started on it at the same
  address; then the same back to SQLite. `profile_switch_s` is the
  median over those hops, from stopping the old meshd until every agent has
  applied a change made through the new one (it includes the agents' own
  reconnect backoff; not included: EC2 launching the new coordinators and the
  load balancer taking the Elastic IP, which moto cannot time).
  `profile_switch_rejoins`: joins over the whole run that should not happen
  (Join calls the new meshd admitted, agents whose node id changed, and
  "joined the mesh" lines past the first in each agent's log); goal 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import percentile, record

PUTS = 500
TRIALS = 5
VALUE = b"x" * 256  # about the size of a catalog record


async def _put_latencies(store, prefix: str, n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        await store.put(f"{prefix}/{i:05d}", VALUE)
        out.append((time.perf_counter() - t) * 1000)
    return out


async def _failover_trial(cluster, store, trial: int) -> tuple[float, int]:
    """Kill the leader under a stream of writes; (seconds to the next ack, acknowledged writes lost)."""
    from meshcore.errors import Unavailable

    prefix = f"/failover/{trial}"
    acked: list[str] = []
    for i in range(200):  # writes before the kill
        await store.put(f"{prefix}/{i:05d}", VALUE)
        acked.append(f"{prefix}/{i:05d}")
    leader = cluster.leader_index()
    writing = asyncio.Event()

    async def write_after_kill() -> float:
        i = len(acked)
        key = f"{prefix}/{i:05d}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # bounded
            writing.set()
            try:
                await store.put(key, VALUE)
                return time.monotonic()
            except Unavailable:  # not acknowledged (unknown outcome or no leader yet): same key again
                await asyncio.sleep(0.01)
        raise RuntimeError("no write accepted within 60 s of killing the etcd leader")

    killed = time.monotonic()
    cluster.kill(leader)
    acked_at = await write_after_kill()
    kvs, _ = await store.range(prefix + "/")
    present = {kv.key for kv in kvs}
    lost = sum(1 for k in acked if k not in present)
    cluster.restart(leader)
    cluster.wait_ready(30)
    return acked_at - killed, lost


async def _run(root: Path) -> list[dict]:
    from meshd.store.etcd import EtcdConfig, EtcdStore
    from meshd.store.sqlite import SQLiteStore
    from testbed.etcd_cluster import EtcdCluster

    records = []
    sqlite = SQLiteStore(root / "sqlite" / "state.db")
    cluster = EtcdCluster(3, root / "etcd").start()
    store = EtcdStore(EtcdConfig(endpoints=tuple(cluster.endpoints), prefix="/bench"))
    try:
        await _put_latencies(sqlite, "/warm", 20)
        await _put_latencies(store, "/warm", 20)
        sq = await _put_latencies(sqlite, "/p", PUTS)
        et = await _put_latencies(store, "/p", PUTS)
        env = {"puts": PUTS, "value_bytes": len(VALUE)}
        records.append(record("ha", "sqlite_store_put_p99_ms", percentile(sq, 99), "ms", **env,
                              p50_ms=round(percentile(sq, 50), 3), durability="WAL, synchronous=FULL"))
        records.append(record("ha", "etcd_store_put_p99_ms", percentile(et, 99), "ms", **env,
                              p50_ms=round(percentile(et, 50), 3), members=3))
        records.append(record("ha", "etcd_vs_sqlite_put_p99_ratio", percentile(et, 99) / percentile(sq, 99), "x",
                              **env))
        times, lost = [], 0
        for trial in range(TRIALS):
            took, missing = await _failover_trial(cluster, store, trial)
            times.append(took)
            lost += missing
        params = {"trials": TRIALS, "members": 3, "heartbeat_ms": cluster.heartbeat_ms,
                  "election_ms": cluster.election_ms, "request_timeout_s": store.config.request_timeout,
                  "samples": [round(t, 3) for t in times]}
        params["statistic"] = "median"
        params["killed"] = "etcd leader member (SIGKILL); meshd not involved"
        records.append(record("ha", "etcd_member_failover_s", statistics.median(times), "s", goal=2.0, **params))
        records.append(record("ha", "etcd_member_failover_s_max", max(times), "s", goal=2.0, **params))
        records.append(record("ha", "etcd_member_failover_lost_writes", lost, "writes", goal=0, **params))
    finally:
        await store.close()
        await sqlite.close()
        cluster.stop()
    return records


async def _renewal_writes(root: Path, agents: int = 200, replicas: int = 3, seconds: int = 120) -> list[dict]:
    from meshcore.clock import ManualClock
    from meshd.leases import LeaseConfig, Liveness
    from meshd.store.etcd import EtcdConfig, EtcdStore
    from testbed.etcd_cluster import EtcdCluster

    cluster = EtcdCluster(1, root / "etcd-renewals").start()
    stores = [EtcdStore(EtcdConfig(endpoints=tuple(cluster.endpoints), prefix="/renewals")) for _ in range(replicas)]
    try:
        clock = ManualClock()
        cfg = LeaseConfig(lease_ttl_s=15, grace_s=30, shared=True)
        tables = [Liveness(s, cfg, clock, replica=f"r{i}") for i, s in enumerate(stores)]
        every = cfg.lease_ttl_s / 3
        before = await stores[0].revision()
        renewals = 0
        for second in range(seconds):
            for n in range(agents):  # each agent renews every `every` s, spread over the period
                if (second + n) % int(every) == 0:
                    await tables[n % replicas].renewed(f"n{n}")
                    renewals += 1
            for t in tables:
                await t.flush()
            clock.advance(1.0)
        writes = await stores[0].revision() - before
    finally:
        for s in stores:
            await s.close()
        cluster.stop()
    params = {"agents": agents, "replicas": replicas, "simulated_s": seconds, "renewals": renewals,
              "etcd_writes": writes, "digest_interval_s": cfg.digest_every_s, "before_digests": 0.2}
    return [record("ha", "etcd_writes_per_node_s", writes / (agents * seconds), "writes/node/s", goal=0.01,
                   **params)]


async def _churn_db_size(root: Path, nodes: int = 200, replicas: int = 3, hours: int = 24) -> list[dict]:
    """The etcd database after a simulated day of a mesh's writes, compacted as the leader does.

    Per simulated 3 s every replica writes its renewal digest (the node ids it heard from);
    every node exposes and unexposes one service per simulated 10 minutes (a churny fleet); every
    simulated 5 minutes the history is compacted to the leader's window (LeaseConfig.keep_revisions).
    Writes go to a real etcd member as fast as it takes them; the size is etcd's own dbSize."""
    import json

    from meshd.leases import LeaseConfig
    from meshd.store.base import Delete, Put
    from meshd.store.etcd import EtcdConfig, EtcdStore
    from testbed.etcd_cluster import EtcdCluster

    cluster = EtcdCluster(1, root / "etcd-churn").start()
    store = EtcdStore(EtcdConfig(endpoints=tuple(cluster.endpoints), prefix="/churn"))
    keep = LeaseConfig().keep_revisions
    writes = compactions = 0
    try:
        digest = json.dumps({f"n{i:04d}": 1 for i in range(nodes)}).encode()
        service = b"x" * 300  # a typical stored service record
        t0 = time.monotonic()
        for step in range(hours * 3600 // 3):  # one step = 3 simulated seconds
            for r in range(replicas):
                await store.put(f"/heartbeats/r{r}", digest)
                writes += 1
            # 200 toggles per 600 s = one every 3 s per 10 nodes
            for k in range(nodes * 3 // 600 or 1):
                n = (step * (nodes * 3 // 600 or 1) + k) % nodes
                key = f"/services/svc-{n}"
                if (step // (600 // 3)) % 2 == 0:
                    await store.txn([], [Put(key, service)])
                else:
                    await store.txn([], [Delete(key)])
                writes += 1
            if step % 100 == 99:  # every 5 simulated minutes
                rev = await store.revision()
                if rev > keep:
                    await store.compact(rev - keep)
                    compactions += 1
        took = time.monotonic() - t0
        await store.check_alarms()
        size = store.db_size
    finally:
        await store.close()
        cluster.stop()
    return [record("ha", "etcd_db_mb_after_churn", size / 1e6, "MB", nodes=nodes, replicas=replicas,
                   simulated_hours=hours, writes=writes, compactions=compactions, keep_revisions=keep,
                   wall_s=round(took, 1), defragmented=False)]


def _clusters_on_moto(root: Path) -> list[dict]:
    import boto3

    from infra.aws import Aws
    from infra.cluster.access import assume, create_role
    from infra.cluster.lifecycle import Ops, create, delete, new_doc, selection
    from infra.cluster.registry import Registry
    from infra.cluster.spec import ClusterSpec, InstanceTypeSpec
    from infra.prices import Prices
    from testbed.doubles.motoserver import moto_server
    from testbed.doubles.pricing import PricingDouble
    from testbed.doubles.servicequotas import ServiceQuotasDouble

    with moto_server() as url, _started(PricingDouble()) as pricing, _started(ServiceQuotasDouble(10000.0)) as sq:
        session = boto3.session.Session()
        base = Aws(lambda: session, endpoint_url=url)
        role = create_role(base)
        aws = Aws(assume(base, role.role_arn, role.external_id, "us-east-1"), endpoint_url=url,
                  endpoint_urls={"pricing": pricing.url, "service-quotas": sq.url})
        ops = Ops(aws, Registry(aws), lambda n: root / "clusters" / n, sleep=lambda s: None, prices=Prices(aws))
        spec = ClusterSpec(instance_types=(InstanceTypeSpec("g6.xlarge", 1), InstanceTypeSpec("g6.2xlarge"),
                                           InstanceTypeSpec("g6.12xlarge")),
                           image_owner="099720109477", image_name="ubuntu/images/hvm-ssd/ubuntu-xenial-16.04-*",
                           package="https://example.com/mesh-0.1.0-py3-none-any.whl")
        t0 = time.monotonic()
        sel = selection(ops, new_doc("bench", spec), spec.to_infra("bench"))
        warm_s = time.monotonic() - t0
        ops.selections.clear()  # the measured create selects regions itself, as the CLI does
        before = dict(aws.operations)
        created = create(ops, "bench", spec)
        during = {k: v - before.get(k, 0) for k, v in aws.operations.items()}
        again = create(ops, "bench", spec, known_id=created.doc.id)
        gone = delete(ops, "bench")
        if gone.leftovers or again.launched:
            raise RuntimeError(f"cluster bench did not converge: {gone.leftovers} {again.launched}")
    params = {"profile": "performance", "regions": len(sel.selected), "instances": len(created.launched),
              "types": "g6.xlarge(warm 1),g6.2xlarge,g6.12xlarge", "moto_warmup_s": round(warm_s, 2),
              "price_calls": sum(v for k, v in during.items() if k.startswith("pricing:")),
              "quota_calls": sum(v for k, v in during.items() if k.startswith("servicequotas:")),
              "cost_per_day_usd": {e.profile: round(e.day, 2) for e in created.estimates if e.day is not None}}
    return [
        record("ha", "cluster_create_s_moto", created.seconds, "s", **params),
        record("ha", "cluster_create_calls_moto", created.calls, "calls", **params),
        record("ha", "cluster_rerun_calls_moto", again.calls, "calls", **params),
        record("ha", "cluster_delete_s_moto", gone.seconds, "s", **params),
        record("ha", "cluster_delete_calls_moto", gone.calls, "calls", **params),
    ]


@contextlib.contextmanager
def _started(double: Any) -> Any:
    double.start()
    try:
        yield double
    finally:
        double.stop()


SWITCH_ROUNDS = 2  # each round: SQLite → etcd → SQLite, two hops


def _profile_switch(root: Path) -> list[dict]:
    from testbed import storeswitch

    hops: list[float] = []
    phases: list[tuple[float, float]] = []
    rejoins = 0
    failures = 0
    for i in range(SWITCH_ROUNDS):
        try:
            run = storeswitch.run(root / f"switch-{i}")
        except Exception as e:  # counted, never folded into the timings
            failures += 1
            print(f"profile switch round {i} failed: {e}")
            continue
        hops += [h.seconds for h in run.hops]
        phases += [(h.copied_s, h.serving_s) for h in run.hops]
        rejoins += int(sum(h.joins for h in run.hops))
        rejoins += sum(1 for after in run.after for name, ident in run.before.items() if after.get(name) != ident)
        rejoins += sum(max(0, n - 1) for n in run.agent_joins.values())
    if not hops:
        raise RuntimeError(f"profile switch: every one of {SWITCH_ROUNDS} rounds failed")
    params = dict(agents=len(storeswitch.AGENTS), rounds=SWITCH_ROUNDS, hops=len(hops), failures=failures,
                  etcd_members=3, etcd_tls=True, path="sqlite→etcd→sqlite", hop_seconds=[round(h, 2) for h in hops],
                  copied_s_median=round(statistics.median(p[0] for p in phases), 2),
                  serving_s_median=round(statistics.median(p[1] for p in phases), 2),
                  scope="store move on loopback: old meshd stopped → copy → new meshd at the same address → every "
                        "agent applied a change made through it; EC2 launch and the load balancer not included")
    return [record("ha", "profile_switch_s", statistics.median(hops), "s", **params),
            record("ha", "profile_switch_rejoins", rejoins, "joins", goal=0, **params)]


def run() -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench-ha-") as d:
        return (asyncio.run(_run(Path(d))) + asyncio.run(_renewal_writes(Path(d)))
                + asyncio.run(_churn_db_size(Path(d))) + _clusters_on_moto(Path(d)) + _profile_switch(Path(d)))
