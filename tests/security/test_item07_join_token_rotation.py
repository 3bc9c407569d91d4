"""Item 7 (part): a cluster's join token is short-lived and rotated by meshd.

meshd on a coordinator (`--publish-join-token ssm:<region>:<parameter>`) keeps a
join token with a TTL in SSM and publishes a fresh one when the current one has
only the overlap left; the previous one keeps working until its own expiry, then
is refused. The bootstrap join string the cluster builder made before meshd ran
lives two hours from its first registration, not ten years.

Real meshd (in process with a ManualClock, and as a process with short TTLs)
against a real moto server's SSM.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time

import boto3
import pytest

from meshagent.agent import Agent
from meshagent.config import AgentConfig
from meshcore import pki
from meshcore.errors import Unauthenticated
from meshcore.jointoken import PUBLISHED_BY_MESHD, new_join_string
from testbed.doubles.motoserver import moto_server
from tests.meshfix import Mesh, manual_clock

REGION = "us-east-1"
HOUR = 3600.0


@pytest.fixture
def ssm_url(monkeypatch):
    with moto_server() as url:
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        yield url


def _param(url: str, name: str) -> tuple[str, str] | None:
    ssm = boto3.client("ssm", region_name=REGION, endpoint_url=url)
    try:
        p = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]
    except ssm.exceptions.ParameterNotFound:
        return None
    d = ssm.describe_parameters(ParameterFilters=[{"Key": "Name", "Values": [name]}])["Parameters"][0]
    return p["Value"], d.get("Description", "")


async def _until(what, timeout_s: float = 10.0, step_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = await what() if asyncio.iscoroutinefunction(what) else what()
        if got:
            return got
        await asyncio.sleep(step_s)
    raise AssertionError(f"not within {timeout_s} s")


async def test_meshd_rotates_the_published_token_and_the_old_one_expires_after_the_overlap(ssm_url, tmp_path):
    name = "/mesh/c1/join-token"
    clock = manual_clock()
    mesh = Mesh(tmp_path, clock=clock, publish_join_token=f"ssm:{REGION}:{name}",
                publish_join_token_ttl_s=24 * HOUR, publish_join_token_overlap_s=6 * HOUR)
    await mesh.start()
    try:
        first, desc = await _until(lambda: _param(ssm_url, name))
        assert desc.startswith(PUBLISHED_BY_MESHD)
        rec = next(t for t in await mesh.coordinator.admission.list() if first.startswith(t.id + "."))
        assert rec.max_uses == 0 and rec.expires_at - clock.wall() == 24 * HOUR
        await Agent(mesh.agent_config("warm-0", first)).join()
        pub = mesh.coordinator.publisher
        assert await pub.step() is None, "a token with more than the overlap left is kept"
        clock.advance(18 * HOUR + 1)  # the overlap is reached: a new one is published
        new = await pub.step()
        second, _ = _param(ssm_url, name)
        assert new is not None and second != first and second.startswith(new.id + ".")
        await Agent(mesh.agent_config("warm-1", first)).join()  # the old one: still valid in the overlap
        await Agent(mesh.agent_config("warm-2", second)).join()
        # a restarted meshd keeps the published token instead of minting one
        await mesh.restart()
        await asyncio.sleep(0.2)
        assert _param(ssm_url, name)[0] == second and await mesh.coordinator.publisher.step() is None
        clock.advance(6 * HOUR)  # the old one's own expiry
        with pytest.raises(Unauthenticated):
            await Agent(mesh.agent_config("late", first)).join()
        await Agent(mesh.agent_config("warm-3", second)).join()
        # a token revoked by hand is replaced at the next check
        await mesh.coordinator.admission.revoke(second.split(".")[0])
        assert await mesh.coordinator.publisher.step() is not None
        third, _ = _param(ssm_url, name)
        assert third not in (first, second)
        await Agent(mesh.agent_config("warm-4", third)).join()
        # a 30-day token stored there before (as sky/mesh-setup.sh once did) is replaced at the next check
        _, old = await mesh.coordinator.admission.create(ttl_s=30 * 24 * int(HOUR), max_uses=0)
        boto3.client("ssm", region_name=REGION, endpoint_url=ssm_url).put_parameter(
            Name=name, Value=old, Type="SecureString", Overwrite=True)
        new = await mesh.coordinator.publisher.step()
        assert new is not None and new.expires_at - clock.wall() == 24 * HOUR
        assert _param(ssm_url, name)[0].startswith(new.id + ".")
    finally:
        await mesh.close()


async def test_the_bootstrap_token_lives_two_hours_not_ten_years(tmp_path):
    ca = pki.CertificateAuthority.load_or_create(tmp_path / "meshd")
    token = new_join_string(pki.pin(ca.pem))
    (tmp_path / "bootstrap").write_text(token)
    clock = manual_clock()
    mesh = Mesh(tmp_path, clock=clock, bootstrap_token_file=str(tmp_path / "bootstrap"))
    await mesh.start()
    try:
        rec = next(t for t in await mesh.coordinator.admission.list() if token.startswith(t.id + "."))
        assert rec.expires_at - clock.wall() == 2 * HOUR
        await Agent(mesh.agent_config("early", token)).join()
        clock.advance(2 * HOUR)
        await mesh.restart()  # re-registering at start does not extend it
        with pytest.raises(Unauthenticated):
            await Agent(mesh.agent_config("late", token)).join()
    finally:
        await mesh.close()


class FlakySink:
    """An SSM parameter that refuses the first write (throttled, or a role not yet applied)."""

    def __init__(self) -> None:
        self.value: str | None = None
        self.refusals = 1

    def read(self) -> str | None:
        return self.value

    def write(self, value: str, description: str) -> None:
        if self.refusals:
            self.refusals -= 1
            raise RuntimeError("ThrottlingException")
        self.value = value


async def test_a_failed_write_is_retried_with_the_same_token(tmp_path):
    from meshd.publish import Publisher

    clock = manual_clock()
    mesh = Mesh(tmp_path, clock=clock)
    await mesh.start()
    try:
        sink = FlakySink()
        pub = Publisher(mesh.coordinator.admission, sink, ttl_s=24 * HOUR, overlap_s=6 * HOUR, clock=clock)
        with pytest.raises(RuntimeError):
            await pub.step()
        before = len(await mesh.coordinator.admission.list())
        rec = await pub.step()
        assert len(await mesh.coordinator.admission.list()) == before, "no second token for one publication"
        assert sink.value.startswith(rec.id + ".") and pub.published == 1
        await Agent(mesh.agent_config("warm-0", sink.value)).join()
    finally:
        await mesh.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_a_meshd_process_publishes_and_replaces_its_token_in_ssm(ssm_url, tmp_path):
    """The shipped flags, boto3's own credential and endpoint chain, and the check loop, with short TTLs."""
    name = "/mesh/c2/join-token"
    listen, join = _free_port(), _free_port()
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-m", "meshd.main", "--state-dir", str(tmp_path / "meshd"),
                             "--listen", f"127.0.0.1:{listen}", "--join-listen", f"127.0.0.1:{join}",
                             "--admin-socket", str(tmp_path / "admin.sock"), "--metrics", "",
                             "--publish-join-token", f"ssm:{REGION}:{name}", "--publish-join-token-ttl", "6",
                             "--publish-join-token-overlap", "3"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        first, desc = await _until(lambda: _param(ssm_url, name), timeout_s=30)
        assert desc.startswith(PUBLISHED_BY_MESHD)
        cfg = AgentConfig(state_dir=tmp_path / "agent", coordinator=f"127.0.0.1:{listen}",
                          join_address=f"127.0.0.1:{join}", token=first, name="warm-0", socket=str(tmp_path / "a.sock"),
                          dns="127.0.0.1:0", dns_upstreams=(), metrics="", gossip="0.0.0.0:0", gossip_profile="local",
                          spot=False, imds="", gpus=False)
        identity = await asyncio.wait_for(Agent(cfg).join(), 10)
        assert identity.node_id
        second = await _until(lambda: (p := _param(ssm_url, name)) and p[0] != first and p[0], timeout_s=15)
        assert second.split(".")[2] == first.split(".")[2]  # the same mesh CA
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, -15), proc.stderr.read().decode()[-2000:]


async def test_published_tokens_carry_the_labels_given_on_the_command_line(ssm_url, tmp_path):
    """`--publish-join-token-label mesh.k3s=agent` (as sky/mesh-setup.sh passes it): the nodes a published
    token admits are bound to the label, which lets them fetch the K3s agent token."""
    from meshd.main import parse_args

    name = "/mesh/c3/join-token"
    parsed = parse_args(["--publish-join-token", f"ssm:{REGION}:{name}",
                         "--publish-join-token-label", "mesh.k3s=agent", "--publish-join-token-label", "team=ml"])
    assert parsed.publish_join_token_labels == {"mesh.k3s": "agent", "team": "ml"}
    clock = manual_clock()
    mesh = Mesh(tmp_path, clock=clock, publish_join_token=parsed.publish_join_token,
                publish_join_token_labels=parsed.publish_join_token_labels)
    await mesh.start()
    try:
        token, desc = await _until(lambda: _param(ssm_url, name))
        assert desc.startswith(PUBLISHED_BY_MESHD)
        rec = next(t for t in await mesh.coordinator.admission.list() if token.startswith(t.id + "."))
        assert rec.labels == {"mesh.k3s": "agent", "team": "ml"}
        identity = await Agent(mesh.agent_config("gpu-0", token)).join()
        node = await mesh.coordinator.nodes.get(identity.node_id)
        assert dict(node.labels)["mesh.k3s"] == "agent"
        assert await mesh.coordinator.nodes.bound_labels(identity.node_id) == {"mesh.k3s": "agent", "team": "ml"}
    finally:
        await mesh.close()


@pytest.mark.parametrize("label, rule", [("mesh.k3s", "expected key=value"),
                                         ("mesh.k3s=a b", "a label key is [prefix/]name"),
                                         ("-bad=x", "a label key is [prefix/]name")])
def test_a_bad_publish_label_is_one_line_naming_the_rule(label, rule):
    r = subprocess.run([sys.executable, "-m", "meshd.main", "--publish-join-token", f"ssm:{REGION}:/mesh/c/join-token",
                        f"--publish-join-token-label={label}"], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("meshd: error: invalid --publish-join-token-label") and rule in last, r.stderr
