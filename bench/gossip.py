"""Gossip benchmarks: the SWIM/Lifeguard state machine in the simulator, plus one
run of real gossip nodes on loopback UDP.

Simulated (tests/sim, seeded, LAN profile: memberlist's LAN timings but for a
shorter probe interval (0.7 s, not 1 s) and a shorter suspicion minimum with
more confirmations, see meshcore/gossip/profiles.py):
- convergence_9999_s_n1000: one catalog record published on one of 1,000
  members until 99.99% of them hold it (no loss). Anchor: Serf's published
  simulation, 2.2 s.
- detection_s_n100 / detection_s_n1000: crash to "every live member marks it
  dead" (median of several crashes at 100, one at 1,000). Anchor: memberlist's
  suspicion bound with its LAN defaults, SuspicionMult (4) * log10(N) * ProbeInterval (1 s).
- false_positives_loss10: healthy members declared dead during 10 simulated
  minutes at 10% loss with 5% of members freezing for 2-4 s at random and 3
  more answering 150 ms late. Goal 0.
- bytes_per_node_s_n1000: bytes each member sends per second (encrypted, steady
  state, no news).

Real processes, nothing crashing: false_positives_real_freezes_n20, 20
meshagent processes on loopback for 2 minutes, two of them frozen (SIGSTOP)
for 2-4 s at random as in the simulated run; members declared dead, summed
from every agent's `meshctl status -o json`. Goal 0. The simulator's runs go on
beside it, in a process of their own: its agents are idle, and simulated time
does not depend on the wall clock.

Real sockets (GossipNode on 127.0.0.1): crash_to_record_removal_s_n20, crash
of one of 20 nodes until its catalog record has left every other node's view
(what the agent's DNS serves from).

Real processes, side by side in the same run (CRASH_ROUNDS crashes each, medians):
- crash_to_dns_removal_s_n20 / _n50: meshagent processes on loopback; SIGKILL
  one; until its service name has left every other agent's DNS. Each sweep asks
  every pending agent at once; the sweep that finds none left counts from its
  start, the rule Serf's side follows. Each round's phases come from the
  agents' own log lines (`member NAME is suspect` / `failed`): the first
  suspicion, the first and last failure verdicts, and the DNS figure.
- serf_crash_to_failed_s_n20 / _n50: real `serf` agents (Debian package) on
  loopback, LAN profile, started here; SIGKILL one; until every live agent
  lists it as failed. The anchor of the line above; the ratio is
  crash_to_dns_removal_ratio_vs_serf_n20 / _n50 (goal <= 0.75).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import random
import re
import statistics
import time

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from bench.common import record
from meshcore.gossip.messages import Record
from meshcore.gossip.profiles import lan, suspicion_timeout
from testbed.sim.simulator import SimNetwork, Simulation

if TYPE_CHECKING:
    from testbed.localmesh import LocalMesh

BENCH = "gossip"


MEMBERLIST_LAN = {"suspicion_mult": 4, "probe_interval": 1.0}  # memberlist.DefaultLANConfig, what Serf runs


def _memberlist_bound(n: int) -> dict:
    value = suspicion_timeout(MEMBERLIST_LAN["suspicion_mult"], n, MEMBERLIST_LAN["probe_interval"])
    return {"name": f"memberlist LAN suspicion bound at n={n} (SuspicionMult*log10(n)*ProbeInterval)",
            "value": round(value, 2)}


def _run_until_detected(sim: Simulation, victim: int, limit: float) -> float | None:
    """Advance in 0.5 s steps (bounded by `limit` simulated seconds) until all saw the crash."""
    end = sim.now + limit
    while sim.now < end:
        sim.run_until(sim.now + 0.5)
        took = sim.detection_time(victim)
        if took is not None:
            return took
    return None


def _big_run(seed: int = 1) -> list[dict]:
    n = 1000
    cpu0 = time.process_time()
    sim = Simulation(n, seed=seed, keyring_key=os.urandom(32))
    sim.run_until(3.0)
    sim.publish(0, Record("bench-svc", 1, "node-0", b'{"port":8888}'))
    t0 = sim.now
    sim.run_until(13.0)
    conv = sim.time_to_fraction("bench-svc", t0, 0.9999)
    curve = sim.convergence_curve("bench-svc", t0, step=0.1, until=2.0)
    b0, p0 = sim.total_bytes_sent(), sim.total_pushpull_bytes_sent()
    sim.run_until(33.0)
    bytes_rate = (sim.total_bytes_sent() - b0) / n / 20.0
    pushpull_rate = (sim.total_pushpull_bytes_sent() - p0) / n / 20.0
    sim.crash(500)
    det = _run_until_detected(sim, 500, limit=6 * suspicion_timeout(lan().suspicion_mult, n, 1.0) + 10)
    sim.run_until(max(sim.now, 60.0))
    cpu = time.process_time() - cpu0
    fp = len(sim.false_positives)
    return [
        record(BENCH, "convergence_9999_s_n1000", conv, "s", goal=1.5,
               anchor={"name": "serf simulation, 99.99% at 1000 nodes", "value": 2.2},
               profile="lan", loss=0.0, seed=seed, curve=[[t, round(f, 4)] for t, f in curve]),
        record(BENCH, "detection_s_n1000", det, "s", goal=12,
               anchor=_memberlist_bound(n), crashes=1, failures=0 if det is not None else 1, profile="lan", loss=0.0, seed=seed, false_positives=fp,
               **sim.detection_phases(500)),
        record(BENCH, "bytes_per_node_s_n1000", bytes_rate, "B/s", profile="lan", loss=0.0, seed=seed,
               encrypted=True, window_s=20.0, pushpull_tcp_b_s=round(pushpull_rate, 1),
               udp_b_s=round(bytes_rate - pushpull_rate, 1)),
        record(BENCH, "simulator_cpu_s_n1000_60s", cpu, "s", goal=60.0, profile="lan", seed=seed,
               simulated_s=round(sim.now, 1), datagrams=sim.datagrams, encrypted=True),
    ]


def _convergence_loss10(seed: int = 4) -> dict:
    sim = Simulation(1000, seed=seed, network=SimNetwork(loss=0.10))
    sim.run_until(3.0)
    sim.publish(0, Record("bench-svc", 1, "node-0", b'{"port":8888}'))
    t0 = sim.now
    sim.run_until(10.0)
    conv = sim.time_to_fraction("bench-svc", t0, 0.9999)
    return record(BENCH, "convergence_9999_s_n1000_loss10", conv, "s",
                  anchor={"name": "serf simulation, 99.99% at 1000 nodes (no loss)", "value": 2.2},
                  profile="lan", loss=0.10, seed=seed)


def _detection_n100(seed: int = 2, crashes: int = 5) -> dict:
    sim = Simulation(100, seed=seed)
    sim.run_until(3.0)
    times = []
    phases: list[dict] = []
    for k in range(crashes):
        victim = 10 + 17 * k
        sim.crash(victim)
        t = _run_until_detected(sim, victim, limit=60.0)
        phases.append(sim.detection_phases(victim))
        sim.run_until(sim.now + 5.0)  # let the news settle before the next crash
        if t is not None:
            times.append(t)
    value = statistics.median(times) if times else None
    return record(BENCH, "detection_s_n100", value, "s", goal=8, anchor=_memberlist_bound(100), profile="lan",
                  loss=0.0, seed=seed, crashes=crashes, detected=len(times), failures=crashes - len(times),
                  statistic="median",
                  samples=[round(t, 3) for t in times], phases=phases, false_positives=len(sim.false_positives))


def _false_positives(seed: int = 3, n: int = 100, minutes: float = 10.0) -> dict:
    sim = Simulation(n, seed=seed, network=SimNetwork(loss=0.10))
    rng = random.Random(seed)
    stalled = rng.sample(range(n), max(1, n // 20))
    slow = rng.sample([i for i in range(n) if i not in stalled], 3)
    for i in slow:
        sim.slow(i, 0.15)
    t, end = 0.0, minutes * 60.0
    while t < end:  # every 5 s, each stalled member freezes with probability 0.3
        t += 5.0
        sim.run_until(t)
        for i in stalled:
            if rng.random() < 0.3:
                sim.stall(i, rng.uniform(2.0, 4.0))
    suspicions = sum(sim.swim(i).stats.suspicions for i in range(n))
    return record(BENCH, "false_positives_loss10", len(sim.false_positives), "count", goal=0,
                  profile="lan", loss=0.10, seed=seed, n=n, simulated_s=end, stalled_members=len(stalled),
                  slow_members=len(slow), slow_extra_s=0.15, suspicions=suspicions)


async def _udp_crash(n: int = 20, rounds: int = 2) -> list[float]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from meshcore.gossip.adapter import GossipNode
    from meshcore.gossip.keyring import Keyring
    from meshcore.gossip.records import ed25519_verifier, make_record

    meshd = Ed25519PrivateKey.generate()
    verify = ed25519_verifier(meshd.public_key())
    key = os.urandom(32)
    nodes: list[GossipNode] = []
    results = []
    try:
        for i in range(n):
            node = GossipNode(f"n{i}", f"vm-{i}", "127.0.0.1", 0, profile=lan(), keyring=Keyring(key),
                              verify_record=verify, rng=random.Random(i),
                              seeds=[f"127.0.0.1:{nodes[0].port}"] if nodes else None)
            await node.start()
            nodes.append(node)
        for r in range(rounds):
            victim = nodes[-1 - r]
            victim.publish(make_record(meshd, f"svc-{r}", 1, victim.node_id, b"x"))
            others = [x for x in nodes if x is not victim and x._udp is not None]
            for _ in range(200):  # wait (bounded) until every node serves the record
                if all(f"svc-{r}" in x.records() for x in others):
                    break
                await asyncio.sleep(0.05)
            t0 = time.monotonic()
            await victim.stop(leave=False)
            for _ in range(1200):  # bounded: 60 s
                if all(f"svc-{r}" not in x.records() for x in others):
                    results.append(time.monotonic() - t0)
                    break
                await asyncio.sleep(0.05)
    finally:
        for node in nodes:
            await node.stop(leave=False)
    return results


def _udp_record() -> dict:
    import uvloop

    samples = uvloop.run(_udp_crash())
    value = statistics.median(samples) if samples else None
    # Its anchor is serf_crash_to_failed_s_n20, measured later in the same run (see run()).
    return record(BENCH, "crash_to_record_removal_s_n20", value, "s", anchor=None, rounds=2,
                  failures=2 - len(samples), statistic="median",
                  profile="lan", transport="udp loopback", samples=[round(s, 3) for s in samples])


CRASH_ROUNDS = 3  # crashes per N, for us and for Serf alike; medians reported


@contextlib.contextmanager
def _agents(n: int, prefix: str) -> Iterator[tuple[LocalMesh, list[str]]]:
    """meshd and n meshagent processes on loopback, named prefix00, prefix01, ... meshd's lease
    is long (120 s), so that only gossip can take a name away in the time measured."""
    from testbed.localmesh import LocalMesh
    with LocalMesh(lease_ttl_s=120, grace_s=120) as mesh:
        mesh.start_meshd()
        token = mesh.token(uses=0)
        names = [f"{prefix}{i:02d}" for i in range(n)]
        mesh.start_agents(names, token)
        yield mesh, names


#: An agent's log line about a member (meshagent.gossip, text format): its time and what it says.
_MEMBER_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) meshagent\.gossip INFO .*? member (\S+) "
                          r"\(.*?\) (is suspect|failed)")


def _member_news(log: Path, offset: int, member: str) -> dict[str, float]:
    """When (wall clock) an agent's log, from byte `offset` on, first said `member` was suspect
    and that it failed."""
    seen: dict[str, float] = {}
    with open(log, "rb") as f:
        f.seek(offset)
        for line in f.read().decode(errors="replace").splitlines():
            m = _MEMBER_LINE.match(line)
            if m and m.group(2) == member:
                what = "suspect" if m.group(3) == "is suspect" else "failed"
                seen.setdefault(what, dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return seen


def _phases(mesh: LocalMesh, others: list[str], offsets: dict[str, int], victim: str, killed_at: float,
            took: float | None) -> dict:
    """One round's phases in seconds from the kill: the first agent to suspect the victim, the
    first and last to declare it failed (how many did), and its name gone from every DNS."""
    news = [_member_news(mesh.agents[o].log, offsets[o], victim) for o in others]
    sus = [x["suspect"] - killed_at for x in news if "suspect" in x]
    failed = [x["failed"] - killed_at for x in news if "failed" in x]
    return {"first_suspect_s": round(min(sus), 3) if sus else None,
            "first_failed_s": round(min(failed), 3) if failed else None,
            "last_failed_s": round(max(failed), 3) if failed else None,
            "agents_failed_it": len(failed), "agents": len(others),
            "dns_removed_s": round(took, 3) if took is not None else None}


def _crash_to_dns_removal(n: int, rounds: int = CRASH_ROUNDS) -> tuple[list[float], int, list[dict]]:
    """Real meshagent processes (LAN profile): SIGKILL one agent; seconds until its service has left
    every other agent's DNS. `rounds` crashes of different agents in one mesh; (samples, failures,
    each round's phases from the agents' logs).

    meshd's lease is set long (120 s) so that only gossip can take the name away in time."""
    import signal

    from testbed.localmesh import resolve, still_resolving
    rng = random.Random(n)
    samples, failures, phases = [], 0, []
    with _agents(n, "g") as (mesh, names):
        victims = rng.sample(names, rounds)
        for r, victim in enumerate(victims):
            svc = f"doomed{r}"
            mesh.meshctl("expose", "--port", "8000", "--name", svc, agent=victim)
            others = [x for x in names if x not in victims[:r + 1]]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not all(resolve(f"{svc}.mesh", mesh.dns(o)) for o in others):
                time.sleep(0.1)
            if not all(resolve(f"{svc}.mesh", mesh.dns(o)) for o in others):
                raise RuntimeError(f"setup: {svc} did not resolve on every agent within 30 s")
            time.sleep(3)  # let every agent's gossip settle into full membership
            offsets = {o: mesh.agents[o].log.stat().st_size for o in others}
            killed_at, t0 = time.time(), time.monotonic()
            mesh.stop(mesh.agents[victim], signal.SIGKILL)
            # Sweeps ask every pending agent at once, and the one that empties the set counts
            # from its start: the same rule as Serf's side (testbed/serf.py, crash_to_all_failed).
            pending = {mesh.dns(o) for o in others}
            deadline = t0 + 60
            took = None
            while pending and time.monotonic() < deadline:  # bounded: 60 s
                s0 = time.monotonic()
                pending = still_resolving(f"{svc}.mesh", sorted(pending), timeout=0.5)
                if not pending:
                    took = s0 - t0
                    break
                time.sleep(0.05)
            if took is None:
                failures += 1
            else:
                samples.append(took)
            phases.append(_phases(mesh, others, offsets, victim, killed_at, took))
    return samples, failures, phases


FREEZE_WINDOW_S = 120.0  # real agents freezing at random, as the simulator's false-positive run does


def _real_freezes(n: int = 20, window_s: float = FREEZE_WINDOW_S, seed: int = 5, beside: str = "") -> dict:
    """Real meshagent processes (LAN profile) on loopback, nothing crashing: every 5 s each of two
    agents freezes (SIGSTOP) with probability 0.3 for 2-4 s, as in the simulator. Afterwards each
    agent's own counters (`meshctl status -o json`, what an operator reads) say how many members it
    declared dead: every one is a false positive."""
    import json
    import signal

    rng = random.Random(seed)
    freezes: list[float] = []
    with _agents(n, "z") as (mesh, names):
        time.sleep(3)  # full membership everywhere
        frozen = rng.sample(names, 2)
        stopped: set[int] = set()
        try:
            end = time.monotonic() + window_s
            while time.monotonic() < end:  # bounded: window_s
                step = time.monotonic() + 5.0
                plan = sorted((rng.uniform(2.0, 4.0), mesh.agents[x].popen.pid) for x in frozen if rng.random() < 0.3)
                t0 = time.monotonic()
                for secs, pid in plan:
                    os.kill(pid, signal.SIGSTOP)
                    stopped.add(pid)
                for secs, pid in plan:
                    time.sleep(max(0.0, t0 + secs - time.monotonic()))
                    os.kill(pid, signal.SIGCONT)
                    stopped.discard(pid)
                    freezes.append(secs)
                time.sleep(max(0.0, step - time.monotonic()))
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
        time.sleep(8)  # a suspicion still running when the window closed ends either way
        totals: dict[str, int] = {}
        for name in names:
            counters = json.loads(mesh.meshctl("status", "-o", "json", agent=name).stdout).get("counters", {})
            for k in ("gossip_members_declared_dead", "gossip_suspicions", "gossip_refutations",
                      "gossip_stalls_detected"):
                totals[k] = totals.get(k, 0) + int(counters.get(k, 0))
    return record(BENCH, "false_positives_real_freezes_n20", totals.get("gossip_members_declared_dead", 0), "count",
                  goal=0, agents=n, profile="lan", transport="udp loopback", window_s=window_s, seed=seed,
                  frozen_agents=2, freezes=len(freezes), freeze_s_max=round(max(freezes, default=0.0), 3),
                  suspicions=totals.get("gossip_suspicions", 0), refutations=totals.get("gossip_refutations", 0),
                  stalls_detected=totals.get("gossip_stalls_detected", 0),
                  how="SIGSTOP/SIGCONT; members declared dead summed over every agent's `meshctl status -o json`",
                  beside=beside or None)


def _serf_crash(n: int, rounds: int = CRASH_ROUNDS) -> tuple[list[float], int, list[dict]]:
    """Real serf agents on loopback (LAN profile): crash -> every live agent lists it failed."""
    from testbed.serf import SerfCluster
    samples, failures, details = [], 0, []
    with SerfCluster(n) as cluster:
        time.sleep(3)
        victims = random.Random(n).sample(sorted(cluster.procs), rounds)
        for victim in victims:
            took, info = cluster.crash_to_all_failed(victim)
            details.append(info)
            if took is None:
                failures += 1
            else:
                samples.append(took)
            time.sleep(2)
    return samples, failures, details


def _side_by_side(n: int) -> list[dict]:
    from testbed import serf
    ours, our_failures, phases = _crash_to_dns_removal(n)
    ours_v = statistics.median(ours) if ours else None
    recs = []
    if serf.available():
        theirs, their_failures, details = _serf_crash(n)
        serf_v = statistics.median(theirs) if theirs else None
        anchor = {"name": f"real serf agents on loopback, n={n}, same run, crash -> all list it failed, median",
                  "value": round(serf_v, 3) if serf_v is not None else None}
        recs.append(record(BENCH, f"serf_crash_to_failed_s_n{n}", serf_v, "s", agents=n, profile="lan",
                           rounds=CRASH_ROUNDS, failures=their_failures, samples=[round(x, 3) for x in theirs],
                           details=details, statistic="median",
                           how="SIGKILL; `serf members -status failed` polled on every live agent in parallel"))
    else:
        anchor = {"name": f"real Serf on loopback at n={n} (FACTS.md)", "value": {20: 7.4, 50: 9.0}.get(n),
                  "measured": False, "source": "shared/FACTS.md (serf not installed)"}
    recs.insert(0, record(BENCH, f"crash_to_dns_removal_s_n{n}", ours_v, "s", agents=n, profile="lan",
                          rounds=CRASH_ROUNDS, failures=our_failures, samples=[round(x, 3) for x in ours],
                          phases=phases, statistic="median", anchor=anchor,
                          goal=round(0.75 * anchor["value"], 3) if anchor["value"] else None))
    ratio = ours_v / anchor["value"] if ours_v is not None and anchor["value"] else None
    recs.append(record(BENCH, f"crash_to_dns_removal_ratio_vs_serf_n{n}", ratio, "ratio", goal=0.75,
                       anchor={"name": "serf, same run", "value": 1.0, "measured": serf.available()},
                       agents=n))
    return recs


def _simulated() -> list[dict]:
    """Every figure of the simulator: they count simulated time, which a busy CPU slows but never changes."""
    return _big_run() + [_convergence_loss10(), _detection_n100(), _false_positives()]


def run() -> list[dict]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # The simulator's runs (about 100 s of one core) go in a process of their own beside the real
    # agents' freeze window (two minutes of idle agents, the other core theirs); whatever is timed
    # on the wall clock (the crash rounds, ours and Serf's) runs after, alone. Spawned, not forked:
    # the bench process may hold gRPC's threads from an earlier benchmark.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        simulated = pool.submit(_simulated)
        freezes = _real_freezes(beside="the simulator's runs, in a process of their own (one core)")
        records = simulated.result()
    records.append(freezes)
    records.append(_udp_record())
    records += _side_by_side(20)
    records += _side_by_side(50)
    serf20 = next((r for r in records if r["metric"] == "serf_crash_to_failed_s_n20"), None)
    if serf20 is not None:  # the in-process figure's anchor: Serf at the same N, this run
        next(r for r in records if r["metric"] == "crash_to_record_removal_s_n20")["anchor"] = {
            "name": "real serf agents on loopback, n=20, same run, median", "value": serf20["value"]}
    return records
