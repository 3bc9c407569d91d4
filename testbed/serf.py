"""Real Serf agents on loopback, for anchors measured in the same run (Debian package `serf`).

Each agent binds its own port on 127.0.0.1 with the LAN profile and joins the
first one. Every agent runs an event handler that appends the wall-clock time
and the failed member's name to a file of its own when it sees `member-failed`,
so detection is read from the agents' own events, not from polling.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from testbed.localmesh import rss_mb


def available() -> bool:
    return shutil.which("serf") is not None


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(20 * n):  # bounded; a port free for UDP but taken for TCP is skipped
            if len(ports) == n:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                t.bind(("127.0.0.1", port))
            except OSError:
                t.close()
                s.close()
                continue
            socks += [s, t]
            ports.append(port)
    finally:
        for s in socks:
            s.close()
    if len(ports) < n:
        raise RuntimeError(f"found only {len(ports)} of {n} free loopback ports")
    return ports


class SerfCluster:
    def __init__(self, n: int, profile: str = "lan") -> None:
        self.n = n
        self.profile = profile
        self.root = Path(tempfile.mkdtemp(prefix="serf-"))
        self.procs: dict[str, subprocess.Popen] = {}
        self.rpc: dict[str, str] = {}

    def start(self, timeout: float = 60.0) -> "SerfCluster":
        ports = _free_ports(2 * self.n)
        first = None
        for i in range(self.n):
            name = f"serf-{i:02d}"
            bind, rpc = ports[2 * i], ports[2 * i + 1]
            out = self.root / f"{name}.failed"
            handler = self.root / f"{name}.sh"
            handler.write_text("#!/bin/sh\nwhile read m rest; do echo \"$(date +%s.%N) $m\" >> " f"{out}; done\n")
            handler.chmod(0o755)
            argv = ["serf", "agent", "-node", name, "-bind", f"127.0.0.1:{bind}", "-rpc-addr", f"127.0.0.1:{rpc}",
                    "-profile", self.profile, "-log-level", "warn", "-event-handler", f"member-failed={handler}"]
            if first:
                argv += ["-join", first]
            log = open(self.root / f"{name}.log", "wb")
            self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
            self.rpc[name] = f"127.0.0.1:{rpc}"
            if first is None:
                first = f"127.0.0.1:{bind}"
                time.sleep(0.3)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # bounded: every agent sees every other alive
            if all(self.alive_count(name) == self.n for name in (next(iter(self.procs)), list(self.procs)[-1])):
                return self
            time.sleep(0.5)
        raise RuntimeError(f"{self.n} serf agents did not form one cluster within {timeout:.0f} s")

    def alive_count(self, name: str) -> int:
        try:
            out = subprocess.run(["serf", "members", "-rpc-addr", self.rpc[name], "-status", "alive"],
                                 capture_output=True, text=True, timeout=5).stdout
        except subprocess.TimeoutExpired:
            return 0
        return sum(1 for line in out.splitlines() if line.strip())

    def crash(self, name: str) -> float:
        """SIGKILL one agent; the wall-clock time of the kill."""
        t = time.time()
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait()
        return t

    def failed_seen(self, victim: str) -> dict[str, float]:
        """For each live agent, the wall-clock time its handler saw `victim` fail."""
        seen = {}
        for name, p in self.procs.items():
            if name == victim or p.poll() is not None:
                continue
            f = self.root / f"{name}.failed"
            if not f.exists():
                continue
            for line in f.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 2 and parts[1] == victim:
                    seen[name] = float(parts[0])
                    break
        return seen

    def failed_now(self, names: list[str], victim: str) -> set[str]:
        """Which of `names` list `victim` as failed right now (`serf members`, queried in parallel)."""
        procs = {n: subprocess.Popen(["serf", "members", "-rpc-addr", self.rpc[n], "-status", "failed",
                                      "-name", f"^{victim}$"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True) for n in names}
        out = set()
        for n, p in procs.items():
            try:
                text, _ = p.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                continue
            if victim in text:
                out.add(n)
        return out

    def crash_to_all_failed(self, victim: str, limit_s: float = 60.0) -> tuple[float | None, dict]:
        """Crash `victim`; seconds until every other live agent lists it as failed (None if not in time).

        Each live agent's member list is read in parallel sweeps; an agent counts from the start
        of the first sweep that shows the victim failed (a lower bound, so never in Serf's
        disfavour). The handler-based time (Serf's own `member-failed` event, which the agent
        delays by its coalescing window) is returned alongside in the details."""
        live = [n for n, p in self.procs.items() if n != victim and p.poll() is None]
        t0 = self.crash(victim)
        m0 = time.monotonic()
        pending = set(live)
        took = None
        sweeps: list[float] = []
        while pending and time.monotonic() < m0 + limit_s:  # bounded
            s0 = time.monotonic()
            pending -= self.failed_now(sorted(pending), victim)
            sweeps.append(time.monotonic() - s0)
            if not pending:
                took = s0 - m0
                break
            time.sleep(0.05)
        seen = {}
        for _ in range(40):  # the handlers run after Serf's coalescing window: wait for them, bounded
            seen = self.failed_seen(victim)
            if len(seen) == len(live):
                break
            time.sleep(0.25)
        handler = max(seen.values()) - t0 if len(seen) == len(live) else None
        return took, {"sweeps": len(sweeps), "sweep_s_max": round(max(sweeps), 3) if sweeps else None,
                      "handler_all_failed_s": round(handler, 3) if handler is not None else None}

    def rss_mb(self) -> list[float]:
        out = []
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    out.append(rss_mb(p.pid))
                except RuntimeError:  # it ended meanwhile
                    pass
        return out

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
        for p in self.procs.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "SerfCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    with SerfCluster(int(os.environ.get("N", "10"))) as c:
        print("formed", c.n, "rss", round(max(c.rss_mb()), 1))
        print("crash ->", c.crash_to_all_failed("serf-03"))
