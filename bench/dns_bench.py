"""DNS responder throughput and latency, side by side with dnsmasq.

Model: the responder runs in its own process (uvloop, pinned to CPU 0, a
catalog of SERVICES names), and the load generator in another process pinned
to CPU 1, so "queries per second on one core" means the responder's core.
The load generator is dnsperf when installed (C, it outruns any Python
responder), else a small Python UDP generator in a separate process.

- `dns_qps`: A queries for the catalog's names, IN_FLIGHT outstanding, for
  QPS_SECONDS per round; `dns_qps_no_answer_cache` the same with the
  responder's answer cache off (every query parsed and built by dnslib).
- `dns_p99_ms`: the same queries paced at RATE q/s for P99_SECONDS per
  round; p99 of per-query latency as the load generator saw it.
- dnsmasq, when installed, serves the same names as local records
  (--no-resolv, --no-daemon) on the same core and is measured by the same
  generator in the same run, in alternating rounds: `dnsmasq_qps`,
  `dnsmasq_p99_ms` and the ratios; dnsmasq's figures from this run are the
  anchors (FACTS.md's ~119k q/s and p99 0.2 ms stand in, marked as not
  measured, only when dnsmasq is missing).
- Every figure is the median over ROUNDS rounds; queries lost by the load
  generator are reported (`lost` per round, `dns_lost_queries_paced`).

Every measurement is bounded in time; every process started here is stopped.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import median, percentile, record

BENCH = "control"
SERVICES = 100
QPS_SECONDS = 4
P99_SECONDS = 3
ROUNDS = 3
RATE = 1000
IN_FLIGHT = 100
SERVER_CPU, LOAD_CPU = 0, 1
ANCHOR_QPS = {"name": "dnsmasq, local record, one core (FACTS.md)", "value": 119000}
ANCHOR_P99 = {"name": "dnsmasq p99 at 1k q/s (FACTS.md)", "value": 0.2}


def _names() -> list[str]:
    return [f"svc-{i}.mesh" for i in range(SERVICES)]


def _address(i: int) -> str:
    return f"10.{100 + i // 250}.{i % 250}.{1 + i % 200}"


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


# -- the responder under test, in its own process ------------------------------

def _serve(port_out, stop, answer_cache_s: float) -> None:
    import uvloop

    from meshagent.dns import DnsConfig, DnsServer, Target

    _pin(SERVER_CPU)
    catalog = {f"svc-{i}": [Target(_address(i), 8000, "tcp", f"node-{i}")] for i in range(SERVICES)}

    async def main() -> None:
        config = DnsConfig(host="127.0.0.1", port=0, upstreams=(), answer_cache_s=answer_cache_s)
        server = DnsServer(config, lambda name: catalog.get(name, []))
        await server.start()
        port_out.send(server.port)
        try:
            while not stop.is_set():
                await asyncio.sleep(0.1)
        finally:
            await server.stop()

    uvloop.run(main())


class _Responder:
    def __init__(self, answer_cache_s: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        receiver, sender = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_serve, args=(sender, self._stop, answer_cache_s), daemon=True)
        self._proc.start()
        deadline = time.monotonic() + 30
        while not receiver.poll(0.1):
            if not self._proc.is_alive() or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("the DNS responder process did not start")
        self.port = receiver.recv()

    def close(self) -> None:
        self._stop.set()
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)


class _Dnsmasq:
    def __init__(self) -> None:
        port = _free_port()
        records = [f"--host-record={name},{_address(i)}" for i, name in enumerate(_names())]
        self._proc = subprocess.Popen(
            ["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--bind-interfaces",
             "--listen-address=127.0.0.1", f"--port={port}", "--user=root", "--pid-file=",
             "--log-facility=-", *records],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=lambda: _pin(SERVER_CPU))
        self.port = port
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # wait until it answers
            if _query_once(port) is not None:
                return
            if self._proc.poll() is not None:
                break
            time.sleep(0.05)
        self.close()
        raise RuntimeError("dnsmasq did not start answering within 5 s")

    def close(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)


def _free_port() -> int:
    # UDP and TCP both free on one port number (dnsmasq listens on both).
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def _query_once(port: int, timeout: float = 0.2) -> bytes | None:
    from dnslib import DNSRecord

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(DNSRecord.question(_names()[0]).pack(), ("127.0.0.1", port))
            return s.recv(512)
        except OSError:
            return None


# -- load generators ---------------------------------------------------------

def _dnsperf(port: int, seconds: int, rate: int | None, querydir: str) -> dict:
    qfile = Path(querydir) / "queries.txt"
    qfile.write_text("".join(f"{n} A\n" for n in _names()))
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile), "-l", str(seconds),
           "-c", "1", "-T", "1", "-q", str(IN_FLIGHT), "-t", "1"]
    if rate:
        cmd += ["-Q", str(rate), "-v"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30,
                         preexec_fn=lambda: _pin(LOAD_CPU)).stdout
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    lost = int(re.search(r"Queries lost:\s+(\d+)", out).group(1))
    lat = [float(m) * 1000 for m in re.findall(r"^> \S+ \S+ \S+ ([\d.]+)$", out, re.M)]
    return {"qps": qps, "lost": lost, "latencies_ms": lat}


def _py_load(port: int, seconds: int, rate: int | None, out) -> None:
    """Python fallback generator: a window of IN_FLIGHT queries (rate None), or
    paced queries at `rate` q/s, each timed from send to reply."""
    from dnslib import DNSRecord

    _pin(LOAD_CPU)
    queries = [DNSRecord.question(n) for n in _names()]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("127.0.0.1", port))
    s.settimeout(1.0)
    sent_at: dict[int, float] = {}
    lat: list[float] = []
    done = lost = 0
    start = time.perf_counter()
    end = start + seconds
    qid = 0

    def send() -> None:
        nonlocal qid
        qid = (qid + 1) & 0xFFFF
        q = queries[qid % len(queries)]
        q.header.id = qid
        sent_at[qid] = time.perf_counter()
        s.send(q.pack())

    def receive() -> None:
        nonlocal done, lost
        try:
            data = s.recv(512)
        except TimeoutError:
            lost += len(sent_at)
            sent_at.clear()
            return
        t0 = sent_at.pop(int.from_bytes(data[:2], "big"), None)
        if t0 is not None:
            done += 1
            lat.append((time.perf_counter() - t0) * 1000)

    if rate is None:
        while time.perf_counter() < end:
            while len(sent_at) < IN_FLIGHT:
                send()
            receive()
    else:
        n = 0
        while time.perf_counter() < end:
            due = start + n / rate
            while time.perf_counter() < due:
                pass  # busy-wait: sleep() is too coarse for 1 ms pacing
            send()
            receive()
            n += 1
    s.close()
    out.send({"qps": done / (time.perf_counter() - start), "lost": lost, "latencies_ms": lat})


def _python_gen(port: int, seconds: int, rate: int | None) -> dict:
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_py_load, args=(port, seconds, rate, sender), daemon=True)
    proc.start()
    try:
        if not receiver.poll(seconds + 30):
            raise RuntimeError("load generator did not finish")
        return receiver.recv()
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()


def _load(port: int, seconds: int, rate: int | None, tmp: str) -> dict:
    if shutil.which("dnsperf"):
        return _dnsperf(port, seconds, rate, tmp)
    return _python_gen(port, seconds, rate)


# -- the benchmark -----------------------------------------------------------

def run_dns() -> list[dict]:
    """Peers run side by side and are measured in alternating rounds, so a
    burst of load from elsewhere on the machine hits both; each figure is the
    median over the rounds, and the queries the load generator lost (no answer
    in time) are counted and reported, never dropped. dnsmasq, run here in the
    same rounds, is the anchor of every figure; FACTS.md's numbers only stand in
    (marked `"measured": false`) when dnsmasq is not installed."""
    gen = "dnsperf" if shutil.which("dnsperf") else "python"
    params = {"services": SERVICES, "loadgen": gen, "in_flight": IN_FLIGHT, "server_cpu": SERVER_CPU,
              "seconds": QPS_SECONDS, "rounds": ROUNDS, "statistic": "median over rounds"}
    paced = {"rate": RATE, "loadgen": gen, "seconds": P99_SECONDS, "rounds": ROUNDS,
             "statistic": "median over rounds"}
    peers: dict[str, object] = {}
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            peers["ours"] = _Responder(answer_cache_s=1.0)
            peers["ours_no_cache"] = _Responder(answer_cache_s=0.0)
            if shutil.which("dnsmasq"):
                peers["dnsmasq"] = _Dnsmasq()
            qps: dict[str, list[float]] = {name: [] for name in peers}
            p99: dict[str, list[float]] = {name: [] for name in peers if name != "ours_no_cache"}
            lost_qps: dict[str, list[int]] = {name: [] for name in peers}
            lost_p99: dict[str, list[int]] = {name: [] for name in p99}
            for _ in range(ROUNDS):
                for name, peer in peers.items():
                    res = _load(peer.port, QPS_SECONDS, None, tmp)
                    qps[name].append(res["qps"])
                    lost_qps[name].append(res["lost"])
                for name in p99:
                    res = _load(peers[name].port, P99_SECONDS, RATE, tmp)
                    lost_p99[name].append(res["lost"])
                    # A lost query has no latency: the round's p99 is null if more than 1% were lost.
                    answered = len(res["latencies_ms"])
                    if res["latencies_ms"] and res["lost"] <= 0.01 * (answered + res["lost"]):
                        p99[name].append(percentile(res["latencies_ms"] + [float("inf")] * res["lost"], 99))
                    else:
                        p99[name].append(float("inf"))
        finally:
            for peer in peers.values():
                peer.close()

    def med(xs: list[float]) -> float | None:
        return median(xs) if xs else None

    have = "dnsmasq" in peers
    if have:
        anchor_qps = {"name": "dnsmasq, same names, same run, median q/s", "value": round(med(qps["dnsmasq"]), 1)}
        anchor_p99 = {"name": "dnsmasq, same rate, same run, median p99 (ms)", "value": round(med(p99["dnsmasq"]), 3)}
    else:
        anchor_qps = dict(ANCHOR_QPS, measured=False, source="shared/FACTS.md (dnsmasq not installed)")
        anchor_p99 = dict(ANCHOR_P99, measured=False, source="shared/FACTS.md (dnsmasq not installed)")
    records.append(record(BENCH, "dns_qps", med(qps["ours"]), "q/s", "higher", None, anchor_qps,
                          answer_cache=True, all_rounds=qps["ours"], lost=lost_qps["ours"], **params))
    records.append(record(BENCH, "dns_p99_ms", med(p99["ours"]), "ms", "lower", None, anchor_p99,
                          all_rounds=p99["ours"], lost=lost_p99["ours"], **paced))
    records.append(record(BENCH, "dns_lost_queries_paced", sum(lost_p99["ours"]), "queries", "lower", 0,
                          None, **paced))
    records.append(record(BENCH, "dns_qps_no_answer_cache", med(qps["ours_no_cache"]), "q/s", "higher",
                          None, anchor_qps, answer_cache=False, all_rounds=qps["ours_no_cache"],
                          lost=lost_qps["ours_no_cache"], **params))
    if have:
        records.append(record(BENCH, "dnsmasq_qps", med(qps["dnsmasq"]), "q/s", "higher", None, None,
                              all_rounds=qps["dnsmasq"], lost=lost_qps["dnsmasq"], **params))
        records.append(record(BENCH, "dnsmasq_p99_ms", med(p99["dnsmasq"]), "ms", "lower", None, None,
                              all_rounds=p99["dnsmasq"], lost=lost_p99["dnsmasq"], **paced))
        records.append(record(BENCH, "dns_qps_ratio_vs_dnsmasq", med(qps["ours"]) / med(qps["dnsmasq"]), "ratio",
                              "higher", None, {"name": "dnsmasq, same run", "value": 1.0}, **params))
        records.append(record(BENCH, "dns_p99_ratio_vs_dnsmasq", med(p99["ours"]) / med(p99["dnsmasq"]), "ratio",
                              "lower", None, {"name": "dnsmasq, same run", "value": 1.0}, **paced))
    return records


def run() -> list[dict]:
    return run_dns()

if __name__ == "__main__":
    from bench.common import show

    show(run_dns())
