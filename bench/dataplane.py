"""Data-plane benchmark, all in one lab run (testbed/lab) so the figures compare.

Between the same two namespaces (the hub and the cloud VM, over the lab's
internet segment), in one run, interleaved in rounds (the order rotated each
round): the bare link, wireguard-go set up by hand with wg(8), Nebula (Debian
package, a throw-away CA), and our backend's tunnel (iperf3, a few seconds
each). The peers measured in the same run are the anchors (the bare veth for
raw wireguard-go, raw wireguard-go for ours and Nebula), with per-round ratios. Then: time from a backend apply with the
key in hand to the first packet answered through a peer (the device alone),
apply times for 100 and 1,000 peers and a one-peer change, and the relay's
cost (NAT'd node to a regional node through the hub, against the NAT'd node's
direct tunnel to the cloud VM).

Then, in a second lab booted as shipped (testbed/lab/daemons.py: metadata
doubles, `sky/mesh-setup.sh`, units run by the systemctl stand-in): the time
from starting every VM's agent to every pair connecting by name, the time from
an agent process start with a token (facts, join, meshd, the peer's update,
the device) to its first packet answered by a peer, and facts discovery
against the AWS-shaped metadata double. Needs root; every loop is bounded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import median, percentile, record

BENCH = "dataplane"
IPERF_SECONDS = 3
ROUNDS = 4               # interleaved throughput rounds: veth, raw wireguard-go, ours, Nebula
FIRST_PACKET_TRIALS = 15
APPLY_REPS = 3
BOOT_TRIALS = 3           # whole-lab boots as shipped
START_TRIALS = 6          # agent process start -> first packet, on the cloud VM
FACTS_TRIALS = 200


def run() -> list[dict]:
    import uvloop

    return uvloop.run(_run())


async def _run() -> list[dict]:
    from testbed.lab import Lab

    for tool in ("iperf3", "wireguard-go", "wg", "nebula", "nebula-cert", "nft"):
        if not shutil.which(tool):
            raise RuntimeError(f"the dataplane benchmark needs {tool} (make setup installs it)")
    out = []
    lab = Lab.create()
    tmp = Path(tempfile.mkdtemp(prefix="meshbench-"))
    try:
        out += await _measure(lab, tmp)
    finally:
        lab.down()
        shutil.rmtree(tmp, ignore_errors=True)
    out += facts_discovery()
    out += shipped()
    return out


def facts_discovery() -> list[dict]:
    """Facts discovery (all three cloud probes in parallel, the default route; no GPUs) against the
    AWS-shaped metadata double on loopback."""
    from meshagent.facts import discover
    from testbed.doubles.imds import ImdsDouble, aws_instance

    samples, failures = [], 0
    with ImdsDouble(meta=aws_instance("10.4.1.20", "vpc-0abc", "10.4.0.0/16", public="54.1.2.3")) as imds:
        for _ in range(FACTS_TRIALS):
            t0 = time.perf_counter()
            found = discover(imds.url, 1.0, gpus=False)
            took = (time.perf_counter() - t0) * 1000
            if found.vpc_id == "vpc-0abc":
                samples.append(took)
            else:
                failures += 1
    if not samples:
        raise RuntimeError("facts discovery never found the AWS facts")
    return [record(BENCH, "facts_discovery_p99_ms", percentile(samples, 99), "ms", "lower", trials=FACTS_TRIALS,
                   failures=failures, p50_ms=round(median(samples), 3), source="aws IMDSv2 double on loopback")]


def shipped() -> list[dict]:
    """A lab booted the way users boot it, timed."""
    from concurrent.futures import ThreadPoolExecutor

    from testbed.lab import Lab
    from testbed.lab.daemons import NAMES, ROLES, LabDaemons
    from testbed.lab.lab import PROBE

    boots, boot_failures = [], 0
    firsts, first_failures = [], 0
    for trial in range(BOOT_TRIALS):
        lab = Lab.create()
        tmp = Path(tempfile.mkdtemp(prefix="meshbench-shipped-"))
        daemons = LabDaemons(lab, tmp)
        try:
            daemons.start_coordinator()
            servers = [lab.serve(role, 7000) for role in ROLES]
            daemons.meshctl("expose", "--port", "7000", "--name", "svc-hub", agent="hub")
            # One prober per VM, started before the boot: it resolves every other VM's name through its
            # own agent's DNS (once that answers) and connects, retrying, and reports when each worked.
            probers = {a: lab.popen(a, [sys.executable, str(PROBE), "reach", "127.0.0.77", "7000", "60",
                                        *[f"svc-{b}.mesh" for b in ROLES if b != a]],
                                    stdout=subprocess.PIPE, text=True) for a in ROLES}
            t0 = time.monotonic()

            def boot(role: str) -> None:
                daemons.start_agent(role)
                daemons.meshctl("expose", "--port", "7000", "--name", f"svc-{role}", agent=role)

            with ThreadPoolExecutor(len(ROLES) - 1) as pool:
                list(pool.map(boot, ROLES[1:]))
            reached = {a: json.loads(p.communicate(timeout=90)[0] or "{}") for a, p in probers.items()}
            if all(len(r) == len(ROLES) - 1 for r in reached.values()):
                boots.append(max(t for r in reached.values() for t in r.values()) - t0)
            else:
                boot_failures += 1
            if trial == 0:
                firsts, first_failures = _start_to_first_packet(lab, daemons, NAMES)
            for s in servers:
                s.terminate()
        finally:
            try:
                daemons.stop()
            except Exception:
                pass
            lab.down()
            shutil.rmtree(tmp, ignore_errors=True)
    if not boots or not firsts:
        raise RuntimeError(f"the shipped lab never came up: {boot_failures} boot failures, "
                           f"{first_failures} first-packet failures")
    return [
        record(BENCH, "boot_to_all_reachable_s", median(boots), "s", "lower", goal=5, rounds=BOOT_TRIALS,
               failures=boot_failures, samples=[round(b, 3) for b in boots],
               what="4 VMs' `sky/mesh-setup.sh agent` started at once (meshd up) -> every pair connects by name"),
        record(BENCH, "start_to_first_packet_p99_ms", percentile(firsts, 99), "ms", "lower", goal=1000,
               anchor={"name": "K3s agent join: tens of seconds (not measured here)", "value": None,
                       "measured": False, "source": "no k3s binary on this machine; nothing to time"},
               trials=START_TRIALS, failures=first_failures,
               p50_ms=round(median(firsts), 1), peer="cloud -> main (tunnel)",
               what="meshagent process start with a token (unit ExecStart) -> first UDP packet answered by the "
                    "main node over the mesh"),
    ]


def _start_to_first_packet(lab, daemons, names) -> tuple[list[float], int]:
    """On the cloud VM, again and again: a fresh agent (new identity) started from its unit with a token;
    the clock starts at `systemctl start` and stops at the first UDP answer from the main node's mesh
    address (the main node must first learn the new key from meshd)."""
    hub_addr = json.loads(daemons.node_file("hub").read_text())["mesh_address"]
    helper = lab.popen("cloud", [sys.executable, "-c", FIRST_PACKET_HELPER, hub_addr, "7000", "30"],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    samples, failures = [], 0
    try:
        for _ in range(START_TRIALS):
            daemons.stop("cloud")
            daemons.meshctl("node", "remove", names["cloud"])
            lab.run("cloud", ["ip", "link", "del", "mesh0"], check=False)
            state = daemons.vms["cloud"].host_path("/var/lib/meshagent")
            shutil.rmtree(state, ignore_errors=True)
            state.mkdir()
            # where `meshctl install agent` put the token (the agent deletes it once joined)
            token_file = daemons.vms["cloud"].host_path("/etc/mesh/join-token")
            token_file.write_text(daemons.token + "\n")
            token_file.chmod(0o600)
            helper.stdin.write("go\n")
            helper.stdin.flush()
            daemons.vm_run("cloud", ["systemctl", "start", "meshagent"], timeout=60)
            # from the process start: the systemctl stand-in notes the monotonic time just before it spawns
            t0 = float(daemons.vms["cloud"].host_path("/var/log/mesh-lab/meshagent.started").read_text())
            answer = helper.stdout.readline().split()
            if answer and answer[0] == "ok":
                samples.append((float(answer[1]) - t0) * 1000)
            else:
                failures += 1
    finally:
        helper.kill()
        helper.wait(timeout=5)
    return samples, failures


def iperf_mbps(lab, server: str, client: str, address: str, port: int, seconds: int = IPERF_SECONDS) -> float:
    srv = lab.popen(server, ["iperf3", "-s", "-1", "-p", str(port)], stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):  # wait (at most 2 s) for the server to listen
            if f":{port} " in lab.run(server, ["ss", "-Hltn"], check=False).stdout:
                break
            time.sleep(0.02)
        out = lab.run(client, ["iperf3", "-c", address, "-p", str(port), "-t", str(seconds), "-J"],
                      timeout=seconds + 20).stdout
        return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6
    finally:
        srv.kill()
        srv.wait(timeout=5)


async def _measure(lab, tmp: Path) -> list[dict]:
    from testbed.lab.mesh import LabMesh

    out: list[dict] = []
    mesh = LabMesh(lab, tmp / "wg")
    await mesh.start()
    await mesh.apply_all()
    raw = RawWireguard(lab, tmp)
    nebula = Nebula(lab, tmp)
    try:
        raw.up()
        nebula.up()
        for role in lab.nodes:
            lab.serve(role, 7100)
        # Every peer in every round, the order rotated each round so none always gets the quieter
        # moment; each figure is the median over rounds, each ratio the median of per-round ratios.
        peers = {"veth": "198.18.0.20", "raw": "10.250.0.2", "ours": lab.nodes["cloud"].spec.mesh_address,
                 "nebula": "192.168.200.2"}
        got: dict[str, list[float]] = {k: [] for k in peers}
        order = list(peers)
        port = 5202
        for i in range(ROUNDS):
            for name in order[i % len(order):] + order[:i % len(order)]:
                got[name].append(iperf_mbps(lab, "cloud", "hub", peers[name], port))
                port += 1
        out += throughput_records(got)
    finally:
        raw.down()
        nebula.down()

    # Relay cost: nat -> ra through the hub, against nat -> cloud on a direct tunnel.
    relay = lab.rtt_ms("nat", lab.nodes["ra"].spec.mesh_address, 7100, 200)
    direct = lab.rtt_ms("nat", lab.nodes["cloud"].spec.mesh_address, 7100, 200)
    relay_mbps = iperf_mbps(lab, "ra", "nat", lab.nodes["ra"].spec.mesh_address, 5230)
    direct_mbps = iperf_mbps(lab, "cloud", "nat", lab.nodes["cloud"].spec.mesh_address, 5231)
    rp = dict(samples=200, relay="nat -> hub -> ra", direct="nat -> cloud")
    out += [
        record(BENCH, "relay_rtt_ratio_vs_direct", median(relay) / median(direct), "ratio", "lower", **rp),
        record(BENCH, "relay_rtt_p50_ms", median(relay), "ms", "lower", **rp),
        record(BENCH, "direct_tunnel_rtt_p50_ms", median(direct), "ms", "lower", **rp),
        record(BENCH, "relay_mbps", relay_mbps, "Mbit/s", "higher", seconds=IPERF_SECONDS, relay=rp["relay"]),
        record(BENCH, "relay_throughput_ratio_vs_direct", relay_mbps / direct_mbps, "ratio", "higher",
               seconds=IPERF_SECONDS, **rp),
    ]

    firsts = await first_packet_ms(lab, mesh)
    out += [
        record(BENCH, "device_to_first_packet_p50_ms", median(firsts), "ms", "lower",
               trials=FIRST_PACKET_TRIALS, failures=FIRST_PACKET_TRIALS - len(firsts), peer="cloud -> hub",
               what="a fresh wireguard-go device with the key in hand: start + apply + routes -> first answer"),
        record(BENCH, "device_to_first_packet_p99_ms", percentile(firsts, 99), "ms", "lower",
               trials=FIRST_PACKET_TRIALS, failures=FIRST_PACKET_TRIALS - len(firsts), peer="cloud -> hub"),
    ]
    await mesh.stop()
    out += await apply_times(lab, tmp)
    return out


def throughput_records(got: dict[str, list[float]]) -> list[dict]:
    """The throughput figures from per-round iperf3 samples (Mbit/s) of the bare veth, raw
    wireguard-go, our tunnel and Nebula, all measured in the same rounds. Each peer measured here
    is the anchor of the others; a ratio's anchor is its peer (1.0), the peer's Mbit/s in params."""
    veths, raws, ours, nebs = got["veth"], got["raw"], got["ours"], got["nebula"]
    veth, raw_mbps, our_mbps, neb = median(veths), median(raws), median(ours), median(nebs)

    def ratio(a: list[float], b: list[float]) -> float:
        return median([x / y for x, y in zip(a, b)])
    params = dict(seconds=IPERF_SECONDS, rounds=len(veths), statistic="median over rounds",
                  path="hub -> cloud over the lab internet segment", machine="shared, loaded by other work")
    same = "same run, median over rounds"
    a_veth = {"name": f"bare veth, {same}", "value": round(veth, 1)}
    a_raw = {"name": f"raw wireguard-go (wg(8) by hand), {same}", "value": round(raw_mbps, 1)}
    r_veth = {"name": "bare veth, same run", "value": 1.0}
    r_raw = {"name": "raw wireguard-go, same run", "value": 1.0}
    r_neb = {"name": "Nebula, same run", "value": 1.0}
    mbps = dict(veth_mbps=round(veth, 1), raw_wireguard_go_mbps=round(raw_mbps, 1), nebula_mbps=round(neb, 1))
    return [
        record(BENCH, "veth_mbps", veth, "Mbit/s", "higher", samples=veths,
               what="the bare link under every tunnel here: the ceiling", **params),
        record(BENCH, "raw_wireguard_go_mbps", raw_mbps, "Mbit/s", "higher", anchor=a_veth, samples=raws,
               ratio_vs_veth=round(ratio(raws, veths), 4), **params),
        record(BENCH, "nebula_mbps", neb, "Mbit/s", "higher", anchor=a_raw, samples=nebs, mtu=1420,
               ratio_vs_veth=round(ratio(nebs, veths), 4), ratio_vs_wireguard_go=round(ratio(nebs, raws), 4),
               **params),
        record(BENCH, "tunnel_mbps", our_mbps, "Mbit/s", "higher", anchor=a_raw, samples=ours,
               ratio_vs_veth=round(ratio(ours, veths), 4), **params),
        # The median of per-round ratios: each round's peers ran back to back, so slow drifts
        # in the machine's load cancel out better than in a ratio of medians.
        record(BENCH, "tunnel_ratio_vs_wireguard_go", ratio(ours, raws), "ratio", "higher", goal=0.95,
               anchor=r_raw, ratio_of_medians=round(our_mbps / raw_mbps, 4), **mbps, **params),
        record(BENCH, "tunnel_ratio_vs_nebula", ratio(ours, nebs), "ratio", "higher", anchor=r_neb,
               ratio_of_medians=round(our_mbps / neb, 4), **mbps, **params),
        record(BENCH, "tunnel_ratio_vs_veth", ratio(ours, veths), "ratio", "higher", anchor=r_veth,
               ratio_of_medians=round(our_mbps / veth, 4), **mbps, **params),
        record(BENCH, "raw_wireguard_go_ratio_vs_veth", ratio(raws, veths), "ratio", "higher", anchor=r_veth,
               **mbps, **params),
    ]


async def first_packet_ms(lab, mesh) -> list[float]:
    """Fresh device on the cloud VM: start + apply + routes, then UDP probes to the hub's mesh address
    until one is answered. The hub is already configured (it knows the cloud VM's key)."""
    helper = lab.popen("cloud", [sys.executable, "-c", FIRST_PACKET_HELPER, lab.nodes["hub"].spec.mesh_address, "7100"],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    samples = []
    try:
        for _ in range(FIRST_PACKET_TRIALS):
            await mesh.backends["cloud"].stop()
            b = mesh.backends["cloud"] = mesh.new_backend("cloud")
            t0 = time.monotonic()
            await b.start()
            p = mesh.plan("cloud")
            await b.apply(p.interface)
            await mesh.routers["cloud"].apply(p.routes)
            helper.stdin.write("go\n")
            helper.stdin.flush()
            answer = helper.stdout.readline().split()
            if answer and answer[0] == "ok":
                samples.append((float(answer[1]) - t0) * 1000)
    finally:
        helper.kill()
        helper.wait(timeout=5)
    if not samples:
        raise RuntimeError("no first packet got through in any trial")
    return samples


FIRST_PACKET_HELPER = r"""
import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
limit = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
for line in sys.stdin:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.002)
    deadline = time.monotonic() + limit
    done = False
    while time.monotonic() < deadline and not done:
        try:
            s.sendto(b"x", (host, port)); s.recv(10); done = True
        except OSError:
            pass
    print(("ok %f" % time.monotonic()) if done else "timeout", flush=True)
    s.close()
"""


async def apply_times(lab, tmp: Path) -> list[dict]:
    """Desired states of 100 and 1,000 peers (and one route each) on a fresh device, then one change."""
    from meshagent.routes import Route, RouteManager, RouteState
    from meshagent.wg.backend import BackendConfig
    from meshagent.wg.command import Runner
    from meshagent.wg.keys import generate_private_key, public_key
    from meshagent.wg.model import InterfaceConfig, PeerConfig
    from meshagent.wg.userspace import UserspaceBackend

    ns = lab.nodes["cloud"].netns
    name = f"wb{lab.tag}"
    keys = [public_key(generate_private_key()) for _ in range(1000)]
    priv = generate_private_key()
    routes = RouteManager(Runner(ns))

    def desired(n: int, changed: bool = False):
        peers = tuple(PeerConfig(keys[i], f"198.18.{2 + i // 250}.{1 + i % 250}:51820",
                                 (f"100.80.{i // 250}.{1 + i % 250}/32",), 0) for i in range(n))
        if changed:  # one peer moved to a new public address and one more allowed address
            p = peers[n // 2]
            peers = peers[:n // 2] + (PeerConfig(p.public_key, "198.18.9.9:51820",
                                                 p.allowed_ips + ("100.81.0.1/32",)),) + peers[n // 2 + 1:]
        iface = InterfaceConfig(name, priv, "100.64.0.20/32", 51999, 1420, peers)
        rs = RouteState(frozenset(Route(ip, name, "100.64.0.20") for p in peers for ip in p.allowed_ips))
        return iface, rs

    async def timed(b, n, changed=False) -> float:
        iface, rs = desired(n, changed)
        t0 = time.perf_counter()
        await b.apply(iface)
        await routes.apply(rs)
        return (time.perf_counter() - t0) * 1000

    results: dict[str, list[float]] = {"100": [], "1000": [], "change": []}
    for _ in range(APPLY_REPS):
        for n in (100, 1000):
            b = UserspaceBackend(name, BackendConfig(netns=ns, state_dir=tmp / "apply"))
            await b.start()
            try:
                results[str(n)].append(await timed(b, n))
                if n == 1000:
                    results["change"].append(await timed(b, n, changed=True))
            finally:
                await b.stop()
                await routes.apply(RouteState())
    what = "WireGuard peers plus one route each, fresh device"
    return [
        record(BENCH, "apply_100_peers_ms", median(results["100"]), "ms", "lower", reps=APPLY_REPS, what=what,
               samples=results["100"]),
        record(BENCH, "apply_1000_peers_ms", median(results["1000"]), "ms", "lower", reps=APPLY_REPS, what=what,
               samples=results["1000"]),
        record(BENCH, "apply_one_change_1000_peers_ms", median(results["change"]), "ms", "lower", reps=APPLY_REPS,
               what="one peer's endpoint and addresses changed among 1,000", samples=results["change"]),
    ]


class RawWireguard:
    """wireguard-go between the hub and the cloud VM configured by hand with wg(8), as a person would."""

    def __init__(self, lab, tmp: Path) -> None:
        from meshagent.wg.keys import generate_private_key

        self.lab, self.tmp = lab, tmp
        self.names = {"hub": f"wr{lab.tag}h", "cloud": f"wr{lab.tag}c"}
        self.addr = {"hub": "10.250.0.1", "cloud": "10.250.0.2"}
        self.port = {"hub": 52001, "cloud": 52002}
        self.keys = {r: generate_private_key() for r in self.names}
        self.procs = []

    def up(self) -> None:
        from meshagent.wg.keys import public_key

        for role, name in self.names.items():
            # Its own session, as the daemonising `wireguard-go <name>` would have and as our
            # supervisor starts it: with autogroup scheduling the session decides the CPU share.
            self.procs.append(self.lab.popen(role, ["wireguard-go", "-f", name], stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL, start_new_session=True))
        for role, name in self.names.items():
            sock = Path(f"/var/run/wireguard/{name}.sock")
            for _ in range(250):  # at most 5 s
                if sock.exists():
                    break
                time.sleep(0.02)
            keyfile = self.tmp / f"{name}.key"
            keyfile.write_text(self.keys[role])
            other = "cloud" if role == "hub" else "hub"
            public = {"hub": "198.18.0.4", "cloud": "198.18.0.20"}[other]
            self.lab.run(role, ["wg", "set", name, "private-key", str(keyfile), "listen-port", str(self.port[role]),
                                "peer", public_key(self.keys[other]), "allowed-ips", f"{self.addr[other]}/32",
                                "endpoint", f"{public}:{self.port[other]}"])
            self.lab.run(role, ["ip", "addr", "add", f"{self.addr[role]}/24", "dev", name])
            self.lab.run(role, ["ip", "link", "set", name, "mtu", "1420", "up"])

    def down(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait(timeout=5)
        for name in self.names.values():
            Path(f"/var/run/wireguard/{name}.sock").unlink(missing_ok=True)


class Nebula:
    """Nebula between the hub (lighthouse) and the cloud VM, certificates from a throw-away CA."""

    def __init__(self, lab, tmp: Path) -> None:
        self.lab, self.dir = lab, tmp / "nebula"
        self.ip = {"hub": "192.168.200.1", "cloud": "192.168.200.2"}
        self.procs = []

    def up(self) -> None:
        d = self.dir
        d.mkdir(parents=True)
        subprocess.run(["nebula-cert", "ca", "-name", "meshbench", "-out-crt", str(d / "ca.crt"),
                        "-out-key", str(d / "ca.key")], check=True, capture_output=True)
        for role, ip in self.ip.items():
            subprocess.run(["nebula-cert", "sign", "-name", role, "-ip", f"{ip}/24", "-ca-crt", str(d / "ca.crt"),
                            "-ca-key", str(d / "ca.key"), "-out-crt", str(d / f"{role}.crt"),
                            "-out-key", str(d / f"{role}.key")], check=True, capture_output=True)
            lighthouse = role == "hub"
            cfg = {
                "pki": {"ca": str(d / "ca.crt"), "cert": str(d / f"{role}.crt"), "key": str(d / f"{role}.key")},
                "static_host_map": {self.ip["hub"]: ["198.18.0.4:4242"]},
                "lighthouse": {"am_lighthouse": lighthouse, "hosts": [] if lighthouse else [self.ip["hub"]]},
                "listen": {"host": "0.0.0.0", "port": 4242},
                "punchy": {"punch": False},
                "tun": {"dev": f"nb{self.lab.tag}{role[0]}", "mtu": 1420},
                "logging": {"level": "error"},
                "firewall": {"outbound": [{"port": "any", "proto": "any", "host": "any"}],
                             "inbound": [{"port": "any", "proto": "any", "host": "any"}]},
            }
            (d / f"{role}.yml").write_text(json.dumps(cfg))  # JSON is YAML
            self.procs.append(self.lab.popen(role, ["nebula", "-config", str(d / f"{role}.yml")],
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                             start_new_session=True))
        for role in self.ip:
            dev = f"nb{self.lab.tag}{role[0]}"
            for _ in range(250):  # at most 5 s for the tun device
                if self.lab.run(role, ["ip", "link", "show", dev], check=False).returncode == 0:
                    break
                time.sleep(0.02)

    def down(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait(timeout=5)
