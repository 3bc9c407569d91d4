"""Item 7 (part): the join token does not stay on the VM once the agent has joined.

`meshctl install agent` writes the token to /etc/mesh/join-token (0600), never to the
environment file, and the agent deletes that file once it holds its identity: a later
reader of the VM's disk (a stolen snapshot, another local user) finds no token to
admit more nodes with."""

from __future__ import annotations

from meshagent.agent import Agent
from meshagent.main import parse_args


async def test_the_agent_deletes_its_token_file_once_joined(mesh, tmp_path):
    token_file = tmp_path / "join-token"
    token_file.write_text(await mesh.token() + "\n")
    token_file.chmod(0o600)
    cfg = mesh.agent_config("alpha", token=token_file.read_text().strip(), token_file=str(token_file),
                            remove_token_file=True)
    a = Agent(cfg)
    mesh.agents.append(a)
    await a.start()
    assert a.identity is not None and not token_file.exists()
    assert cfg.token == ""  # not kept in memory either


def test_a_restart_after_the_token_file_is_gone_uses_the_identity(tmp_path):
    cfg = parse_args(["--token-file", str(tmp_path / "join-token"), "--remove-token-file",
                      "--state-dir", str(tmp_path / "state")])
    assert cfg.token == "" and cfg.remove_token_file


def test_the_install_never_puts_the_token_in_the_environment_file(tmp_path):
    from typer.testing import CliRunner

    from meshctl.stack import install_app
    token = "t0123abcd." + "5" * 32 + "." + "a" * 64
    env = tmp_path / "etc/mesh/meshagent.env"
    env.parent.mkdir(parents=True)
    env.write_text(f"MESH_JOIN_TOKEN={token}\n")  # from an older install
    r = CliRunner().invoke(install_app, ["agent", "--coordinator", "10.4.0.4:7443", "--root", str(tmp_path),
                                         "--no-start"], env={"MESH_JOIN_TOKEN": token})
    assert r.exit_code == 0, r.output
    assert "5" * 32 not in env.read_text()
    assert "--token-file /etc/mesh/join-token --remove-token-file" in env.read_text()
    assert (tmp_path / "etc/mesh/join-token").stat().st_mode & 0o777 == 0o600


def test_the_cluster_role_trusts_the_calling_principal_not_the_whole_account():
    from infra.cluster.access import caller_principal
    assert (caller_principal("arn:aws:sts::123456789012:assumed-role/Admin/alice")
            == "arn:aws:iam::123456789012:role/Admin")
    assert caller_principal("arn:aws:iam::123456789012:user/bob") == "arn:aws:iam::123456789012:user/bob"
