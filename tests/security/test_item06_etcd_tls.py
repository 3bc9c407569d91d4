"""Item 6: the replicas' etcd speaks TLS only, wants a client certificate from the cluster's *store* CA
(not the mesh CA every node holds a certificate from), and only the coordinators' security group reaches
its ports.

Real etcd processes throughout: a three-member cluster with TLS and client-certificate auth (as
testbed/etcd_cluster.py starts it), and one started from the very /etc/default/etcd the cluster user
data writes, with certificates made by the `meshctl install store-certs` line of that user data. The
security groups are checked on the moto server after a real `cluster create`.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import random
import re
import socket
import ssl
import subprocess
import time
import uuid
from pathlib import Path

import boto3
import grpc
import pytest

from meshcore import pki
from meshcore.errors import ConfigError, Unavailable
from meshd.store import open_store
from meshd.store.base import Put
from meshd.store.etcd import EtcdStore
from meshd.store.etcd_tls import load
from meshd.store.etcdpb import rpc_pb2, rpc_pb2_grpc
from testbed.etcd_cluster import ETCD, EtcdCluster
from testbed.localmesh import BIN, LocalMesh
from tests.conftest import require_netns
# the AWS fixtures of tests/infra (one moto server, the assumed cluster role)
from tests.infra.conftest import (  # noqa: F401
    _cluster_selections, base_aws, cluster_quotas, cluster_ops, cluster_role, moto, moto_url, pricing_double,
    shared_session, sleeps, sts,
)


@pytest.fixture(scope="module")
def etcd_tls(tmp_path_factory):
    require_netns("etcd")
    with EtcdCluster(3, tmp_path_factory.mktemp("etcd-tls"), heartbeat_ms=50, election_ms=300, tls=True) as c:
        yield c


@pytest.fixture(scope="module")
def node_cert(tmp_path_factory) -> tuple[bytes, bytes]:
    """A mesh node's certificate and key, exactly as meshd signs them at join (mesh CA, O=mesh-node)."""
    ca = pki.CertificateAuthority.load_or_create(tmp_path_factory.mktemp("mesh-ca"))
    key = pki.new_key()
    return ca.sign_csr(pki.make_csr(key, "node-1"), "node-1", pki.KIND_NODE), pki.key_pem(key)


def _range(endpoint: str, creds: grpc.ChannelCredentials | None) -> rpc_pb2.RangeResponse:
    ch = grpc.secure_channel(endpoint, creds) if creds is not None else grpc.insecure_channel(endpoint)
    with ch:
        return rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0", count_only=True),
                                               timeout=3)


def _creds(cluster: EtcdCluster, cert: bytes | None = None, key: bytes | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(Path(cluster.client_files[0]).read_bytes(), key, cert)


def _https(port: int, ca: str, cert: tuple[str, str] | None, path: str) -> int:
    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(*cert)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def _plain_http(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /version HTTP/1.1\r\nHost: etcd\r\n\r\n")
        return s.recv(4096)


async def test_meshd_reads_writes_and_watches_over_tls_with_its_client_certificate(etcd_tls, tmp_path):
    ca, crt, key = etcd_tls.client_files
    store = open_store(etcd_tls.url + f"/t-{uuid.uuid4().hex[:8]}", tmp_path, etcd_ca=ca, etcd_cert=crt, etcd_key=key)
    try:
        assert store.describe.startswith("etcds:")
        rev = (await store.txn([], [Put("a", b"1")])).revision
        assert (await store.get("a")).value == b"1"
        lease = await store.lease_grant(5)
        await store.txn([], [Put("b", b"2", lease=lease)])
        got = []
        async for batch in store.watch("", rev - 1):
            got += [(e.type, e.kv.key) for e in batch]
            if len(got) >= 2:
                break
        assert got == [("put", "a"), ("put", "b")]
    finally:
        await store.close()


def test_meshd_the_process_runs_on_etcds(etcd_tls, tmp_path):
    ca, crt, key = etcd_tls.client_files
    m = LocalMesh(tmp_path / "mesh")
    m.root.mkdir()
    try:
        m.start_meshd(extra=("--store", etcd_tls.url + "/proc", "--etcd-ca", ca, "--etcd-cert", crt,
                             "--etcd-key", key))
        assert m.token()  # a write to the store
    finally:
        m.close()
    resp = _range(etcd_tls.endpoints[0], _creds(etcd_tls, Path(crt).read_bytes(), Path(key).read_bytes()))
    assert resp.count > 0


def test_a_client_without_a_certificate_is_refused(etcd_tls):
    for ep in etcd_tls.endpoints:
        with pytest.raises(grpc.RpcError) as e:
            _range(ep, _creds(etcd_tls))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    ca = etcd_tls.client_files[0]
    with pytest.raises(ssl.SSLError, match="BAD_CERTIFICATE|bad certificate"):
        _https(etcd_tls.members[0].client_port, ca, None, "/version")


async def test_a_mesh_node_certificate_is_refused(etcd_tls, node_cert, tmp_path):
    cert, key = node_cert
    ca = etcd_tls.client_files[0]
    # the same request with meshd's certificate passes: only the certificate differs
    ok = _range(etcd_tls.endpoints[0], _creds(etcd_tls, *(Path(f).read_bytes() for f in etcd_tls.client_files[1:])))
    assert ok.header.revision > 0
    with pytest.raises(grpc.RpcError) as e:
        _range(etcd_tls.endpoints[0], _creds(etcd_tls, cert, key))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    # and through meshd's own store code: a node certificate gets nothing
    (tmp_path / "node.crt").write_bytes(cert)
    (tmp_path / "node.key").write_bytes(key)
    tls = load(ca, str(tmp_path / "node.crt"), str(tmp_path / "node.key"))
    store = EtcdStore.from_url(etcd_tls.url, tls=tls, failover_timeout=1.0, request_timeout=1.0)
    try:
        with pytest.raises(Unavailable, match="no etcd member is reachable"):
            await store.get("x")
    finally:
        await store.close()
    # nor on the peer port
    (tmp_path / "node.pem").write_bytes(cert + key)
    with pytest.raises(ssl.SSLError, match="BAD_CERTIFICATE|bad certificate"):
        _https(etcd_tls.members[0].peer_port, ca, (str(tmp_path / "node.pem"), str(tmp_path / "node.pem")),
               "/members")


async def test_plain_http_to_the_tls_ports_gets_nothing(etcd_tls):
    m = etcd_tls.members[0]
    for port in (m.client_port, m.peer_port):
        assert _plain_http(port) == b""  # the TLS listener closes the connection: no etcd answer
    with pytest.raises(grpc.RpcError) as e:
        _range(m.endpoint, None)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(ConfigError, match="etcds://"):
        EtcdStore.from_url(etcd_tls.url.replace("etcds://", "etcd://"), tls=load(*etcd_tls.client_files))
    plain = EtcdStore.from_url(etcd_tls.url.replace("etcds://", "etcd://"), failover_timeout=1.0, request_timeout=1.0)
    try:
        with pytest.raises(Unavailable):
            await plain.get("x")
    finally:
        await plain.close()


def test_peers_talk_tls_with_store_certificates(etcd_tls):
    d = etcd_tls.tls_dir
    ca = str(d / "ca.crt")
    for m in etcd_tls.members:
        # the member list over the peer port, with a member's certificate: every peer URL is https
        assert _https(m.peer_port, ca, (str(d / "m1.crt"), str(d / "m1.key")), "/members") == 200
        assert m.alive
        args = etcd_tls._args(m, "new")
        assert args[args.index("--listen-peer-urls") + 1].startswith("https://")
        assert "--peer-client-cert-auth" in args and "--client-cert-auth" in args
    with pytest.raises(ssl.SSLError, match="BAD_CERTIFICATE|bad certificate"):
        _https(etcd_tls.members[1].peer_port, ca, None, "/members")
    # a three-member cluster that commits a write has peers that talk: they can only over TLS
    leader = etcd_tls.leader_index()
    st = etcd_tls.channel(etcd_tls.endpoints[leader])
    with st:
        status = rpc_pb2_grpc.MaintenanceStub(st).Status(rpc_pb2.StatusRequest(), timeout=3)
    assert status.leader and status.raftIndex > 0


@pytest.mark.parametrize("bad, flag", [
    ("ca", "--etcd-ca"), ("cert", "--etcd-cert"), ("key", "--etcd-key"), ("mismatch", "--etcd-key"),
    ("missing", "--etcd-cert"), ("server-only", "--etcd-cert"),
])
def test_meshd_refuses_to_start_on_a_bad_tls_file_naming_the_flag(etcd_tls, tmp_path, bad, flag):
    ca, crt, key = etcd_tls.client_files
    files = {"ca": ca, "cert": crt, "key": key}
    junk = tmp_path / "junk.pem"
    junk.write_text("not PEM\n")
    if bad in ("ca", "cert", "key"):
        files[bad] = str(junk)
    elif bad == "mismatch":
        other = tmp_path / "other.key"
        other.write_bytes(pki.key_pem(pki.new_key()))
        files["key"] = str(other)
    elif bad == "missing":
        files["cert"] = str(tmp_path / "nope.crt")
    else:  # a server certificate is not a client certificate
        k = pki.new_key()
        ca_obj = pki.CertificateAuthority.load_or_create(etcd_tls.tls_dir)
        (tmp_path / "srv.crt").write_bytes(ca_obj.server_cert(k))
        (tmp_path / "srv.key").write_bytes(pki.key_pem(k))
        files["cert"], files["key"] = str(tmp_path / "srv.crt"), str(tmp_path / "srv.key")
    r = subprocess.run([str(BIN / "meshd"), "--state-dir", str(tmp_path / "s"), "--store", etcd_tls.url,
                        "--etcd-ca", files["ca"], "--etcd-cert", files["cert"], "--etcd-key", files["key"]],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()  # argparse: the usage, then one line saying what is wrong
    assert lines[0].startswith("usage: meshd") and lines[-1].startswith("meshd: error: ") and flag in lines[-1], r.stderr
    assert "Traceback" not in r.stderr


def test_the_tls_flags_only_go_with_an_etcds_store(tmp_path, etcd_tls):
    ca, crt, key = etcd_tls.client_files
    with pytest.raises(ConfigError, match="--etcd-ca apply only to an etcds:// store"):
        open_store("sqlite", tmp_path, etcd_ca=ca)
    with pytest.raises(ConfigError, match="needs --etcd-cert"):
        open_store(etcd_tls.url, tmp_path, etcd_ca=ca)


# -- what `meshctl cluster create` puts on a replica, run for real ------------------------------------



def _user_data(ips: list[str]) -> list[str]:
    from infra.cluster.instances import Slot, etcd_members, user_data
    from infra.cluster.lifecycle import new_doc
    from tests.infra.test_cluster import spec

    doc = new_doc("tls.example", spec(profile="performance"))
    slots = [Slot(f"replica-{i}", "replica", "us-east-1", "m6i.large", "us-east-1a", ip) for i, ip in enumerate(ips)]
    return [user_data(doc, s, "mesh-c.elb.amazonaws.com:7443", etcd_members(slots)) for s in slots]


def _section(script: str, start: str, end: str) -> str:
    lines = script.splitlines()
    i = next(n for n, ln in enumerate(lines) if start in ln)
    j = next(n for n in range(i + 1, len(lines)) if lines[n].strip() == end)
    return "\n".join(lines[i:j + 1])


def _render(script: str, etc_default: Path) -> tuple[dict[str, str], str, list[str], list[str]]:
    """Run the user data's own lines in bash: its variables, the /etc/default/etcd heredoc, the store
    URL and meshd's TLS options. Returns (etcd env, store URL, meshd options, store-certs argv)."""
    head = "\n".join(ln for ln in script.splitlines() if re.match(r"^[A-Z_]+='[^']*'", ln))
    heredoc = _section(script, "cat > /etc/default/etcd <<EOF", "EOF").replace("/etc/default/etcd", str(etc_default))
    tail = "\n".join(ln for ln in script.splitlines() if re.match(r"^\s+(store|etcd_tls)=\"", ln))
    lines = script.splitlines()
    i = next(n for n, ln in enumerate(lines) if "meshctl install store-certs" in ln)
    certs_cmd = lines[i].strip().rstrip("\\") + " " + lines[i + 1].strip()
    out = subprocess.run(["bash", "-euc", f"{head}\n{heredoc}\n{tail}\necho \"$store\"\necho \"$etcd_tls\"\n"
                          f"for w in {certs_cmd}; do echo \"W:$w\"; done"],
                         capture_output=True, text=True, check=True, timeout=30).stdout.splitlines()
    env = dict(ln.split("=", 1) for ln in etc_default.read_text().splitlines() if "=" in ln)
    return env, out[0], out[1].split(), [w[2:] for w in out[2:] if w.startswith("W:")]


def _free_loopback_ips(n: int) -> list[str]:
    for _ in range(20):  # bounded: a /24 of 127/8 whose etcd ports are free
        net = f"127.{random.randint(20, 250)}.{random.randint(1, 250)}"
        ips = [f"{net}.{i + 1}" for i in range(n)]
        try:
            for ip in ips:
                for port in (2379, 2380):
                    with socket.socket() as s:
                        s.bind((ip, port))
        except OSError:
            continue
        return ips
    raise RuntimeError("no free loopback addresses for etcd")


def test_a_replica_started_from_the_user_data_serves_meshd_over_tls_only(tmp_path, node_cert):
    require_netns("etcd")
    ips = _free_loopback_ips(3)
    scripts = _user_data(ips)
    store_ca = pki.CertificateAuthority.new("store CA tls.example")
    procs, roots, url, meshd_opts = [], [], "", []
    try:
        for i, script in enumerate(scripts):
            root = tmp_path / f"r{i}"
            roots.append(root)
            (root / "run").mkdir(parents=True)
            (root / "run/store-ca.key").write_bytes(pki.key_pem(store_ca.key))
            (root / "run/store-ca.crt").write_bytes(store_ca.pem)
            env, url, meshd_opts, certs_argv = _render(script, tmp_path / f"etcd-{i}.env")
            # what the user data claims, read from what it rendered
            assert env["ETCD_LISTEN_CLIENT_URLS"] == f"https://{ips[i]}:2379"  # the replica's address only
            assert env["ETCD_LISTEN_PEER_URLS"] == f"https://{ips[i]}:2380"
            assert env["ETCD_CLIENT_CERT_AUTH"] == env["ETCD_PEER_CLIENT_CERT_AUTH"] == "true"
            assert env["ETCD_TRUSTED_CA_FILE"] == env["ETCD_PEER_TRUSTED_CA_FILE"] == "/var/lib/etcd/tls/ca.crt"
            assert all(u.startswith(f"r{k}=https://") for k, u in enumerate(env["ETCD_INITIAL_CLUSTER"].split(",")))
            assert url.startswith("etcds://") and "--store=" not in url
            # certificates: the user data's own `meshctl install store-certs` line, into this scratch root
            from meshctl.main import app
            from typer.testing import CliRunner
            assert certs_argv[:3] == ["meshctl", "install", "store-certs"]
            # One deviation: etcd checks a peer's certificate against the address it connects from, and
            # on one host's loopback peers connect from 127.0.0.1 (on a VPC, from the replica's address).
            r = CliRunner().invoke(app, certs_argv[1:] + ["--address", "127.0.0.1", "--root", str(root)])
            assert r.exit_code == 0, r.output
            run_env = {k: (str(root) + v if v.startswith("/") else v) for k, v in env.items()}
            run_env["ETCD_LOG_LEVEL"], run_env["ETCD_LOGGER"] = "warn", "zap"
            run_env["ETCD_HEARTBEAT_INTERVAL"], run_env["ETCD_ELECTION_TIMEOUT"] = "50", "300"
            log = open(tmp_path / f"etcd-{i}.log", "wb")
            procs.append(subprocess.Popen([ETCD], env=run_env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        opts = dict(o.removeprefix("--daemon-arg=").split("=", 1) for o in meshd_opts)
        assert set(opts) == {"--etcd-ca", "--etcd-cert", "--etcd-key"}
        files = {k: str(roots[0]) + v for k, v in opts.items()}
        _wait_leader([f"{ip}:2379" for ip in ips], grpc.ssl_channel_credentials(
            *(Path(files[f]).read_bytes() for f in ("--etcd-ca", "--etcd-key", "--etcd-cert"))),
            [tmp_path / f"etcd-{i}.log" for i in range(3)])
        asyncio.run(_use_store(url, files, tmp_path))
        # a node's mesh certificate, and no certificate, get nothing from the replica's etcd
        cert, key = node_cert
        ca = Path(files["--etcd-ca"]).read_bytes()
        for creds in (grpc.ssl_channel_credentials(ca, key, cert), grpc.ssl_channel_credentials(ca)):
            with pytest.raises(grpc.RpcError) as e:
                _range(f"{ips[1]}:2379", creds)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError):
            _range(f"{ips[1]}:2379", None)
        # the member certificate names the replica's address and nothing else
        member = pki.load_cert((roots[2] / "var/lib/etcd/tls/member.crt").read_bytes(), "member")
        from cryptography import x509
        sans = member.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == [ips[2], "127.0.0.1"]
        assert sans.get_values_for_type(x509.DNSName) == []
    finally:
        for p in procs:
            p.kill()
            p.wait(10)


def _wait_leader(endpoints: list[str], creds: grpc.ChannelCredentials, logs: list[Path], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:  # bounded by the deadline
        try:
            for ep in endpoints:
                _range(ep, creds)  # linearizable: answers once there is a leader
            return
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise AssertionError("the user data's etcd never elected a leader: "
                                     + " | ".join(p.read_text(errors="replace")[-400:] for p in logs)) from None
            time.sleep(0.1)


async def _use_store(url: str, files: dict[str, str], tmp_path: Path) -> None:
    store = open_store(url, tmp_path, etcd_ca=files["--etcd-ca"], etcd_cert=files["--etcd-cert"],
                       etcd_key=files["--etcd-key"])
    try:
        await store.txn([], [Put("hello", b"tls")])
        assert (await store.get("hello")).value == b"tls"
    finally:
        await store.close()


# -- security groups, on moto after a real `cluster create` ------------------------------------------

def _admits(perms: list[dict], port: int) -> list[dict]:
    """The permissions of a group that let TCP `port` in."""
    out = []
    for p in perms:
        proto = str(p.get("IpProtocol"))
        if proto == "-1" or (proto in ("tcp", "6") and p.get("FromPort", 0) <= port <= p.get("ToPort", -1)):
            out.append(p)
    return out


def test_only_the_coordinators_group_reaches_etcd(cluster_ops, moto):
    from infra.cluster.lifecycle import create, delete
    from infra.policy import instance_document
    from tests.infra.test_cluster import spec

    ops = cluster_ops()
    name = f"tls{uuid.uuid4().hex[:6]}"
    res = create(ops, name, spec(profile="performance"))
    try:
        ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto)
        insts = [i for r in ec2.describe_instances(Filters=[{"Name": "tag:mesh:cluster", "Values": [name]},
                                                            {"Name": "instance-state-name", "Values": ["running", "pending"]}])["Reservations"]
                 for i in r["Instances"]]
        role = {i["InstanceId"]: next(t["Value"] for t in i["Tags"] if t["Key"] == "mesh:role") for i in insts}
        groups = {g["GroupId"]: g for g in ec2.describe_security_groups()["SecurityGroups"]}
        coord = next(g for g in groups.values() if g["GroupName"] == f"mesh-{name}-coordinator")
        replicas = [i for i in insts if role[i["InstanceId"]] == "replica"]
        assert len(replicas) == 3
        for inst in insts:
            attached = [groups[g["GroupId"]] for g in inst["SecurityGroups"]]
            for port in (2379, 2380):
                sources = [(pp.get("IpRanges", []), [x["GroupId"] for x in pp.get("UserIdGroupPairs", [])])
                           for g in attached for pp in _admits(g["IpPermissions"], port)]
                if role[inst["InstanceId"]] == "replica":
                    # the only way in to etcd: from the coordinators' group, which holds the replicas alone
                    assert sources == [([], [coord["GroupId"]])], (port, sources)
            if role[inst["InstanceId"]] == "replica":
                assert f"mesh-{name}" not in {g["GroupName"] for g in attached}
                assert coord["GroupId"] in {g["GroupId"] for g in attached}
                # the rest of the mesh's traffic still reaches a replica (WireGuard, gossip, services)
                assert any(_admits(g["IpPermissions"], 7946) for g in attached)
                assert any(p.get("IpProtocol") == "udp" for g in attached for p in g["IpPermissions"])
            else:
                assert coord["GroupId"] not in {g["GroupId"] for g in inst["SecurityGroups"]}
        # user data: etcd and meshd as the replica test above runs them
        data = ec2.describe_instance_attribute(InstanceId=replicas[0]["InstanceId"], Attribute="userData")
        script = base64.b64decode(data["UserData"]["Value"]).decode()
        assert "ETCD_CLIENT_CERT_AUTH=true" in script and "store=\"etcds://" in script
        # the store CA: in the coordinators' SSM path only, which a node's instance role cannot read
        ssm = boto3.client("ssm", region_name="us-east-1", endpoint_url=moto)
        key = ssm.get_parameter(Name=f"/mesh-clusters/{name}/coordinator/store-ca-key", WithDecryption=True)
        crt = ssm.get_parameter(Name=f"/mesh-clusters/{name}/coordinator/store-ca-cert", WithDecryption=True)
        store_ca = pki.CertificateAuthority(pki.load_key(key["Parameter"]["Value"].encode(), "k"),
                                            pki.load_cert(crt["Parameter"]["Value"].encode(), "c"))
        mesh_ca = (Path(ops.secrets_dir(name)) / "ca.crt").read_bytes()
        assert pki.pin(store_ca.pem) != pki.pin(mesh_ca)
        import fnmatch
        node_paths = instance_document(name, False)["Statement"][0]["Resource"]
        arn = f"arn:aws:ssm:us-east-1:123456789012:parameter/mesh-clusters/{name}/coordinator/store-ca-key"
        assert not any(fnmatch.fnmatch(arn, p) for p in node_paths)
        # a re-run converges without touching the rules
        again = create(ops, name, spec(profile="performance"), known_id=res.doc.id)
        assert not again.launched
    finally:
        assert delete(ops, name).leftovers == []


def test_the_replica_rules_keep_everything_but_etcds_ports():
    from infra.cluster.groups import MAX_RULES, replica_rules, without_etcd
    from infra.desired import Rule

    c = "10.4.0.0/16"
    got = without_etcd({Rule("-1", None, None, c), Rule("tcp", 2000, 3000, "10.5.0.0/16"),
                        Rule("tcp", 2379, 2379, "10.6.0.0/16"), Rule("udp", 2379, 2380, "10.7.0.0/16"),
                        Rule("tcp", 22, 22, "192.0.2.0/24")})
    assert got == {Rule("tcp", 0, 2378, c), Rule("tcp", 2381, 65535, c), Rule("udp", 0, 65535, c),
                   Rule("icmp", -1, -1, c), Rule("tcp", 2000, 2378, "10.5.0.0/16"),
                   Rule("tcp", 2381, 3000, "10.5.0.0/16"), Rule("udp", 2379, 2380, "10.7.0.0/16"),
                   Rule("tcp", 22, 22, "192.0.2.0/24")}
    for port in (0, 22, 2378, 2379, 2380, 2381, 7443, 7946, 65535):  # only TCP 2379-2380 are cut out
        tcp = [r for r in got if r.protocol == "tcp" and r.cidr == c and r.from_port <= port <= r.to_port]
        assert bool(tcp) == (port not in (2379, 2380))
    # many regions: the rules spill into more groups of at most MAX_RULES each
    many = {Rule("-1", None, None, f"10.{i}.0.0/16") for i in range(40)}
    chunks = replica_rules(many)
    assert [len(x) for x in chunks] == [MAX_RULES, MAX_RULES, 160 - 2 * MAX_RULES]


def test_store_certs_refuses_a_bad_store_ca_in_one_line_naming_the_flag(tmp_path):
    from meshctl.main import app
    from typer.testing import CliRunner

    a, b = pki.CertificateAuthority.new("a"), pki.CertificateAuthority.new("b")
    (tmp_path / "a.key").write_bytes(pki.key_pem(a.key))
    (tmp_path / "b.crt").write_bytes(b.pem)
    base = ["install", "store-certs", "--name", "r0", "--address", "10.4.0.10", "--root", str(tmp_path)]
    for extra, flag in ((["--ca-key", "/a.key", "--ca-cert", "/b.crt"], "does not match --ca-key"),
                        (["--ca-key", "/missing.key", "--ca-cert", "/b.crt"], "--ca-key /missing.key: cannot read")):
        r = CliRunner().invoke(app, base + extra)
        assert r.exit_code == 1 and r.output.count("\n") == 1 and flag in r.output, r.output
    assert not (tmp_path / "var").exists()  # nothing written
