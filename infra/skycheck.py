"""Does a SkyPilot config name what the network has? (`meshctl infra status --sky FILE`)

SkyPilot looks up `aws.vpc_name` by the VPC's Name tag, the groups of
`aws.security_group_name` by GroupName inside that VPC, and launches with
the instance profiles of `aws.remote_identity`. A name that does not exist
fails `sky launch` late, after the optimizer picked a region, with an error
that does not say which command makes it. This check reads the config and
the account and says, per name, what is missing and what to run.
"""

from __future__ import annotations

from typing import Any

from infra.aws import Aws, AwsError
from infra.config import InfraConfig
from infra.desired import group_name, main_group_name
from infra.profiles import IAM_REGION, documents
from infra.state import NAME_TAG, read_region, vpc_name

#: remote_identity values that are SkyPilot's own, not instance profiles
SKY_IDENTITIES = {"LOCAL_CREDENTIALS", "SERVICE_ACCOUNT", "NO_UPLOAD"}


def _values(setting: Any) -> list[str]:
    """The names a SkyPilot setting holds: a string, or a list of {pattern: name}."""
    if setting is None:
        return []
    if isinstance(setting, str):
        return [setting]
    return [str(v) for item in setting if isinstance(item, dict) for v in item.values()]


def check(cfg: InfraConfig, sky: dict, aws: Aws, regions: list[str]) -> list[str]:
    """Problems, one line each, naming the fix; empty when SkyPilot will find everything."""
    problems: list[str] = []
    a = (sky or {}).get("aws") or {}
    fix = "run `meshctl infra apply`"
    want_vpc = a.get("vpc_name")
    if want_vpc is None:
        problems.append(f"aws.vpc_name is not set: SkyPilot would use the default VPC; set it to {vpc_name(cfg.name)!r}")
    elif want_vpc != vpc_name(cfg.name):
        problems.append(f"aws.vpc_name is {want_vpc!r} but mesh {cfg.name!r}'s VPCs are named "
                        f"{vpc_name(cfg.name)!r}: set aws.vpc_name: {vpc_name(cfg.name)}")
    groups = _values(a.get("security_group_name"))
    ours = {group_name(cfg.name)} | ({main_group_name(cfg.name)} if cfg.sky else set())
    for g in groups:
        if g not in ours:
            problems.append(f"security group {g!r} is not one meshctl makes (it makes {', '.join(sorted(ours))}): "
                            "SkyPilot would create it and open SSH to the world")
    for region in regions:
        st = read_region(aws, cfg.name, region, zones=False)
        vpc = st.vpc_id()
        if vpc is None:
            problems.append(f"{region}: no VPC of mesh {cfg.name!r}: {fix}")
            continue
        if st.vpc_names.get(vpc) != vpc_name(cfg.name):
            problems.append(f"{region}: VPC {vpc} has no Name tag {vpc_name(cfg.name)!r}: {fix}")
        named = aws.call("ec2", region, "DescribeVpcs",
                         Filters=[{"Name": f"tag:{NAME_TAG}", "Values": [vpc_name(cfg.name)]}]).get("Vpcs", [])
        if len(named) > 1:
            problems.append(f"{region}: {len(named)} VPCs are named {vpc_name(cfg.name)!r} and SkyPilot refuses "
                            f"to choose: rename the ones that are not {vpc}")
        have = {g.name for g in st.groups_in(vpc)}
        for g in groups:
            if g in ours and g not in have and (g == group_name(cfg.name) or region == cfg.main_region):
                problems.append(f"{region}: security group {g} is missing: {fix}")
    for profile in _values(a.get("remote_identity")):
        if profile in SKY_IDENTITIES:
            continue
        try:
            aws.call("iam", IAM_REGION, "GetInstanceProfile", InstanceProfileName=profile)
        except AwsError as e:
            if e.aws_code != "NoSuchEntity":
                raise
            made = profile in documents(cfg.name)
            problems.append(f"instance profile {profile} does not exist: "
                            + (fix if made and cfg.sky else
                               f"meshctl makes {', '.join(sorted(documents(cfg.name)))} (with `sky: true`)"))
    if not cfg.ssh_cidrs:
        problems.append("ssh_cidrs is empty: SkyPilot cannot SSH into the VMs; add the address you run `sky` "
                        "from to ssh_cidrs in the infra config and run `meshctl infra apply`")
    return problems
