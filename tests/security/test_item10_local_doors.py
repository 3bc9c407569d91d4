"""Item 10: the local doors: no token in argv, sockets closed to other users, private state, a Join-only join port."""

from __future__ import annotations

import asyncio
import os
import pwd
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
        for f in sorted(open_dir.rglob("*"), reverse=True):
            f.rmdir() if f.is_dir() else f.unlink()
        open_dir.rmdir()


PROBE = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.settimeout(10)\ntry:\n s.connect(sys.argv[1])\n"
         "except PermissionError:\n sys.exit(3)\n"
         "try:\n s.sendall(b'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n')\n"  # a gRPC client's first bytes
         " data = s.recv(4096)\nexcept (BrokenPipeError, ConnectionResetError):\n data = b''\n"
         "sys.exit(4 if data == b'' else 5)")


async def as_nobody(path) -> int:
    """Connect to a unix socket as `nobody`: 3 refused by the mode, 4 closed by the door, 5 answered.
    (A child process the event loop does not wait for: the door runs on this loop.)"""
    p = await asyncio.create_subprocess_exec("setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
                                             sys.executable, "-c", PROBE, str(path),
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(p.communicate(), 30)
    assert p.returncode in (3, 4, 5), err
    return p.returncode


async def test_the_local_doors_check_who_connects_even_when_the_mode_would_let_them(tmp_path, caplog):
    require_netns()  # root, to act as another user
    from mesh.v1 import agent_pb2, agent_pb2_grpc
    from meshagent import metrics as agent_metrics
    from meshd import metrics as meshd_metrics
    from tests.meshfix import Mesh
    open_dir = Path(tempfile.mkdtemp(prefix="mesh-door-"))
    open_dir.chmod(0o755)  # (pytest's tmp_path is closed to other users: the sockets live here)
    mesh = Mesh(tmp_path)
    mesh.config.admin_socket = str(open_dir / "admin.sock")
    await mesh.start()
    try:
        a = await mesh.agent("alpha", socket=str(open_dir / "agent.sock"))
        for sock in (open_dir / "agent.sock", Path(mesh.config.admin_socket)):
            sock.chmod(0o666)  # the mode would let anyone in: only the credential check is left
            sock.parent.chmod(0o755)
        nobody = pwd.getpwnam("nobody").pw_uid
        agent_before = agent_metrics.LOCAL_API_REFUSED.get()
        admin_before = meshd_metrics.ADMIN_SOCKET_REFUSED._value.get()
        assert await as_nobody(open_dir / "agent.sock") == 4
        assert await as_nobody(mesh.config.admin_socket) == 4
        assert agent_metrics.LOCAL_API_REFUSED.get() == agent_before + 1
        assert meshd_metrics.ADMIN_SOCKET_REFUSED._value.get() == admin_before + 1
        lines = [r.getMessage() for r in caplog.records if "refused a connection" in r.getMessage()]
        assert len(lines) == 2 and all(f"uid {nobody} (pid " in line for line in lines), lines
        # the private sockets behind the doors are in directories only root may enter
        for sock in (open_dir / "agent.sock", Path(mesh.config.admin_socket)):
            private = sock.parent / f".{sock.name}.private"
            assert stat.S_IMODE(os.stat(private).st_mode) == 0o700
        # root goes through both doors
        async with grpc.aio.insecure_channel(f"unix:{open_dir / 'agent.sock'}") as ch:
            status = await agent_pb2_grpc.AgentServiceStub(ch).Status(agent_pb2.AgentStatusRequest(), timeout=10)
        assert status.node.id == a.identity.node_id
        await mesh.token()  # over the admin socket
    finally:
        await mesh.close()
        for f in sorted(open_dir.rglob("*"), reverse=True):
            f.rmdir() if f.is_dir() else f.unlink()
        open_dir.rmdir()


def test_meshctl_install_agent_refuses_a_token_on_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from meshctl.stack import install_app
    token = "t0123abcd." + "5" * 32 + "." + "a" * 64
    r = CliRunner().invoke(install_app, ["agent", "--coordinator", "10.4.0.4:7443", "--token", token,
                                         "--root", str(tmp_path), "--no-start"], env={"MESH_JOIN_TOKEN": None})
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "--token is refused" in r.output and "ps" in r.output
    assert "--token-file" in r.output and "MESH_JOIN_TOKEN" in r.output
    assert not (tmp_path / "etc/mesh/join-token").exists()
    (tmp_path / "tok").write_text(token + "\n")
    r = CliRunner().invoke(install_app, ["agent", "--coordinator", "10.4.0.4:7443", "--token-file",
                                         str(tmp_path / "tok"), "--root", str(tmp_path), "--no-start"],
                           env={"MESH_JOIN_TOKEN": None})
    assert r.exit_code == 0, r.output
    assert (tmp_path / "etc/mesh/join-token").read_text() == token + "\n"


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


async def test_a_member_of_the_allowed_group_is_let_through_the_door():
    require_netns()  # root, to act as another user
    from meshcore.localdoor import LocalDoor, prepare_private_dir, private_socket_path, remove_private_dir, root_or_group
    open_dir = Path(tempfile.mkdtemp(prefix="mesh-door-"))
    open_dir.chmod(0o755)
    public = open_dir / "door.sock"
    private = private_socket_path(public)
    prepare_private_dir(private)

    async def echo(reader, writer):
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()
    backend = await asyncio.start_unix_server(echo, path=str(private))
    door = LocalDoor(public, private, root_or_group("nogroup"), what="test door")  # nobody's group here
    await door.start(0o666)
    try:
        assert await as_nobody(public) == 5  # admitted and spliced: the echo came back
    finally:
        await door.stop()
        backend.close()
        await backend.wait_closed()
        remove_private_dir(private)
        open_dir.rmdir()
