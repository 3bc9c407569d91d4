"""Real etcd processes on loopback for tests and benchmarks.

`EtcdCluster(n, root)` runs n members of one cluster (Debian's etcd-server,
/usr/bin/etcd) on free 127.0.0.1 ports, each with its own data directory under
`root`. Members can be killed (SIGKILL) and restarted with their data kept,
which is how the HA tests take a member or the quorum away. `stop()` kills
every process it started; use it in a `finally` or a fixture.

Timing: tests pass a short heartbeat and election timeout so a lost leader is
replaced quickly; the defaults are etcd's own (100 ms / 1000 ms), which the
failover benchmark uses. etcd derives its minimum lease TTL from them
(1.5 election timeouts, rounded up to whole seconds).

TLS (`tls=True`): as the cluster user data sets up a replica. A store CA is
made under `root/tls`; each member gets a certificate from it (SAN
127.0.0.1 and localhost, serverAuth and clientAuth) for its client and peer
listeners, which are https and require a client certificate from that CA
(--client-cert-auth, --peer-client-cert-auth); `client_files` are a client
certificate and key for meshd and `url` is etcds://.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field

from pathlib import Path

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log: Path
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class EtcdCluster:
    size: int
    root: Path
    heartbeat_ms: int = 100
    election_ms: int = 1000
    #: etcd's --quota-backend-bytes (0: etcd's default, 2 GiB)
    quota_backend_bytes: int = 0
    #: https client and peer URLs with client certificate authentication (see the module docstring)
    tls: bool = False
    members: list[Member] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        for i in range(self.size):
            name = f"m{i}"
            self.members.append(Member(name, free_port(), free_port(), self.root / name,
                                       self.root / f"{name}.log"))
        if self.tls:
            self._make_certs()

    @property
    def tls_dir(self) -> Path:
        return self.root / "tls"

    @property
    def client_files(self) -> tuple[str, str, str]:
        """(CA bundle, client certificate, key) for meshd's --etcd-ca/--etcd-cert/--etcd-key."""
        d = self.tls_dir
        return str(d / "ca.crt"), str(d / "client.crt"), str(d / "client.key")

    def _make_certs(self) -> None:
        from meshcore import pki

        d = self.tls_dir
        d.mkdir(parents=True, exist_ok=True)
        ca = pki.CertificateAuthority.load_or_create(d, name="test store CA")
        for m in self.members:
            key = pki.new_key()
            pki.write_file(d / f"{m.name}.key", pki.key_pem(key), private=True)
            pki.write_file(d / f"{m.name}.crt", ca.store_cert(key, m.name, member=True,
                                                              addresses=["127.0.0.1", "localhost"]))
        key = pki.new_key()
        pki.write_file(d / "client.key", pki.key_pem(key), private=True)
        pki.write_file(d / "client.crt", ca.store_cert(key, "meshd", member=False))

    def channel(self, endpoint: str):
        """A blocking gRPC channel to a member (with the client certificate under TLS)."""
        import grpc

        if not self.tls:
            return grpc.insecure_channel(endpoint)
        ca, crt, key = (Path(f).read_bytes() for f in self.client_files)
        return grpc.secure_channel(endpoint, grpc.ssl_channel_credentials(ca, key, crt))

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def url(self) -> str:
        return ("etcds://" if self.tls else "etcd://") + ",".join(self.endpoints)

    def tls_args(self, m: Member) -> list[str]:
        if not self.tls:
            return []
        d = self.tls_dir
        crt, key, ca = str(d / f"{m.name}.crt"), str(d / f"{m.name}.key"), str(d / "ca.crt")
        return ["--cert-file", crt, "--key-file", key, "--trusted-ca-file", ca, "--client-cert-auth",
                "--peer-cert-file", crt, "--peer-key-file", key, "--peer-trusted-ca-file", ca,
                "--peer-client-cert-auth"]

    def _args(self, m: Member, state: str) -> list[str]:
        scheme = "https" if self.tls else "http"
        initial = ",".join(f"{o.name}={scheme}://127.0.0.1:{o.peer_port}" for o in self.members)
        return [ETCD, "--name", m.name, "--data-dir", str(m.data_dir),
                "--listen-client-urls", f"{scheme}://{m.endpoint}",
                "--advertise-client-urls", f"{scheme}://{m.endpoint}",
                "--listen-peer-urls", f"{scheme}://127.0.0.1:{m.peer_port}",
                "--initial-advertise-peer-urls", f"{scheme}://127.0.0.1:{m.peer_port}",
                *self.tls_args(m),
                "--initial-cluster", initial, "--initial-cluster-state", state,
                "--initial-cluster-token", f"meshtest-{os.getpid()}-{self.root.name}",
                "--heartbeat-interval", str(self.heartbeat_ms),
                "--election-timeout", str(self.election_ms),
                "--log-level", "warn", "--logger", "zap",
                *(["--quota-backend-bytes", str(self.quota_backend_bytes)] if self.quota_backend_bytes else [])]

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start_member(self, i: int, state: str = "new") -> None:
        m = self.members[i]
        if m.alive:
            return
        with open(m.log, "ab") as log:
            m.proc = subprocess.Popen(self._args(m, state), stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    def start(self, timeout: float = 20.0, attempts: int = 3) -> EtcdCluster:
        """Start every member; a port another process took between `free_port()` and etcd's bind
        (the one race of picking ports this way) means new ports and a fresh start, `attempts` times."""
        self.root.mkdir(parents=True, exist_ok=True)
        for attempt in range(attempts):
            try:
                for i in range(self.size):
                    self.start_member(i)
                self.wait_ready(timeout)
                return self
            except RuntimeError as e:
                self.stop()
                if "address already in use" not in str(e) or attempt == attempts - 1:
                    raise
                for m in self.members:  # a new cluster on new ports: nothing of the failed start is kept
                    shutil.rmtree(m.data_dir, ignore_errors=True)
                    m.client_port, m.peer_port, m.proc = free_port(), free_port(), None
            except BaseException:
                self.stop()
                raise
        return self

    def wait_ready(self, timeout: float = 20.0, members: list[int] | None = None) -> None:
        """Wait until every (given, live) member answers a linearizable read, i.e. the cluster has a leader."""
        import grpc

        from meshd.store.etcdpb import rpc_pb2, rpc_pb2_grpc

        want = members if members is not None else [i for i, m in enumerate(self.members) if m.alive]
        deadline = time.monotonic() + timeout
        for i in want:
            m = self.members[i]
            while True:  # bounded by the deadline
                if not m.alive:
                    raise RuntimeError(f"etcd member {m.name} exited: {self.tail(i)}")
                try:
                    with self.channel(m.endpoint) as ch:
                        # a linearizable read succeeds only once the cluster has a leader
                        rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"/", count_only=True), timeout=1)
                    break
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"etcd member {m.name} not ready in {timeout}s: {self.tail(i)}")
                    time.sleep(0.05)

    def leader_index(self, timeout: float = 10.0) -> int:
        """The index of the member that currently leads (asked of the live members)."""
        import grpc

        from meshd.store.etcdpb import rpc_pb2, rpc_pb2_grpc

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # bounded
            for i, m in enumerate(self.members):
                if not m.alive:
                    continue
                try:
                    with self.channel(m.endpoint) as ch:
                        st = rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=1)
                except grpc.RpcError:
                    continue
                if st.leader and st.leader == st.header.member_id:
                    return i
            time.sleep(0.05)
        raise RuntimeError("no etcd leader found")

    def kill(self, i: int) -> None:
        m = self.members[i]
        if m.proc is not None and m.proc.poll() is None:
            m.proc.send_signal(signal.SIGKILL)
            m.proc.wait(10)

    def restart(self, i: int) -> None:
        """Start a killed member again on its data directory (it rejoins the cluster)."""
        self.kill(i)
        self.start_member(i, state="existing")

    def tail(self, i: int, n: int = 800) -> str:
        try:
            return self.members[i].log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:
                m.proc.send_signal(signal.SIGKILL)
                try:
                    m.proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
