"""meshctl: the command line of the mesh.

On a VM it talks to the local meshagent; on the main node, admin commands
(tokens, node removal) go to meshd's admin socket. Every read command has
`--output table|wide|json|yaml|name` (meshctl/output.py); services, nodes and
peers take `--watch`. Failures print one `error:` line and exit non-zero
(exit codes: meshctl/output.py).
"""

from __future__ import annotations

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # gRPC core logs connection churn at INFO

import re
import socket
from typing import Optional

import typer
from mesh.v1 import admission_pb2, agent_pb2, catalog_pb2, nodes_pb2, types_pb2
from meshcore.defaults import MESHD_PORT, NODE_STATE_NAMES
from meshcore.errors import MeshError
from meshcore.names import check_name, check_port, check_service_name, default_service_name, parse_labels
from meshctl.client import Endpoints, call
from meshctl.output import OUTPUT_OPTION, Output, emit, fail, proto_dict, rfc3339

app = typer.Typer(help="Control the mesh: expose ports by name, list services and nodes, admit nodes.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
token_app = typer.Typer(help="Join tokens (on the main node).", no_args_is_help=True)
node_app = typer.Typer(help="Drain or remove nodes (on the main node).", no_args_is_help=True)
admin_app = typer.Typer(help="Administrator certificates for meshctl and schedulers off the main node.",
                        no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(node_app, name="node")
keys_app = typer.Typer(help="The gossip encryption keyring (on the main node).", no_args_is_help=True)
app.add_typer(admin_app, name="admin")
app.add_typer(keys_app, name="keys")

ENDPOINTS = Endpoints()
PROTOCOLS = {"tcp": types_pb2.PROTOCOL_TCP, "udp": types_pb2.PROTOCOL_UDP}


_dict = proto_dict
WATCH_OPTION = typer.Option(False, "--watch", "-w", help="after the list, print every change (Ctrl-C ends)")


def _version(value: bool) -> None:
    if value:
        from meshcore import __version__
        print(f"meshctl {__version__}")
        raise typer.Exit()


def _ago(ts: int) -> str:
    """A time for a table cell: RFC 3339 in UTC, one word (awk counts columns by spaces)."""
    return rfc3339(ts) or "-"


def _checked(fn, *args):
    try:
        return fn(*args)
    except MeshError as e:
        fail(str(e))


@app.callback()
def _globals(agent_socket: Optional[str] = typer.Option(None, "--agent-socket", envvar="MESH_AGENT_SOCKET",
                                                        help="meshagent's local socket"),
             admin_socket: Optional[str] = typer.Option(None, "--admin-socket", envvar="MESHD_ADMIN_SOCKET",
                                                        help="meshd's admin socket"),
             admin: bool = typer.Option(False, "--admin", envvar="MESH_ADMIN",
                                        help="services, nodes, status and unexpose ask meshd, not this VM's agent"),
             version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                          help="print the version and exit")
             ) -> None:
    ENDPOINTS.admin = admin
    if agent_socket:
        ENDPOINTS.agent_socket = agent_socket
        ENDPOINTS.agent_given = True
    if admin_socket:
        ENDPOINTS.admin_socket = admin_socket
    if not (ENDPOINTS.cert_dir or ENDPOINTS.coordinator):
        _use_current_cluster()


def _use_current_cluster() -> None:
    """After `meshctl cluster use NAME`, admin commands go to that cluster's meshd with its admin certificate."""
    from meshctl.context import Contexts, cluster_dir

    try:
        contexts = Contexts.load()
    except MeshError:
        return  # reported by the cluster commands, which need the file; the others do not
    ctx = contexts.clusters.get(contexts.current or "")
    if ctx is not None and ctx.coordinator and (cluster_dir(contexts.current) / "admin.crt").exists():
        ENDPOINTS.cert_dir = str(cluster_dir(contexts.current))
        ENDPOINTS.coordinator = ctx.coordinator


# -- services -----------------------------------------------------------------
SERVICE_COLUMNS = ["NAME", "NODE", "ADDRESS", "PORT", "PROTOCOL", "HEALTH"]
SERVICE_WIDE = ["NODE ID", "TAGS", "REVISION"]


def _service_row(s: types_pb2.Service) -> dict:
    health = s.health.WhichOneof("kind")
    return {"NAME": s.name, "NODE": s.node_name, "ADDRESS": s.address, "PORT": s.port,
            "NODE ID": s.node_id, "TAGS": ",".join(s.tags), "REVISION": s.revision,
            "PROTOCOL": "udp" if s.protocol == types_pb2.PROTOCOL_UDP else "tcp",
            "HEALTH": (f"http {s.health.http_path}" if health == "http_path" else "tcp") + (
                " (passing)" if s.health_state == types_pb2.HEALTH_STATE_PASSING else " (critical)")
            if health else "-"}


@app.command()
def expose(port: int = typer.Option(..., "--port", "-p", help="port on this VM (1-65535)"),
           name: Optional[str] = typer.Option(None, "--name", "-n",
                                              help="service name (default: SkyPilot cluster name, else host name)"),
           protocol: str = typer.Option("tcp", "--protocol", help="tcp or udp"),
           health_http: Optional[str] = typer.Option(None, "--health-http", help="HTTP health check path, e.g. /health"),
           health_tcp: bool = typer.Option(False, "--health-tcp", help="TCP connect health check"),
           tag: list[str] = typer.Option([], "--tag", help="tag copied to Consul (repeatable)"),
           output: Output = OUTPUT_OPTION) -> None:
    """Make a port of this VM reachable from every node under a name."""
    _checked(check_port, port)
    if name is None:
        name = _checked(default_service_name, os.environ, socket.gethostname())
    _checked(check_service_name, name, "service name")
    if protocol not in PROTOCOLS:
        fail(f"invalid protocol {protocol!r}: must be tcp or udp")
    if health_http and health_tcp:
        fail("choose one health check: --health-http PATH or --health-tcp")
    svc = types_pb2.Service(name=name, port=port, protocol=PROTOCOLS[protocol], tags=tag)
    if health_http:
        if not health_http.startswith("/"):
            fail(f"invalid --health-http {health_http!r}: a path must start with '/'")
        svc.health.http_path = health_http
    elif health_tcp:
        svc.health.tcp = True
    resp = call(ENDPOINTS.agent().Expose, catalog_pb2.ExposeRequest(service=svc))
    emit([_service_row(resp.service)], ["NAME", "NODE", "ADDRESS", "PORT", "PROTOCOL"], output,
         title=f"{name}.mesh, {name}.default.svc.cluster.local", raw=_dict(resp.service))


@app.command()
def unexpose(name: str = typer.Argument(..., help="service name"), output: Output = OUTPUT_OPTION) -> None:
    """Remove one of this VM's services from the mesh."""
    _checked(check_name, name, "service name")
    if ENDPOINTS.to_agent():
        resp = call(ENDPOINTS.agent().Unexpose, catalog_pb2.UnexposeRequest(name=name))
    else:  # an admin on the main node may remove any service
        resp = call(ENDPOINTS.catalog().Unexpose, catalog_pb2.UnexposeRequest(name=name))
    emit([_service_row(resp.service)], ["NAME", "NODE", "ADDRESS", "PORT"], output, raw=_dict(resp.service))


@app.command()
def services(output: Output = OUTPUT_OPTION, watch: bool = WATCH_OPTION) -> None:
    """The services in the mesh."""
    if watch:
        from meshctl.watch import Printer, follow_stream
        stub = ENDPOINTS.agent() if ENDPOINTS.to_agent() else ENDPOINTS.catalog()
        follow_stream(stub.WatchServices(types_pb2.WatchRequest()), "service", lambda s: s.name,
                      Printer("service", SERVICE_COLUMNS, output, _service_row))
        return
    if ENDPOINTS.to_agent():
        resp = call(ENDPOINTS.agent().ListServices, catalog_pb2.ListServicesRequest())
    else:
        resp = call(ENDPOINTS.catalog().ListServices, catalog_pb2.ListServicesRequest())
    rows = [_service_row(s) for s in resp.services]
    errors = dict(getattr(resp, "sync_errors", {}))
    for r in rows:
        r["SYNC"] = f"error: {errors[r['NAME']]}" if r["NAME"] in errors else "ok"
    emit(rows, SERVICE_COLUMNS + (["SYNC"] if errors else []), output,
         title=f"services (revision {resp.revision})", raw=_dict(resp), wide=SERVICE_WIDE + ["SYNC"])


@app.command()
def nodes(output: Output = OUTPUT_OPTION, watch: bool = WATCH_OPTION) -> None:
    """The nodes in the mesh."""
    if watch:
        from meshctl.watch import Printer, follow_stream
        stub = ENDPOINTS.agent() if ENDPOINTS.to_agent() else ENDPOINTS.nodes()
        follow_stream(stub.WatchNodes(types_pb2.WatchRequest()), "node", lambda n: n.id,
                      Printer("node", NODE_COLUMNS, output, _node_row))
        return
    if ENDPOINTS.to_agent():
        resp = call(ENDPOINTS.agent().ListNodes, nodes_pb2.ListNodesRequest())
    else:
        resp = call(ENDPOINTS.nodes().ListNodes, nodes_pb2.ListNodesRequest())
    emit([_node_row(n) for n in resp.nodes], NODE_COLUMNS, output, title=f"nodes (revision {resp.revision})",
         raw=_dict(resp), wide=NODE_WIDE)


NODE_COLUMNS = ["NAME", "MESH ADDRESS", "STATE", "CLOUD", "REGION", "GPU", "JOINED"]
NODE_WIDE = ["ID", "PRIVATE ADDRESS", "PUBLIC ADDRESS", "VPC", "LAST SEEN", "LABELS"]


def _node_row(n: types_pb2.Node) -> dict:
    return {"NAME": n.name, "ID": n.id, "MESH ADDRESS": n.mesh_address, "STATE": NODE_STATE_NAMES.get(n.state, "?")
            + (" (drained)" if n.drained else ""), "CLOUD": n.cloud or "-", "REGION": n.region or "-",
            "GPU": " x".join(filter(None, [n.labels.get("gpu.model", ""), n.labels.get("gpu.count", "")])) or "-",
            "JOINED": _ago(n.joined_at), "PRIVATE ADDRESS": n.private_address, "PUBLIC ADDRESS": n.public_address,
            "VPC": n.vpc_id, "LAST SEEN": _ago(n.last_seen),
            "LABELS": ",".join(f"{k}={v}" for k, v in sorted(n.labels.items()))}


@app.command()
def resolve(name: str = typer.Argument(..., help="name, name.mesh or name.default.svc.cluster.local"),
            output: Output = OUTPUT_OPTION) -> None:
    """What a name resolves to from this VM."""
    resp = call(ENDPOINTS.agent().Resolve, agent_pb2.ResolveRequest(name=name))
    emit([_service_row(s) for s in resp.services], ["NAME", "NODE", "ADDRESS", "PORT", "PROTOCOL"], output,
         raw=_dict(resp))


@app.command()
def status(output: Output = OUTPUT_OPTION) -> None:
    """The agent's (or, on the main node, meshd's) status."""
    if ENDPOINTS.to_agent():
        s = call(ENDPOINTS.agent().Status, agent_pb2.AgentStatusRequest())
        rows = [{"KEY": k, "VALUE": v} for k, v in [
            ("node", f"{s.node.name} ({s.node.id})" if s.node.id else "-"), ("mesh address", s.node.mesh_address or "-"),
            ("coordinator", s.coordinator), ("connected", "yes" if s.connected else "no (serving the local copy)"),
            ("last contact", _ago(s.last_contact)), ("catalog revision", s.catalog_revision),
            ("services", s.services), ("nodes", s.nodes), ("dns", s.dns_address or "-"),
            *[(f"fact {k}", f"{v}  ({s.fact_sources.get(k, '?')})") for k, v in sorted(s.facts.items())],
            ("health", s.health or "ok"), *sorted(s.counters.items())]]
    else:
        s = call(ENDPOINTS.nodes().Status, nodes_pb2.StatusRequest())
        rows = [{"KEY": k, "VALUE": v} for k, v in [
            ("meshd version", s.version), ("store", s.store), ("revision", s.revision), ("nodes", s.nodes),
            ("services", s.services), ("overlay pool", s.overlay_pool), ("you are", s.caller),
            ("store id", s.store_id or "-"), ("alarms", ", ".join(s.alarms) or "none")]]
    emit(rows, ["KEY", "VALUE"], output, raw=_dict(s))


def _peer_row(p: agent_pb2.Peer) -> dict:
    path = p.path or "-"
    if p.via:
        path += f" via {p.via}"
    return {"NAME": p.name, "MESH ADDRESS": p.mesh_address, "PATH": path, "ENDPOINT": p.endpoint or "-",
            "HANDSHAKE": _ago(p.latest_handshake) if p.latest_handshake else "-",
            "RX": p.rx_bytes, "TX": p.tx_bytes, "WHY": p.reason or "-"}


@app.command()
def peers(output: Output = OUTPUT_OPTION, watch: bool = WATCH_OPTION,
          interval: float = typer.Option(2.0, "--interval", min=1, max=60,
                                         help="with --watch: seconds between looks at the agent (1-60)")) -> None:
    """Every peer of this VM: its path (direct, tunnel, relay), endpoint, latest handshake, bytes each way."""
    if watch:
        from meshctl.watch import Printer, poll_peers
        stub = ENDPOINTS.agent()
        poll_peers(lambda: call(stub.ListPeers, agent_pb2.ListPeersRequest()), interval,
                   Printer("peer", ["NAME", "MESH ADDRESS", "PATH", "ENDPOINT", "WHY"], output, _peer_row))
        return
    resp = call(ENDPOINTS.agent().ListPeers, agent_pb2.ListPeersRequest())
    title = "peers" if resp.data_plane else "peers (this agent runs no data plane: paths unknown)"
    emit([_peer_row(p) for p in resp.peers], ["NAME", "MESH ADDRESS", "PATH", "ENDPOINT", "HANDSHAKE", "RX", "TX",
                                               "WHY"], output, title=title, raw=_dict(resp))


@app.command()
def ping(target: str = typer.Argument(..., help="node name or id, or a service name (its node is pinged)"),
         count: int = typer.Option(3, "--count", "-c", min=1, max=20, help="round trips (1-20)"),
         output: Output = OUTPUT_OPTION) -> None:
    """The path to a node and round-trip times over the mesh (like `tailscale ping`)."""
    resp = call(ENDPOINTS.agent().Ping, agent_pb2.PingRequest(target=target, count=count))
    row = _peer_row(resp.peer)
    rtts = list(resp.rtt_ms)
    row.update({"PROBED": resp.probed, "RTT MS": " ".join(f"{r:.2f}" for r in rtts) or "-", "LOST": resp.lost})
    emit([row], ["NAME", "PATH", "ENDPOINT", "HANDSHAKE", "RTT MS", "LOST", "WHY"], output, raw=_dict(resp))
    if not rtts:
        fail(f"no answer from {resp.peer.name} at {resp.probed} ({resp.lost} of {count} lost)")


# -- tokens -------------------------------------------------------------------
_DURATION = re.compile(r"^(\d+)([smhd])$")


def parse_duration(text: str) -> int:
    m = _DURATION.match(text.strip())
    if not m:
        fail(f"invalid duration {text!r}: use a number and s, m, h or d (e.g. 30m, 2h, 7d)")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _token_row(t: admission_pb2.Token) -> dict:
    return {"ID": t.id, "USES": f"{t.uses}/{t.max_uses or '∞'}", "EXPIRES": _ago(t.expires_at),
            "REVOKED": "yes" if t.revoked else "no", "LABELS": ",".join(f"{k}={v}" for k, v in t.labels.items()) or "-",
            "DESCRIPTION": t.description or "-"}


@token_app.command("create")
def token_create(ttl: str = typer.Option("1h", "--ttl", help="lifetime, e.g. 30m, 2h, 7d (at most 30d)"),
                 uses: int = typer.Option(1, "--uses", help="joins allowed (0: unlimited until expiry)"),
                 label: list[str] = typer.Option([], "--label", help="key=value given to joining nodes (repeatable)"),
                 description: str = typer.Option("", "--description"),
                 output: Output = OUTPUT_OPTION) -> None:
    """Create a join token; the full token is printed once."""
    labels = _checked(parse_labels, label)
    if uses < 0:
        fail("invalid --uses: must be 0 (unlimited) or more")
    resp = call(ENDPOINTS.admission().CreateToken, admission_pb2.CreateTokenRequest(
        ttl_s=parse_duration(ttl), max_uses=uses, labels=labels, description=description))
    if output in (Output.json, Output.yaml):
        emit([], [], output, raw={"token": _dict(resp.token), "secret": resp.secret})
    else:
        print(resp.secret)


@token_app.command("list")
def token_list(output: Output = OUTPUT_OPTION) -> None:
    """Join tokens (secrets are never shown again)."""
    resp = call(ENDPOINTS.admission().ListTokens, admission_pb2.ListTokensRequest())
    emit([_token_row(t) for t in resp.tokens], ["ID", "USES", "EXPIRES", "REVOKED", "LABELS", "DESCRIPTION"], output,
         raw=_dict(resp))


@token_app.command("revoke")
def token_revoke(token_id: str = typer.Argument(..., help="token id, e.g. t1a2b3c4d"), output: Output = OUTPUT_OPTION) -> None:
    """Revoke a token: it admits no more nodes."""
    resp = call(ENDPOINTS.admission().RevokeToken, admission_pb2.RevokeTokenRequest(id=token_id))
    emit([_token_row(resp.token)], ["ID", "USES", "EXPIRES", "REVOKED"], output, raw=_dict(resp.token))


# -- nodes --------------------------------------------------------------------
@node_app.command("drain")
def node_drain(node: str = typer.Argument(..., help="node name or id"),
               undo: bool = typer.Option(False, "--undo", help="undrain"), output: Output = OUTPUT_OPTION) -> None:
    """Mark a node drained: it keeps its services but may expose no new ones."""
    resp = call(ENDPOINTS.nodes().DrainNode, nodes_pb2.DrainNodeRequest(id_or_name=node, drain=not undo))
    emit([{"NAME": resp.node.name, "ID": resp.node.id, "DRAINED": resp.node.drained}], ["NAME", "ID", "DRAINED"],
         output, raw=_dict(resp.node))


@node_app.command("remove")
def node_remove(node: str = typer.Argument(..., help="node name or id"), output: Output = OUTPUT_OPTION) -> None:
    """Remove a node: its services, name, address and certificate stop working."""
    resp = call(ENDPOINTS.nodes().RemoveNode, nodes_pb2.RemoveNodeRequest(id_or_name=node))
    emit([{"NAME": resp.node.name, "ID": resp.node.id, "MESH ADDRESS": resp.node.mesh_address}],
         ["NAME", "ID", "MESH ADDRESS"], output, raw=_dict(resp.node))


# -- gossip keys ------------------------------------------------------------------
@keys_app.command("rotate")
def keys_rotate(output: Output = OUTPUT_OPTION) -> None:
    """Roll a new gossip key through the mesh without restarts: every live node learns it
    (over mTLS), then it becomes primary, then the old key is retired."""
    resp = call(ENDPOINTS.admission().RotateGossipKey, admission_pb2.RotateGossipKeyRequest())
    emit([{"KEY": resp.key_id, "STAGE": resp.stage}], ["KEY", "STAGE"], output, raw=_dict(resp))


# -- admin certificates ---------------------------------------------------------
@admin_app.command("cert", help="Issue an admin certificate (12 hours unless --ttl). Then, anywhere: "
                   f"MESH_COORDINATOR=host:{MESHD_PORT} MESH_ADMIN_CERT_DIR=DIR meshctl …")
def admin_cert(name: str = typer.Argument(..., help="administrator name (RFC 1123 label)"),
               out: str = typer.Option(..., "--out", help="directory for admin.key (0600), admin.crt and ca.crt"),
               ttl: str = typer.Option("12h", "--ttl", help="lifetime: 30m, 12h, 7d (at most 90d)"),
               may_issue: bool = typer.Option(False, "--may-issue",
                                              help="the certificate may issue admin certificates itself"),
               output: Output = OUTPUT_OPTION) -> None:
    from pathlib import Path

    from meshcore import pki
    _checked(check_name, name, "admin name")
    key = pki.new_key()
    resp = call(ENDPOINTS.admission().IssueAdminCert,
                admission_pb2.IssueAdminCertRequest(csr_pem=pki.make_csr(key, name).decode(),
                                                    ttl_s=parse_duration(ttl), may_issue=may_issue))
    d = Path(out)
    try:
        d.mkdir(parents=True, exist_ok=True)
        pki.write_file(d / "admin.key", pki.key_pem(key), private=True)
        pki.write_file(d / "admin.crt", resp.certificate_pem.encode())
        pki.write_file(d / "ca.crt", resp.ca_pem.encode())
    except OSError as e:
        fail(f"cannot write the certificate to {d}: {e.strerror}")
    emit([{"NAME": name, "SERIAL": resp.serial, "EXPIRES": _ago(resp.expires_at), "DIRECTORY": str(d)}],
         ["NAME", "SERIAL", "EXPIRES", "DIRECTORY"], output,
         raw={"name": name, "serial": resp.serial, "expires_at": resp.expires_at, "dir": str(d)})


def _admin_rows(certs) -> list[dict]:
    return [{"SERIAL": c.serial, "NAME": c.name or "-", "EXPIRES": _ago(c.expires_at),
             "ISSUER": "yes" if c.may_issue else "no", "REVOKED": "yes" if c.revoked else "no"} for c in certs]


@admin_app.command("certs")
def admin_certs(output: Output = OUTPUT_OPTION) -> None:
    """List the admin certificates meshd issued or revoked (expired ones are left out)."""
    resp = call(ENDPOINTS.admission().ListAdminCerts, admission_pb2.ListAdminCertsRequest())
    emit(_admin_rows(resp.certs), ["SERIAL", "NAME", "EXPIRES", "ISSUER", "REVOKED"], output, raw=_dict(resp))


@admin_app.command("revoke")
def admin_revoke(serial_or_name: str = typer.Argument(..., help="a serial (hex, from `meshctl admin certs`) or "
                                                                "an admin name (all of its certificates)"),
                 output: Output = OUTPUT_OPTION) -> None:
    """Revoke admin certificates: meshd refuses every call made with them from then on."""
    resp = call(ENDPOINTS.admission().RevokeAdminCert,
                admission_pb2.RevokeAdminCertRequest(serial_or_name=serial_or_name))
    emit(_admin_rows(resp.certs), ["SERIAL", "NAME", "EXPIRES", "ISSUER", "REVOKED"], output, raw=_dict(resp))


@app.command()
def completion(shell: str = typer.Argument(..., help="bash, zsh or fish")) -> None:
    """Print the shell completion script, e.g. `meshctl completion bash > /etc/bash_completion.d/meshctl`
    or `source <(meshctl completion bash)`."""
    from typer._completion_shared import get_completion_script
    if shell not in ("bash", "zsh", "fish"):
        fail(f"invalid shell {shell!r}: choose one of bash, zsh, fish")
    print(get_completion_script(prog_name="meshctl", complete_var="_MESHCTL_COMPLETE", shell=shell))


def _mount() -> None:
    """Feature command groups, each in its own module (cloud SDKs are imported only when a command runs)."""
    from meshctl.stack import dns_app, install_app, k3s_app
    app.add_typer(install_app, name="install")
    app.add_typer(dns_app, name="dns")
    app.add_typer(k3s_app, name="k3s")
    from meshctl.infra_cmd import infra_app, quotas_app  # boto3 itself is imported only when a command runs
    app.add_typer(infra_app, name="infra")
    app.add_typer(quotas_app, name="quotas")
    from meshctl.cluster_cmd import cluster_app, clusters_cmd, role_app
    infra_app.add_typer(role_app, name="role")
    app.add_typer(cluster_app, name="cluster")
    app.command("clusters")(clusters_cmd)
    from meshctl.proxy_cmd import proxy
    app.command("proxy")(proxy)
    from meshctl.costs_cmd import costs_cmd
    app.command("costs")(costs_cmd)


_mount()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
