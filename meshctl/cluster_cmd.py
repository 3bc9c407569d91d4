"""`meshctl cluster …`, `meshctl clusters` and `meshctl infra role …`: thin commands over infra.cluster.

Every command checks its arguments (cluster name, role ARN, external id,
spec) before the first AWS call, assumes the cluster role with the external
id, and ends with a table/JSON or one `error:` line and a non-zero exit.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from meshcore.errors import FailedPrecondition, InvalidArgument, Unavailable
from meshcore.names import check_cluster_name
from meshctl.infra_cmd import _run  # one error line, exit 1; Ctrl-C says to run it again
from meshctl.output import OUTPUT_OPTION, Output, emit, fail

cluster_app = typer.Typer(help="Mesh clusters in your own AWS account: create, use, edit, delete.",
                          no_args_is_help=True)
create_app = typer.Typer(help="Create a cluster.", no_args_is_help=True)
cluster_app.add_typer(create_app, name="create")
role_app = typer.Typer(help="The cross-account IAM role `meshctl cluster` works through.", no_args_is_help=True)

ENDPOINT = typer.Option(None, "--endpoint-url", envvar="MESH_AWS_ENDPOINT_URL",
                        help="AWS endpoint for every service (e.g. a moto server)")
STS_ENDPOINT = typer.Option(None, "--sts-endpoint-url", envvar="MESH_AWS_STS_ENDPOINT_URL", help="STS endpoint")
ROLE = typer.Option(None, "--role-arn", envvar="MESH_ROLE_ARN", help="role from `meshctl infra role create`")
EXTERNAL_ID = typer.Option(None, "--external-id", envvar="MESH_EXTERNAL_ID", help="its external id")
HOME = typer.Option(None, "--home-region", help="region where the account's cluster documents live "
                                                "(default us-east-1)")
YES = typer.Option(False, "--yes", "-y", help="do not ask for confirmation")
PRICING_ENDPOINT = typer.Option(None, "--pricing-endpoint-url", envvar="MESH_AWS_PRICING_ENDPOINT_URL", hidden=True,
                                help="AWS Price List endpoint")
QUOTAS_ENDPOINT = typer.Option(None, "--quotas-endpoint-url", envvar="MESH_AWS_QUOTAS_ENDPOINT_URL", hidden=True,
                               help="Service Quotas endpoint")
PROBE_TIMEOUT = typer.Option(2.0, "--probe-timeout", hidden=True, help="seconds per meshd health check")


def _base_aws(endpoint: str | None, sts_endpoint: str | None) -> Any:
    from infra.aws import Aws

    return Aws(endpoint_url=endpoint, endpoint_urls={"sts": sts_endpoint} if sts_endpoint else None)


def _role_aws(role_arn: str, external_id: str, home: str, endpoint: str | None, sts_endpoint: str | None,
              pricing_endpoint: str | None = None, quotas_endpoint: str | None = None) -> Any:
    from infra.aws import Aws
    from infra.cluster.access import assume

    factory = assume(_base_aws(endpoint, sts_endpoint), role_arn, external_id, home)
    urls = {k: v for k, v in (("pricing", pricing_endpoint), ("service-quotas", quotas_endpoint)) if v}
    return Aws(factory, endpoint_url=endpoint, endpoint_urls=urls)


def _ops(aws: Any, home: str) -> Any:
    from infra.cluster.lifecycle import Ops
    from infra.cluster.registry import Registry
    from infra.prices import Prices, default_cache_path
    from meshctl.context import cluster_dir

    from meshctl.progress import Printer

    return Ops(aws, Registry(aws, home), cluster_dir, progress=Printer(),  # on stderr
               prices=Prices(aws, default_cache_path()))


def _need(role_arn: str | None, external_id: str | None) -> tuple[str, str]:
    from infra.cluster.access import check_external_id, check_role_arn

    if not role_arn:
        raise InvalidArgument("--role-arn is required: the role ARN `meshctl infra role create` printed")
    if not external_id:
        raise InvalidArgument("--external-id is required: the external id `meshctl infra role create` printed")
    check_role_arn(role_arn)
    check_external_id(external_id)
    return role_arn, external_id


def _edit_text(text: str, label: str) -> str:
    """Open `text` in $EDITOR (then $VISUAL, then vi) and return what was saved."""
    editor = os.environ.get("EDITOR") or os.environ.get("VISUAL") or "vi"
    with tempfile.TemporaryDirectory(prefix="meshctl-") as d:
        path = Path(d) / f"{label}.yaml"
        path.write_text(text)
        try:
            rc = subprocess.call(f'{editor} "{path}"', shell=True)
        except OSError as e:
            raise FailedPrecondition(f"cannot start the editor {editor!r}: {e}") from None
        if rc != 0:
            raise FailedPrecondition(f"the editor ({editor}) exited with status {rc}: nothing was changed")
        return path.read_text()


def _spec_header(name: str, version: int | None) -> str:
    v = f" (version {version})" if version else ""
    return (f"# Cluster {name}{v}. Save to apply; an invalid spec is refused and nothing changes.\n"
            "# profile: performance (3 meshd on etcd) | cost-savings (1 meshd on SQLite).\n")


# -- meshctl cluster create aws -------------------------------------------------

@create_app.command("aws")
def create_aws(
    name: str = typer.Argument(..., help="cluster name: lowercase letters, digits, '-' or '.'"),
    role_arn: Optional[str] = ROLE, external_id: Optional[str] = EXTERNAL_ID,
    region: str = typer.Option("us-east-1", "--region", help="main region: coordinators and the hub VPC"),
    instance_types: Optional[str] = typer.Option(None, "--instance-types", help="comma-separated, e.g. g6.xlarge,g6.2xlarge"),
    cost_savings: bool = typer.Option(False, "--cost-savings", help="one meshd on SQLite instead of three on etcd"),
    edit_before: bool = typer.Option(False, "--edit-before-creation", help="edit the full spec in $EDITOR first"),
    spec_file: Optional[Path] = typer.Option(None, "--spec", help="read the spec from this YAML file"),
    package: Optional[str] = typer.Option(None, "--package", envvar="MESH_PACKAGE",
                                          help="what instances pip install: a wheel URL, git+https://…@tag, name==version"),
    home_region: Optional[str] = HOME, yes: bool = YES,
    endpoint_url: Optional[str] = ENDPOINT, sts_endpoint_url: Optional[str] = STS_ENDPOINT,
    pricing_endpoint_url: Optional[str] = PRICING_ENDPOINT, quotas_endpoint_url: Optional[str] = QUOTAS_ENDPOINT,
    output: Output = OUTPUT_OPTION,
) -> None:
    """Create a mesh cluster in your AWS account: network, coordinators, warm instances.

    The vCPU quotas every region needs are checked first (a shortfall stops before anything is
    built, naming what to request); the cost per hour and per day is shown for both profiles."""
    def body() -> None:
        from infra.cluster import spec as specs
        from infra.cluster.lifecycle import create
        from meshctl.context import ClusterContext, Contexts

        check_cluster_name(name)
        arn, ext = _need(role_arn, external_id)
        if spec_file is not None:
            try:
                spec = specs.from_yaml(spec_file.read_text(), str(spec_file), check=False)
            except OSError as e:
                raise InvalidArgument(f"cannot read --spec {spec_file}: {e.strerror}") from None
            if package and not spec.package:
                spec = dataclasses.replace(spec, package=package)
            if not edit_before:
                specs.validate(spec)
        else:
            raw: dict[str, Any] = {"main_region": region,
                                   "profile": specs.COST_SAVINGS if cost_savings else specs.PERFORMANCE}
            if package:
                raw["package"] = package
            if instance_types:
                raw["instance_types"] = [t.strip() for t in instance_types.split(",") if t.strip()]
            spec = specs.from_dict({**specs.ClusterSpec().to_dict(), **raw}, "command line", check=not edit_before)
        if edit_before:
            spec = specs.from_yaml(_edit_text(_spec_header(name, None) + spec.to_yaml(), name), "edited spec")
        home = home_region or "us-east-1"
        contexts = Contexts.load()
        known = contexts.clusters.get(name)
        aws = _role_aws(arn, ext, home, endpoint_url, sts_endpoint_url, pricing_endpoint_url, quotas_endpoint_url)
        ops = _ops(aws, home)
        if edit_before and not yes and output == Output.table:
            _show_plan(ops, name, spec)
            if not typer.confirm("Create this cluster?"):
                raise FailedPrecondition("not created")

        def recorded(doc: Any) -> None:
            contexts.clusters[name] = ClusterContext(doc.id, arn, ext, home, known.coordinator if known else "")
            contexts.current = contexts.current or name
            contexts.save()

        result = create(ops, name, spec, known_id=known.id if known else None, on_recorded=recorded)
        contexts.clusters[name].coordinator = result.address
        contexts.save()
        _emit_result(result, output, "created")
    _run(body)


def _show_plan(ops: Any, name: str, spec: Any) -> None:
    from infra.plan import make_plan
    from infra.regions import select_regions
    from rich.console import Console

    from infra.cluster.lifecycle import selection_key

    cfg = spec.to_infra(name)
    sel = select_regions(cfg, ops.aws)
    ops.selections[selection_key(spec)] = sel
    plan = make_plan(cfg, ops.aws, selection=sel)
    console = Console()
    console.print(f"[bold]{name}[/]: {spec.profile}, {spec.replicas} meshd, main region {spec.main_region}")
    for r in sel.selected:
        console.print(f"  {r}: {len(plan.for_region(r))} network changes ({sel.info(r).reason})")
    warm = sum(t.overprovisioned_ondemand_count for t in spec.instance_types)
    console.print(f"  instances: {spec.replicas} × {spec.coordinator_instance_type} (coordinators), {warm} warm")
    _show_preview(ops, name, spec)


def _show_preview(ops: Any, name: str, spec: Any, types: bool = False) -> None:
    """Quotas short, the instance types per region (edit), and the cost of both profiles."""
    from infra import catalog
    from infra.cluster import costs
    from infra.cluster.lifecycle import new_doc, preview

    pre = preview(ops, new_doc(name, spec))
    for r in pre.short:
        typer.echo(f"quota short: {r.need.region} {r.need.code} ({r.need.name}): {r.current or 0:g} vCPUs, needs "
                   f"{r.need.vcpus} (`meshctl quotas request --cluster {name}`)")
    if types:
        wanted = sorted({t.name for t in spec.instance_types} | {spec.coordinator_instance_type})
        emit(catalog.table(ops.aws, list(pre.selection.selected), wanted, ops.prices), TYPE_COLUMNS, Output.table,
             title="instance types offered in the cluster's regions")
    emit(costs.rows(pre.estimates), ["profile", "item", "per_hour", "per_day"], Output.table,
         title=f"cost of {name} (on-demand list prices)")


TYPE_COLUMNS = ["region", "type", "gpus", "gpu", "vcpus", "memory_gib", "on_demand_hour"]


def _emit_result(result: Any, output: Output, verb: str) -> None:
    d = result.doc
    from infra.cluster import costs

    raw = {"id": d.id, "name": d.name, "version": d.version, "address": result.address, "launched": result.launched,
           "terminated": result.terminated, "leftovers": result.leftovers, "calls": result.calls,
           "seconds": round(result.seconds, 2), "costs": costs.raw(result.estimates)}
    if output == Output.json:
        emit([], [], output, raw=raw)
        return
    rows = [{"what": "cluster", "value": f"{d.name} ({d.id}) {verb}, spec version {d.version}"}]
    if result.address:
        rows.append({"what": "meshd", "value": result.address})
    rows += [{"what": "launched", "value": x} for x in result.launched]
    rows += [{"what": "terminated", "value": x} for x in result.terminated]
    for i, e in enumerate(result.estimates):
        rows.append({"what": "cost" if i == 0 else "if switched",
                     "value": f"{e.profile}: {costs.money(e.hour)}/h, {costs.money(e.day)}/day"})
    emit(rows, ["what", "value"], output, title=f"cluster {d.name}")


# -- meshctl clusters -------------------------------------------------------------

def node_list(secrets: Path, coordinator: str, timeout_s: float) -> Callable[[], list[Any]] | None:
    """meshd's node list over mTLS with the cluster's admin certificate (None without one)."""
    files = [secrets / n for n in ("ca.crt", "admin.key", "admin.crt")]
    if not all(f.is_file() for f in files):
        return None

    def nodes() -> list[Any]:
        import grpc

        from mesh.v1 import nodes_pb2, nodes_pb2_grpc
        from meshcore.pki import SERVER_NAME

        creds = grpc.ssl_channel_credentials(*(f.read_bytes() for f in files))
        with grpc.secure_channel(coordinator, creds, options=[("grpc.ssl_target_name_override", SERVER_NAME)]) as ch:
            try:
                return list(nodes_pb2_grpc.NodeServiceStub(ch).ListNodes(nodes_pb2.ListNodesRequest(),
                                                                         timeout=max(timeout_s, 1.0)).nodes)
            except grpc.RpcError as e:
                raise Unavailable(f"{e.details() or e.code().name} ({e.code().name})") from None
    return nodes

def clusters_cmd(
    watch: bool = typer.Option(False, "--watch", "-w", help="refresh until interrupted"),
    interval: float = typer.Option(5.0, "--interval", help="seconds between refreshes with --watch"),
    count: int = typer.Option(0, "--count", hidden=True, help="stop after this many refreshes (0: never)"),
    role_arn: Optional[str] = ROLE, external_id: Optional[str] = EXTERNAL_ID, home_region: Optional[str] = HOME,
    endpoint_url: Optional[str] = ENDPOINT, sts_endpoint_url: Optional[str] = STS_ENDPOINT,
    probe_timeout: float = PROBE_TIMEOUT, output: Output = OUTPUT_OPTION,
) -> None:
    """List the account's clusters with their status (derived from what is running)."""
    columns = ["id", "name", "regions", "profile", "status", "agents", "reason"]

    def rows() -> list[dict[str, Any]]:
        from infra.cluster.registry import Registry
        from infra.cluster.status import health_probe, status
        from infra.regions import ENABLED, list_regions
        from meshctl.context import Contexts, cluster_dir

        contexts = Contexts.load()
        arn, ext, home = role_arn, external_id, home_region
        if not (arn and ext):
            if not contexts.current:
                raise InvalidArgument("which account? pass --role-arn and --external-id, or set a current "
                                      "cluster with `meshctl cluster use NAME`")
            _, ctx = contexts.get(None)
            arn, ext, home = ctx.role_arn, ctx.external_id, home or ctx.home_region
        arn, ext = _need(arn, ext)
        home = home or "us-east-1"
        aws = _role_aws(arn, ext, home, endpoint_url, sts_endpoint_url)
        docs = Registry(aws, home).list()
        regions = sorted(r for r, s in list_regions(aws).items() if s in ENABLED) if docs else []
        out = []
        for d in docs:
            probe = health_probe(cluster_dir(d.name) / "ca.crt", probe_timeout)
            ctx = contexts.clusters.get(d.name)
            nodes = node_list(cluster_dir(d.name), ctx.coordinator, probe_timeout) if ctx and ctx.coordinator else None
            row = status(aws, d, probe, regions, nodes=nodes).row()
            row["current"] = "*" if contexts.current == d.name else ""
            out.append(row)
        return out

    if not watch:
        emit(_run(rows), ["current", *columns], output, title="clusters")
        return
    from rich.live import Live
    from rich.table import Table

    def table(items: list[dict[str, Any]]) -> Table:
        t = Table(title=f"clusters (every {interval:g} s, Ctrl-C to stop)")
        for c in columns:
            t.add_column(c.upper(), no_wrap=c in ("id", "name", "profile", "status"))
        for r in items:
            t.add_row(*[str(r.get(c, "")) for c in columns])
        return t

    n = 0
    try:
        with Live(table(_run(rows)), refresh_per_second=4) as live:
            while not count or n < count - 1:
                time.sleep(interval)
                live.update(table(_run(rows)))
                n += 1
    except KeyboardInterrupt:
        pass


# -- meshctl cluster use / edit / delete ------------------------------------------

@cluster_app.command("use")
def use_cmd(name: str = typer.Argument(..., help="cluster name"),
            role_arn: Optional[str] = ROLE, external_id: Optional[str] = EXTERNAL_ID, home_region: Optional[str] = HOME,
            endpoint_url: Optional[str] = ENDPOINT, sts_endpoint_url: Optional[str] = STS_ENDPOINT) -> None:
    """Make NAME the cluster later commands use (with --role-arn/--external-id: one made elsewhere)."""
    def body() -> None:
        from infra.cluster.lifecycle import _param, local_secrets
        from meshctl.context import ClusterContext, Contexts

        check_cluster_name(name)
        contexts = Contexts.load()
        if name not in contexts.clusters and not (role_arn or external_id):
            contexts.get(name)  # says which clusters are known, and how to add one
        if name not in contexts.clusters or (role_arn and external_id):
            arn, ext = _need(role_arn, external_id)
            home = home_region or "us-east-1"
            aws = _role_aws(arn, ext, home, endpoint_url, sts_endpoint_url)
            ops = _ops(aws, home)
            doc = ops.registry.get(name)
            if doc is None:
                raise FailedPrecondition(f"no cluster named {name!r} in that account")
            local_secrets(ops, doc)
            addr = _param(aws, doc.spec.main_region, f"/mesh/{name}/meshd-address") or ""
            contexts.clusters[name] = ClusterContext(doc.id, arn, ext, home, addr)
        contexts.current = name
        contexts.save()
        typer.echo(f"current cluster: {name}")
    _run(body)


def _context_ops(name: Optional[str], endpoint_url: Optional[str], sts_endpoint_url: Optional[str],
                 pricing_endpoint_url: Optional[str] = None, quotas_endpoint_url: Optional[str] = None) -> tuple:
    from meshctl.context import Contexts

    contexts = Contexts.load()
    if name is not None:
        check_cluster_name(name)
    name, ctx = contexts.get(name)
    aws = _role_aws(ctx.role_arn, ctx.external_id, ctx.home_region, endpoint_url, sts_endpoint_url,
                    pricing_endpoint_url, quotas_endpoint_url)
    return contexts, name, ctx, _ops(aws, ctx.home_region)


@cluster_app.command("edit")
def edit_cmd(name: Optional[str] = typer.Argument(None, help="cluster name (default: the current cluster)"),
             spec_file: Optional[Path] = typer.Option(None, "--spec", help="the new spec from this YAML file "
                                                                             "instead of $EDITOR"),
             yes: bool = YES, endpoint_url: Optional[str] = ENDPOINT, sts_endpoint_url: Optional[str] = STS_ENDPOINT,
             pricing_endpoint_url: Optional[str] = PRICING_ENDPOINT,
             quotas_endpoint_url: Optional[str] = QUOTAS_ENDPOINT, output: Output = OUTPUT_OPTION) -> None:
    """Change instance types, warm counts, regions or the profile; shows the diff, the instance types
    offered in each region and the cost of both profiles first."""
    def body() -> None:
        from infra.cluster import spec as specs
        from infra.cluster.lifecycle import edit

        contexts, cname, ctx, ops = _context_ops(name, endpoint_url, sts_endpoint_url, pricing_endpoint_url,
                                                 quotas_endpoint_url)
        doc = ops.registry.get(cname)
        if doc is None:
            raise FailedPrecondition(f"no cluster named {cname!r} in this account")
        if spec_file is not None:
            try:
                text = spec_file.read_text()
            except OSError as e:
                raise InvalidArgument(f"cannot read --spec {spec_file}: {e.strerror}") from None
        else:
            text = _edit_text(_spec_header(cname, doc.version) + doc.spec.to_yaml(), cname)
        new = specs.from_yaml(text, "edited spec")
        specs.check_edit(doc.spec, new)
        change = specs.diff(doc.spec, new, f"{cname} (version {doc.version})", f"{cname} (edited)")
        if not change and not doc.last_error:
            typer.echo(f"no change to cluster {cname}")
            return
        if change and output == Output.table:
            typer.echo(change, nl=False)
            _show_preview(ops, cname, new, types=True)
        if change and not yes and not typer.confirm("Apply this change?"):
            raise FailedPrecondition("not changed")
        result = edit(ops, cname, new, base_version=doc.version)
        if result.address:
            contexts.clusters[cname].coordinator = result.address
            contexts.save()
        _emit_result(result, output, "updated")
    _run(body)


@cluster_app.command("delete")
def delete_cmd(name: str = typer.Argument(..., help="cluster name"), yes: bool = YES,
               endpoint_url: Optional[str] = ENDPOINT, sts_endpoint_url: Optional[str] = STS_ENDPOINT,
               output: Output = OUTPUT_OPTION) -> None:
    """Delete everything the cluster has, then list anything still tagged with it."""
    def body() -> None:
        from infra.cluster.lifecycle import delete

        check_cluster_name(name)
        contexts, cname, ctx, ops = _context_ops(name, endpoint_url, sts_endpoint_url)
        if not yes and not typer.confirm(f"Delete cluster {cname} and every instance in it?"):
            raise FailedPrecondition("not deleted")
        result = delete(ops, cname)
        if output == Output.json:
            _emit_result(result, output, "deleted")
        elif result.leftovers:
            emit([{"leftover": x} for x in result.leftovers], ["leftover"], output,
                 title=f"cluster {cname}: still in the account (tagged mesh:cluster={cname})")
        else:
            typer.echo(f"cluster {cname} deleted: {len(result.terminated)} instances terminated, "
                       f"nothing tagged with it is left ({result.calls} AWS calls, {result.seconds:.1f} s)")
        if result.leftovers:
            fail(f"{len(result.leftovers)} resources are left; run `meshctl cluster delete {cname}` again")
        contexts.clusters.pop(cname, None)
        if contexts.current == cname:
            contexts.current = None
        contexts.save()
    _run(body)


# -- meshctl infra role create ----------------------------------------------------

@role_app.command("create")
def role_create(name: str = typer.Option("meshctl-clusters", "--name", help="role name"),
                trusted: Optional[str] = typer.Option(None, "--trusted", help="account id or ARN allowed to assume "
                                                                             "it (default: the user or role running this)"),
                new_external_id: bool = typer.Option(False, "--new-external-id", help="replace the external id"),
                endpoint_url: Optional[str] = ENDPOINT, sts_endpoint_url: Optional[str] = STS_ENDPOINT,
                output: Output = OUTPUT_OPTION) -> None:
    """Create (or update) the cross-account role with a generated external id; run with admin credentials."""
    def body() -> None:
        from infra.cluster.access import create_role, new_external_id as fresh

        res = create_role(_base_aws(endpoint_url, sts_endpoint_url), name, trusted,
                          external_id=fresh() if new_external_id else None)
        raw = {"role_arn": res.role_arn, "external_id": res.external_id, "created": res.created,
               "instance_role_boundary": res.boundary}
        if output == Output.json:
            emit([], [], output, raw=raw)
            return
        emit([{"what": "role ARN", "value": res.role_arn}, {"what": "external id", "value": res.external_id},
              {"what": "instance role boundary", "value": res.boundary}],
             ["what", "value"], output, title="role " + ("created" if res.created else "updated"))
        typer.echo(f"\nmeshctl cluster create aws --role-arn {res.role_arn} --external-id {res.external_id} NAME")
    _run(body)
