"""`meshctl infra …` and `meshctl quotas …`: thin commands over the infra API.

Two typer apps, mounted by meshctl.main. Each command reads `--config`
(default ./mesh-infra.yaml), builds one `Aws` (endpoint overridable for
tests and for AWS-compatible endpoints), calls the API and ends through
`emit` or `fail`: a table or JSON, or one error line and a non-zero exit.
boto3 is imported only when a command runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from meshcore.errors import FailedPrecondition, MeshError
from meshctl.output import OUTPUT_OPTION, Output, emit, fail

infra_app = typer.Typer(help="Build the peered AWS network where the GPUs are.", no_args_is_help=True)
quotas_app = typer.Typer(help="GPU vCPU quotas: check, request, explain sky launch failures.", no_args_is_help=True)

CONFIG_OPTION = typer.Option("mesh-infra.yaml", "--config", "-c", help="infra config file (YAML)")
ENDPOINT_OPTION = typer.Option(None, "--endpoint-url", envvar="MESH_AWS_ENDPOINT_URL",
                               help="AWS endpoint for EC2 and SSM (e.g. a moto server)")
ACCOUNT_ENDPOINT_OPTION = typer.Option(None, "--account-endpoint-url", envvar="MESH_AWS_ACCOUNT_ENDPOINT_URL",
                                       help="AWS Account API endpoint, for enabling opt_in_regions")
QUOTAS_ENDPOINT_OPTION = typer.Option(None, "--quotas-endpoint-url", envvar="MESH_AWS_QUOTAS_ENDPOINT_URL",
                                      help="Service Quotas endpoint (defaults to AWS)")


def _run(body: Callable[[], Any]) -> Any:
    """Run a command body, turning typed errors into one line and exit 1."""
    try:
        return body()
    except MeshError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted: run the same command again to finish (every step reads what exists first)", 130)


def _setup(config: str, endpoint_url: str | None, quotas_endpoint_url: str | None = None,
           account_endpoint_url: str | None = None) -> tuple[Any, Any]:
    from infra.aws import aws_from_config
    from infra.config import load_config

    cfg = load_config(config)
    urls = {"service-quotas": quotas_endpoint_url, "account": account_endpoint_url}
    urls = {k: v for k, v in urls.items() if v}
    return cfg, aws_from_config(cfg, endpoint_url=endpoint_url, endpoint_urls=urls)


def _region_rows(plan: Any) -> list[dict[str, Any]]:
    rows = []
    for info in plan.selection.regions:
        cidr = plan.addresses.cidrs.get(info.name)
        rows.append({"region": info.name, "selected": "yes" if info.selected else "no",
                     "opt-in": info.opt_in_status, "cidr": str(cidr) if cidr else "",
                     "changes": len(plan.for_region(info.name)), "why": info.reason})
    return rows


@infra_app.command("plan")
def plan_cmd(config: str = CONFIG_OPTION, endpoint_url: str | None = ENDPOINT_OPTION,
             all_regions: bool = typer.Option(False, "--all-regions", help="also list regions not used"),
             output: Output = OUTPUT_OPTION) -> None:
    """Show what apply would create, change or delete in each region, and why."""

    def body() -> None:
        from infra.plan import make_plan

        cfg, aws = _setup(config, endpoint_url)
        plan = make_plan(cfg, aws)
        regions = [r for r in _region_rows(plan) if all_regions or r["selected"] == "yes" or r["changes"]]
        raw = {"mesh": cfg.name, "main_region": cfg.main_region, "regions": _region_rows(plan),
               "changes": plan.rows(), "calls": aws.calls}
        if output == Output.json:
            emit([], [], output, raw=raw)
            return
        emit(regions, ["region", "selected", "opt-in", "cidr", "changes", "why"], output, title="regions")
        if plan.empty:
            print("no changes: the network matches the config")
        else:
            emit(plan.rows(), ["region", "op", "resource", "reason"], output,
                 title=f"{len(plan.changes)} changes")

    _run(body)


@infra_app.command("apply")
def apply_cmd(config: str = CONFIG_OPTION, endpoint_url: str | None = ENDPOINT_OPTION,
              account_endpoint_url: str | None = ACCOUNT_ENDPOINT_OPTION, output: Output = OUTPUT_OPTION) -> None:
    """Build or repair the network: a second apply changes nothing."""

    def body() -> None:
        from infra.apply import apply_plan
        from infra.plan import make_plan
        from meshctl.progress import Printer

        from infra.regions import enable_requested, select_regions

        cfg, aws = _setup(config, endpoint_url, account_endpoint_url=account_endpoint_url)
        selection = select_regions(cfg, aws)
        for region, status in enable_requested(cfg, aws, selection).items():
            print(f"{region}: {status} (opt-in requested); run apply again once AWS reports it enabled",
                  file=sys.stderr)
        plan = make_plan(cfg, aws, selection=selection)
        if plan.empty:
            if output == Output.json:
                emit([], [], output, raw={"changes": 0, "failed": {}, "leftovers": [], "calls": aws.calls})
            else:
                print("no changes: the network matches the config")
            return
        progress = Printer()
        try:
            result = apply_plan(plan, aws, progress)
        finally:
            progress.close()
        result_rows = []
        for region in sorted({c.region for c in plan.changes}):
            done = sum(1 for c in result.done if c.region == region)
            total = len(plan.for_region(region))
            result_rows.append({"region": region, "applied": f"{done}/{total}",
                                "status": "failed: " + result.failed[region] if region in result.failed else "ok"})
        for lo in result.leftovers:
            result_rows.append({"region": lo.region, "applied": "", "status": f"left over {lo.resource}: {lo.error}"})
        emit(result_rows, ["region", "applied", "status"], output, title="apply",
             raw={"changes": len(result.done), "failed": result.failed,
                  "leftovers": [lo.__dict__ for lo in result.leftovers], "calls": aws.calls})
        if not result.ok:
            fail(f"apply incomplete in {len(result.failed) + len(result.leftovers)} place(s): "
                 "fix the cause above and run apply again")

    _run(body)


@infra_app.command("status")
def status_cmd(config: str = CONFIG_OPTION, endpoint_url: str | None = ENDPOINT_OPTION,
               sky: Path | None = typer.Option(None, "--sky", help="a SkyPilot config (e.g. ~/.sky/config.yaml): "
                                               "check that the VPC, groups and profiles it names exist"),
               output: Output = OUTPUT_OPTION) -> None:
    """Regions, CIDRs, peerings and drift, as a table; with --sky, what SkyPilot would not find."""

    def body() -> None:
        from infra.plan import make_plan

        cfg, aws = _setup(config, endpoint_url)
        plan = make_plan(cfg, aws)
        rows = []
        for region in sorted(set(plan.desired) | set(plan.states)):
            st = plan.states.get(region)
            vpc = st.vpc_id() if st else None
            pcx = "hub" if region == cfg.main_region else "-"
            if st and region != cfg.main_region:
                pcx = ", ".join(f"{p.id} {p.status}" for p in st.peerings) or "none"
            pending = plan.for_region(region)
            rows.append({"region": region, "role": "main" if region == cfg.main_region else
                         ("spoke" if region in plan.desired else "removed"),
                         "cidr": st.vpcs.get(vpc, "") if st and vpc else str(plan.addresses.cidrs.get(region, "")),
                         "vpc": vpc or "not created",
                         "subnets": len([s for s in st.subnets if s.vpc_id == vpc]) if st else 0,
                         "peering": pcx,
                         "drift": "in sync" if not pending else f"{len(pending)} change(s): " +
                         "; ".join(sorted({c.reason for c in pending}))[:80]})
        problems = _sky_problems(cfg, aws, sky, sorted(plan.desired)) if sky is not None else None
        if output == Output.json and problems is not None:
            emit([], [], output, raw={"mesh": cfg.name, "regions": rows, "sky": problems})
            raise typer.Exit(1 if problems else 0)
        emit(rows, ["region", "role", "cidr", "vpc", "subnets", "peering", "drift"], output,
             title=f"mesh {cfg.name}")
        if problems is not None:
            for p in problems:
                print(f"sky: {p}")
            if problems:
                raise typer.Exit(1)
            print(f"sky: {sky} names only what exists: sky launch will find the network")

    _run(body)


def _sky_problems(cfg: Any, aws: Any, path: Path, regions: list[str]) -> list[str]:
    import yaml

    from infra.skycheck import check
    from meshcore.errors import ConfigError

    try:
        raw = yaml.safe_load(path.expanduser().read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read SkyPilot config {path}: {e}") from None
    return check(cfg, raw or {}, aws, regions)


@infra_app.command("destroy")
def destroy_cmd(config: str = CONFIG_OPTION, endpoint_url: str | None = ENDPOINT_OPTION,
                yes: bool = typer.Option(False, "--yes", help="confirm: delete everything tagged for the mesh"),
                output: Output = OUTPUT_OPTION) -> None:
    """Remove everything the mesh created, in every region; report what could not go."""

    def body() -> None:
        from infra.destroy import destroy
        from meshctl.progress import Printer

        cfg, aws = _setup(config, endpoint_url)
        if not yes:
            fail(f"destroy deletes every resource tagged mesh:name={cfg.name} in every region: pass --yes")
        progress = Printer()
        try:
            result = destroy(cfg, aws, progress=progress.note)
        finally:
            progress.close()
        rows = [{"region": r, "resource": res, "result": "deleted"} for r, res in result.deleted]
        rows += [{"region": lo.region, "resource": lo.resource, "result": f"left over: {lo.error}"}
                 for lo in result.leftovers]
        emit(rows, ["region", "resource", "result"], output, title="destroy",
             raw={"deleted": [{"region": r, "resource": res} for r, res in result.deleted],
                  "leftovers": [lo.__dict__ for lo in result.leftovers], "calls": result.calls})
        if result.leftovers:
            fail(f"{len(result.leftovers)} resource(s) could not be deleted (listed above): "
                 "remove what holds them and run destroy again")
        if output == Output.table and not rows:
            print("nothing to delete")

    _run(body)


@infra_app.command("policy")
def policy_cmd(config: str = CONFIG_OPTION,
               quotas: bool = typer.Option(False, "--quotas", help="include the quota commands' actions"),
               clusters: bool = typer.Option(False, "--clusters", help="the policy of the role `meshctl cluster` "
                                                                       "works through (`meshctl infra role create`)")) -> None:
    """Print the IAM policy that apply and destroy need (and nothing more)."""

    def body() -> None:
        import json

        from infra import policy
        from infra.config import InfraConfig, load_config

        if clusters:
            print(json.dumps(policy.cluster_document(quotas=quotas), indent=2))
            return
        cfg = load_config(config) if Path(config).exists() else InfraConfig()
        print(policy.render(cfg.name, quotas=quotas, opt_in=bool(cfg.opt_in_regions), sky=cfg.sky))

    _run(body)


# --- instance types -----------------------------------------------------------

@infra_app.command("types")
def types_cmd(region: list[str] = typer.Option([], "--region", help="a region to list (repeatable; default "
                                                                     "us-east-1, or the cluster's regions)"),
              types: str | None = typer.Option(None, "--types", help="comma-separated types (default: every GPU "
                                                                     "type offered, or the cluster's types)"),
              spot: bool = typer.Option(False, "--spot", help="also the current spot price (median over zones)"),
              cluster: str | None = typer.Option(None, "--cluster", help="the regions and types of this cluster"),
              endpoint_url: str | None = ENDPOINT_OPTION,
              pricing_endpoint_url: str | None = typer.Option(None, "--pricing-endpoint-url", hidden=True,
                                                              envvar="MESH_AWS_PRICING_ENDPOINT_URL"),
              output: Output = OUTPUT_OPTION) -> None:
    """Instance types offered in each region, with GPUs, vCPUs, memory and price per hour."""

    def body() -> None:
        from infra import catalog
        from infra.prices import Prices, default_cache_path

        wanted = [t.strip() for t in types.split(",") if t.strip()] if types else None
        regions = list(region)
        if cluster is not None:
            from infra.cluster.lifecycle import selection
            from meshctl.cluster_cmd import _context_ops

            _, name, _, ops = _context_ops(cluster, endpoint_url, None, pricing_endpoint_url)
            doc = ops.registry.get(name)
            if doc is None:
                raise FailedPrecondition(f"no cluster named {name!r} in this account")
            aws = ops.aws
            regions = regions or list(selection(ops, doc, doc.spec.to_infra(doc.name)).selected)
            wanted = wanted or sorted({t.name for t in doc.spec.instance_types}
                                      | {doc.spec.coordinator_instance_type})
        else:
            from infra.aws import Aws

            aws = Aws(endpoint_url=endpoint_url,
                      endpoint_urls={"pricing": pricing_endpoint_url} if pricing_endpoint_url else None)
        rows = catalog.table(aws, regions or ["us-east-1"], wanted, Prices(aws, default_cache_path()), spot=spot,
                             gpu_only=wanted is None)
        cols = ["region", "type", "gpus", "gpu", "vcpus", "memory_gib", "on_demand_hour"] + (["spot_hour"] if spot
                                                                                             else [])
        emit(rows, cols, output, title="instance types")

    _run(body)


# --- quotas ----------------------------------------------------------------

def _quota_columns() -> list[str]:
    return ["region", "code", "quota", "current", "needed", "types", "status"]


CLUSTER_OPTION = typer.Option(None, "--cluster", help="the quotas this cluster needs (its coordinators, warm "
                                                      "instances and listed types) instead of a mesh config")


def _cluster_needs(cluster: str, endpoint_url: str | None, quotas_endpoint_url: str | None) -> tuple[Any, list]:
    """The cluster's account (through its role) and the quotas its spec needs, per region."""
    from infra.cluster.lifecycle import preview
    from meshctl.cluster_cmd import _context_ops

    _, name, _, ops = _context_ops(cluster, endpoint_url, None, None, quotas_endpoint_url)
    doc = ops.registry.get(name)
    if doc is None:
        raise FailedPrecondition(f"no cluster named {name!r} in this account")
    return ops.aws, [r.need for r in preview(ops, doc, price=False).quotas]


@quotas_app.command("check")
def quotas_check(config: str = CONFIG_OPTION, endpoint_url: str | None = ENDPOINT_OPTION,
                 quotas_endpoint_url: str | None = QUOTAS_ENDPOINT_OPTION, cluster: str | None = CLUSTER_OPTION,
                 output: Output = OUTPUT_OPTION) -> None:
    """Per region, the vCPU quotas the chosen types need against what the account has."""

    def body() -> None:
        from infra import quotas
        from infra.regions import select_regions

        if cluster is not None:
            aws, wanted = _cluster_needs(cluster, endpoint_url, quotas_endpoint_url)
            emit([r.row() for r in quotas.check_needs(aws, wanted)], _quota_columns(), output,
                 title=f"vCPU quotas of cluster {cluster}")
            return
        cfg, aws = _setup(config, endpoint_url, quotas_endpoint_url)
        rows = quotas.check(cfg, aws, select_regions(cfg, aws))
        emit([r.row() for r in rows], _quota_columns(), output, title="vCPU quotas")

    _run(body)


@quotas_app.command("request")
def quotas_request(config: str = CONFIG_OPTION, endpoint_url: str | None = ENDPOINT_OPTION,
                   quotas_endpoint_url: str | None = QUOTAS_ENDPOINT_OPTION,
                   interval: float | None = typer.Option(None, "--interval",
                                                         help="seconds between requests "
                                                              "(config: quota_request_interval_s)"),
                   limit: int | None = typer.Option(None, "--limit", help="file at most this many requests"),
                   cluster: str | None = CLUSTER_OPTION, output: Output = OUTPUT_OPTION) -> None:
    """Ask for the missing quotas: only where short, never twice while one is open, spaced out."""

    def body() -> None:
        from infra import quotas
        from infra.regions import select_regions

        if interval is not None and interval < 0:
            fail("--interval must not be negative")
        from meshctl.progress import Printer

        printer = Printer()  # on stderr: requests are spaced out, so the waits are said
        try:
            if cluster is not None:
                aws, wanted = _cluster_needs(cluster, endpoint_url, quotas_endpoint_url)
                rows = quotas.request_needs(aws, wanted, interval=30.0 if interval is None else interval,
                                            limit=limit, progress=printer)
            else:
                cfg, aws = _setup(config, endpoint_url, quotas_endpoint_url)
                rows = quotas.request(cfg, aws, select_regions(cfg, aws), interval_s=interval, limit=limit,
                                      progress=printer)
        finally:
            printer.close()
        emit([r.row() for r in rows], _quota_columns(), output, title="quota requests")
        refused = [r for r in rows if r.status.startswith("refused")]
        if refused:
            fail(f"{len(refused)} quota request(s) refused (see status): request them in the Service Quotas "
                 "console or open a support case")

    _run(body)


@quotas_app.command("explain")
def quotas_explain(logfile: Path = typer.Argument(..., help="a `sky launch` log"),
                   output: Output = OUTPUT_OPTION) -> None:
    """List the regions and quota codes behind VcpuLimitExceeded failures in a sky launch log."""

    def body() -> None:
        from infra import quotas

        try:
            text = logfile.read_text(errors="replace")
        except OSError as e:
            fail(f"cannot read {logfile}: {e.strerror}")
        found = quotas.explain(text)
        rows = [{"region": e.region, "code": e.code, "quota": e.name, "failures": e.failures,
                 "types": ", ".join(e.instance_types)} for e in found]
        if output == Output.table and not rows:
            print(f"no VcpuLimitExceeded failures in {logfile}")
            return
        emit(rows, ["region", "code", "quota", "failures", "types"], output, title="VcpuLimitExceeded")

    _run(body)


__all__ = ["infra_app", "quotas_app"]
