"""Item 10: the local doors: no token in argv, sockets closed to other users, private state, a Join-only join port."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
import pytest

from mesh.v1 import admission_pb2, admission_pb2_grpc
from meshagent.uplink import channel_options
from meshd.admission import REFUSED
from testbed.localmesh import BIN
from tests.conftest import require_netns


def test_a_join_token_on_the_command_line_is_refused_with_the_reason(tmp_path):
    token = "t0123abcd." + "5" * 32 + "." + "a" * 64
    p = subprocess.run([str(BIN / "meshagent"), "--state-dir", str(tmp_path / "a"), "--token", token],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "--token-file" in p.stderr and "ps" in p.stderr and "Traceback" not in p.stderr


async def test_the_agent_socket_refuses_another_user_and_state_files_are_private(mesh):
    require_netns()  # root, to act as another user (a failure under MESH_REQUIRE_NETNS=1, as in make test)
    open_dir = Path(tempfile.mkdtemp(prefix="mesh-sock-"))
    open_dir.chmod(0o755)  # only the socket's own mode stands between a user and the API
    try:
        a = await mesh.agent("alpha", socket=str(open_dir / "agent.sock"))
        mode = stat.S_IMODE(os.stat(open_dir / "agent.sock").st_mode)
        assert mode & 0o007 == 0, oct(mode)
        probe = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n s.connect(sys.argv[1])\n"
                 "except PermissionError:\n sys.exit(3)\nsys.exit(0)")
        r = subprocess.run(["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
                            sys.executable, "-c", probe, str(open_dir / "agent.sock")], capture_output=True, timeout=30)
        assert r.returncode == 3, r.stderr
        db = mesh.config.state_dir / "state.db"
        assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
        for f in (a.state_dir / "key.pem", a.state_dir / "gossip.json"):
            assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f
    finally:
        for f in open_dir.iterdir():
            f.unlink()
        open_dir.rmdir()


async def test_the_join_port_answers_join_only_and_says_the_same_for_every_bad_token(mesh):
    good = await mesh.token(uses=1)
    tid, secret, pin = good.split(".")
    await mesh.admission().RevokeToken(admission_pb2.RevokeTokenRequest(id=tid))
    creds = grpc.ssl_channel_credentials(mesh.coordinator.ca.pem)
    details = set()
    async with grpc.aio.secure_channel(mesh.join_address, creds, options=channel_options()) as ch:
        stub = admission_pb2_grpc.AdmissionServiceStub(ch)
        from mesh.v1 import types_pb2
        node = types_pb2.Node(name="probe")
        for token in (f"t00000000.{secret}.{pin}", f"{tid}.{'0' * 32}.{pin}", good):  # unknown, wrong, revoked
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.Join(admission_pb2.JoinRequest(token=token, node=node, csr_pem="x"))
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            details.add(e.value.details())
        assert details == {REFUSED}
        for call in (stub.CreateToken(admission_pb2.CreateTokenRequest()),
                     stub.K3sJoin(admission_pb2.K3sJoinRequest())):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call
            assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_the_k3s_token_goes_only_to_nodes_whose_token_allows_it(tmp_path):
    from tests.meshfix import Mesh
    (tmp_path / "k3s-token").write_text("K10feed::server:agent-secret\n")
    m = await Mesh(tmp_path, k3s_server_url="https://127.77.0.1:6443",
                   k3s_token_file=str(tmp_path / "k3s-token")).start()
    try:
        plain = await m.agent("plain")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await plain.uplink.admission_stub.K3sJoin(admission_pb2.K3sJoinRequest())
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "mesh.k3s=agent" in e.value.details()
        worker = await m.agent("worker", token=await m.token(**{"mesh.k3s": "agent"}))
        resp = await worker.uplink.admission_stub.K3sJoin(admission_pb2.K3sJoinRequest())
        assert resp.token == "K10feed::server:agent-secret"
    finally:
        await m.close()
