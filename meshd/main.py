"""meshd: the mesh coordinator. `meshd --help` lists the options."""

from __future__ import annotations

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # gRPC core logs connection churn at INFO

import argparse
import gc
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from meshcore import daemon, logs
from meshcore.errors import MeshError
from meshcore.names import check_labels, parse_labels
from meshd.server import Coordinator, MeshdConfig

if TYPE_CHECKING:
    from meshd.sync.consul_client import ConsulConfig


CONSUL_FROM_ENV = "$CONSUL_HTTP_ADDR"


def consul_config(a: argparse.Namespace, env: Mapping[str, str]) -> "ConsulConfig":
    """The Consul mirror's settings: each option, else the variable Consul's own CLI reads
    for it (the one place meshd reads them), else the default."""
    from meshd.sync.consul_client import ConsulConfig

    address = a.consul
    if address == CONSUL_FROM_ENV:
        address = env.get("CONSUL_HTTP_ADDR") or "http://127.0.0.1:8500"
    if "//" not in address and env.get("CONSUL_HTTP_SSL", "").lower() in ("1", "true"):
        address = "https://" + address
    # Consul's order: a token file option, then CONSUL_HTTP_TOKEN, then CONSUL_HTTP_TOKEN_FILE.
    if a.consul_token_file:
        token = Path(a.consul_token_file).read_text().strip()
    elif env.get("CONSUL_HTTP_TOKEN"):
        token = env["CONSUL_HTTP_TOKEN"]
    elif env.get("CONSUL_HTTP_TOKEN_FILE"):
        token = Path(env["CONSUL_HTTP_TOKEN_FILE"]).read_text().strip()
    else:
        token = ""
    verify = env.get("CONSUL_HTTP_SSL_VERIFY", "true").lower() not in ("0", "false")
    return ConsulConfig(address=address, token=token, ca_file=a.consul_ca_file or env.get("CONSUL_CACERT", ""),
                        client_cert=a.consul_client_cert or env.get("CONSUL_CLIENT_CERT", ""),
                        client_key=a.consul_client_key or env.get("CONSUL_CLIENT_KEY", ""),
                        datacenter=a.consul_datacenter, verify=verify)


def build_parser() -> argparse.ArgumentParser:
    """The command line (also the source of docs/configuration.md)."""
    d = MeshdConfig()
    p = argparse.ArgumentParser(prog="meshd", description="Mesh coordinator: admission, addresses, catalog. "
                                "`meshd store export|import|copy` moves its whole store (see `meshd store --help`).")
    p.add_argument("--state-dir", type=Path, default=d.state_dir, help=f"CA and state (default {d.state_dir})")
    p.add_argument("--listen", default=d.listen, help=f"mTLS API address (default {d.listen})")
    p.add_argument("--join-listen", default=d.join_listen, help=f"TLS address for Join (default {d.join_listen}; '' disables)")
    p.add_argument("--admin-socket", default=d.admin_socket, help=f"root-only unix socket (default {d.admin_socket}; '' disables)")
    p.add_argument("--metrics", default=d.metrics, help=f"Prometheus address (default {d.metrics}; '' disables)")
    p.add_argument("--store", default=d.store,
                   help="sqlite (default), sqlite:///path.db, etcd://host:2379,... or etcds://host:2379,... (TLS)")
    p.add_argument("--etcd-ca", default="", metavar="FILE", help="etcds://: CA bundle that signed etcd's certificate")
    p.add_argument("--etcd-cert", default="", metavar="FILE",
                   help="etcds://: meshd's client certificate (etcd runs with --client-cert-auth)")
    p.add_argument("--etcd-key", default="", metavar="FILE", help="etcds://: key of --etcd-cert")
    p.add_argument("--await-import", action="store_true",
                   help="serve only once `meshd store import` has filled the store (a coordinator launched "
                        "for a profile switch); never start a new mesh in an empty store")
    p.add_argument("--overlay-pool", default=d.overlay_pool, help=f"mesh addresses for non-AWS nodes (default {d.overlay_pool})")
    p.add_argument("--vpc-range", action="append", default=None, metavar="CIDR",
                   help=f"the AWS address plan: AWS nodes' VPCs must lie inside (repeatable; "
                        f"default {', '.join(d.vpc_ranges)})")
    p.add_argument("--allow-endpoint-range", action="append", default=[], metavar="CIDR",
                   help="accept public endpoints in this non-public range too (repeatable; for labs)")
    p.add_argument("--lease-ttl", type=float, default=d.lease_ttl_s, help=f"seconds a node may go without renewing (default {d.lease_ttl_s})")
    p.add_argument("--max-renewals-per-s", type=float, default=d.max_renewals_per_s, metavar="RATE",
                   help=f"lease renewals a second the fleet may send; a larger fleet is granted a longer lease "
                        f"TTL (3 x nodes / RATE; 0: always --lease-ttl; default {d.max_renewals_per_s:.0f})")
    p.add_argument("--max-watch-messages-per-s", type=float, default=d.max_watch_messages_per_s, metavar="RATE",
                   help=f"live-change messages a second the node streams, and the services streams, of the fleet "
                        f"are sent: with more streams each pauses longer after it sent and the changes meanwhile go "
                        f"out together (streams / RATE seconds; 0: no bound; default {d.max_watch_messages_per_s:.0f})")
    p.add_argument("--grace", type=float, default=d.grace_s, help=f"seconds an unreachable node keeps its services (default {d.grace_s})")
    p.add_argument("--max-pending-joins", type=int, default=d.max_pending_joins, metavar="N",
                   help=f"joins that may wait for their turn (joins run one at a time); one more is refused at "
                        f"once with RESOURCE_EXHAUSTED and a suggested wait (the grpc-retry-pushback-ms trailer), "
                        f"which agents honour (default {d.max_pending_joins}; 0: no bound)")
    p.add_argument("--advertise", action="append", default=[], help="extra name or address for meshd's certificate (repeatable)")
    p.add_argument("--k3s-server-url", default="", help="K3s server URL handed to agents")
    p.add_argument("--k3s-token-file", default="", help="file with the K3s agent token")
    p.add_argument("--node-cert-ttl", type=float, default=d.node_cert_ttl_s,
                   help=f"seconds a node certificate lives; agents renew it with a third left (default {d.node_cert_ttl_s:.0f})")
    p.add_argument("--catalog-key-rotate", type=float, default=d.catalog_key_rotate_s, metavar="SECONDS",
                   help=f"seconds a catalog signing key signs before the next takes over (default {d.catalog_key_rotate_s:.0f})")
    p.add_argument("--catalog-key-overlap", type=float, default=d.catalog_key_overlap_s, metavar="SECONDS",
                   help=f"seconds the next catalog key is handed out before it signs, and the previous one "
                        f"accepted after (default {d.catalog_key_overlap_s:.0f})")
    p.add_argument("--catalog-record-ttl", type=float, default=d.catalog_record_ttl_s, metavar="SECONDS",
                   help=f"seconds a signed catalog record is valid; signed again a third of it before "
                        f"(default {d.catalog_record_ttl_s:.0f})")
    p.add_argument("--bootstrap-token-file", default="",
                   help="file with a join string made by a cluster builder; registered at start (unlimited uses, "
                        "valid --bootstrap-token-ttl from its first registration)")
    p.add_argument("--bootstrap-token-ttl", type=float, default=d.bootstrap_token_ttl_s, metavar="SECONDS",
                   help=f"lifetime of the bootstrap join string (default {d.bootstrap_token_ttl_s:.0f})")
    p.add_argument("--publish-join-token", default="", metavar="ssm:REGION:PARAMETER",
                   help="keep a short-lived join token (unlimited uses) in this SSM parameter, replaced before it "
                        "expires (leader only; needs boto3 and ssm:GetParameter/PutParameter on it)")
    p.add_argument("--publish-join-token-ttl", type=float, default=d.publish_join_token_ttl_s, metavar="SECONDS",
                   help=f"lifetime of each published token (default {d.publish_join_token_ttl_s:.0f})")
    p.add_argument("--publish-join-token-overlap", type=float, default=d.publish_join_token_overlap_s,
                   metavar="SECONDS", help="a new token is published when the current one has this long left; the "
                                           f"old one works until then (default {d.publish_join_token_overlap_s:.0f})")
    p.add_argument("--publish-join-token-label", action="append", default=[], metavar="KEY=VALUE",
                   help="label given to the nodes a published token admits, e.g. mesh.k3s=agent (repeatable)")
    p.add_argument("--price-table", default="", metavar="FILE",
                   help="prices from `meshctl costs --price-table FILE`: cost gauges per node, service and in total")
    p.add_argument("--consul", nargs="?", const=CONSUL_FROM_ENV, default="", metavar="ADDRESS",
                   help="mirror the catalog into Consul at this address (http(s)://host:8500); given without "
                        "an address: $CONSUL_HTTP_ADDR, else http://127.0.0.1:8500. Unset options below are read "
                        "from CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE, CONSUL_CACERT, CONSUL_CLIENT_CERT, "
                        "CONSUL_CLIENT_KEY, CONSUL_HTTP_SSL and CONSUL_HTTP_SSL_VERIFY as Consul's CLI does; "
                        "options win")
    p.add_argument("--consul-token-file", default="", help="file with the Consul ACL token")
    p.add_argument("--consul-ca-file", default="", help="CA bundle for an https Consul")
    p.add_argument("--consul-client-cert", default="", metavar="FILE",
                   help="client certificate for a Consul that verifies incoming TLS (with --consul-client-key)")
    p.add_argument("--consul-client-key", default="", metavar="FILE", help="key of --consul-client-cert")
    p.add_argument("--consul-datacenter", default="", help="Consul datacenter to register in (default: the agent's)")
    p.add_argument("--kubernetes", default="", metavar="KUBECONFIG|in-cluster",
                   help="mirror the catalog into Kubernetes Services (a kubeconfig path, or in-cluster)")
    p.add_argument("--kubernetes-context", default="", help="context in the kubeconfig (default: its current-context)")
    p.add_argument("--kubernetes-namespace", default="default", help="namespace of the Services (default: default)")
    daemon.add_common_arguments(p, "meshd")
    return p


def parse_args(argv: list[str]) -> MeshdConfig:
    d = MeshdConfig()
    p = build_parser()
    a = p.parse_args(argv)
    logs.setup(a.log_level, a.log_format, socket.gethostname())
    consul = kubernetes = None
    try:
        from meshd.store.etcd_tls import from_flags
        from_flags(a.store, a.etcd_ca, a.etcd_cert, a.etcd_key)  # checked again at start; here for one clear line
        if a.consul:
            consul = consul_config(a, os.environ)
        if a.publish_join_token:
            from meshd.publish import parse_target
            parse_target(a.publish_join_token)
        publish_labels = check_labels(parse_labels(a.publish_join_token_label, "--publish-join-token-label"),
                                      "--publish-join-token-label")
        if a.kubernetes:
            from meshd.sync.kube_client import KubernetesConfig
            in_cluster = a.kubernetes == "in-cluster"
            kubernetes = KubernetesConfig(kubeconfig="" if in_cluster else a.kubernetes, in_cluster=in_cluster,
                                          context=a.kubernetes_context, namespace=a.kubernetes_namespace)
    except (MeshError, OSError) as e:
        p.error(str(e))
    if not 0 < a.catalog_key_overlap < a.catalog_key_rotate:
        p.error("--catalog-key-overlap must be positive and shorter than --catalog-key-rotate")
    if a.max_renewals_per_s < 0:
        p.error("--max-renewals-per-s must be 0 (a fixed lease TTL) or more")
    if a.max_watch_messages_per_s < 0:
        p.error("--max-watch-messages-per-s must be 0 (no bound) or more")
    if a.max_pending_joins < 0:
        p.error(f"--max-pending-joins must be 0 (no bound) or more, not {a.max_pending_joins}")
    if a.catalog_record_ttl < 3:
        p.error("--catalog-record-ttl must be at least 3 seconds")
    return MeshdConfig(state_dir=a.state_dir, listen=a.listen, join_listen=a.join_listen, admin_socket=a.admin_socket,
                       metrics=a.metrics, store=a.store, await_import=a.await_import, etcd_ca=a.etcd_ca,
                       etcd_cert=a.etcd_cert,
                       etcd_key=a.etcd_key, overlay_pool=a.overlay_pool,
                       vpc_ranges=tuple(a.vpc_range or d.vpc_ranges), endpoint_ranges=tuple(a.allow_endpoint_range), lease_ttl_s=a.lease_ttl,
                       max_renewals_per_s=a.max_renewals_per_s, max_watch_messages_per_s=a.max_watch_messages_per_s,
                       max_pending_joins=a.max_pending_joins, grace_s=a.grace,
                       advertise=a.advertise, k3s_server_url=a.k3s_server_url,
                       k3s_token_file=a.k3s_token_file, node_cert_ttl_s=a.node_cert_ttl,
                       bootstrap_token_file=a.bootstrap_token_file, bootstrap_token_ttl_s=a.bootstrap_token_ttl,
                       publish_join_token=a.publish_join_token, publish_join_token_ttl_s=a.publish_join_token_ttl,
                       publish_join_token_overlap_s=a.publish_join_token_overlap,
                       publish_join_token_labels=publish_labels, price_table=a.price_table, consul=consul,
                       kubernetes=kubernetes, catalog_key_rotate_s=a.catalog_key_rotate,
                       catalog_key_overlap_s=a.catalog_key_overlap, catalog_record_ttl_s=a.catalog_record_ttl)


#: allocations between collections of the youngest generation (CPython's default: 700)
GC_YOUNG_THRESHOLD = 20_000


def _collect_less_often() -> None:
    """meshd's heap is large and long-lived (every watch stream's coroutines, the current sets
    of nodes and services): a full collection walks all of it, ~250 ms at 1,000 agents on 2
    cores, with the event loop stopped. What a request or a send makes mostly dies within a
    few thousand allocations; collecting the youngest generation every 20,000 allocations
    instead of 700 lets it die young instead of being promoted, and promotions are what
    bring on the next full collection."""
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


async def run(config: MeshdConfig) -> None:
    _collect_less_often()
    coordinator = Coordinator(config)

    async def start() -> dict[str, object]:
        await coordinator.start()
        gc.freeze()  # what start-up made lives as long as the process: out of every later walk
        return dict(coordinator.ports)
    await daemon.serve("meshd", start, coordinator.stop)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["store"]:  # `meshd store export|import|copy` (meshd/storecli.py)
        from meshd.storecli import main as store_main
        return store_main(argv[1:])
    config = parse_args(argv)
    return daemon.run("meshd", lambda: run(config))


if __name__ == "__main__":
    sys.exit(main())
