"""Run SkyPilot's own AWS provisioner against the network `meshctl infra apply` built.

Runs in .venv-sky (SkyPilot 0.14) with AWS_ENDPOINT_URL pointing at a moto
server, SKYPILOT_CONFIG at our sky/config.yaml. For each cluster given as
NAME=TEMPLATE it takes what SkyPilot itself decides from our config (the
security group and the instance profile by cluster-name pattern, the VPC
name, through `AWS.make_deploy_resources_variables` and the same
first-match rule `write_cluster_config` applies), builds the provider and
node config the way sky/templates/aws-ray.yml.j2 does, then calls
`sky.provision.aws.bootstrap_instances` and `run_instances`. Only the
catalog look-ups that need the network (instance type of an accelerator,
the AMI) are fixed here. Prints one JSON object on a line starting "probe-result: ": per cluster, what
SkyPilot launched, or the error SkyPilot raised.

    python sky_provision_probe.py REGION main=sky/main.yaml qwen-coder=sky/model-server.yaml
"""

from __future__ import annotations

import fnmatch
import json
import sys
import traceback

import boto3
import yaml
import sky
from sky import skypilot_config
from sky.clouds import aws as aws_cloud
from sky.provision import common
from sky.provision.aws import config as aws_config
from sky.provision.aws import instance as aws_instance
from sky.utils import common_utils, resources_utils, schemas

RESULT = "probe-result: "
# What the catalog would answer (it needs the network): an instance type per template.
INSTANCE_TYPES = {"L4": "g6.xlarge", None: "m6i.xlarge"}


def remote_identity(cluster: str) -> str:
    """The rule of sky.backends.backend_utils: the first pattern matching the cluster name."""
    conf = skypilot_config.get_effective_region_config(cloud="aws", region=None, keys=("remote_identity",),
                                                       default_value=None)
    if isinstance(conf, str):
        return conf
    for item in conf or []:
        pattern, value = next(iter(item.items()))
        if fnmatch.fnmatchcase(cluster, pattern):
            return value
    return schemas.get_default_remote_identity("aws")


def launch(region: str, cluster: str, template: str, image: str) -> dict:
    raw = yaml.safe_load(open(template))
    # required envs (null in the template) get a value, as `--env NAME=…` gives them
    task = sky.Task.from_yaml_config(raw, env_overrides=[(k, "probe") for k, v in (raw.get("envs") or {}).items()
                                                         if v is None])
    res = next(iter(task.resources))
    acc = next(iter(res.accelerators or {}), None)
    launchable = res.copy(cloud=aws_cloud.AWS(), instance_type=INSTANCE_TYPES[acc], accelerators=None,
                          cpus=None, memory=None, region=region, infra=None)
    cloud = aws_cloud.AWS()
    cloud.get_accelerators_from_instance_type = lambda t: {acc: 1} if acc else None
    cloud._get_image_id = lambda *a, **k: image
    cloud.get_image_root_device_name = lambda *a, **k: "/dev/sda1"
    zones = [z for z in boto3.client("ec2", region_name=region).describe_availability_zones()["AvailabilityZones"]]
    zone = sorted(z["ZoneName"] for z in zones)[0]
    v = cloud.make_deploy_resources_variables(
        launchable, resources_utils.ClusterName(cluster, cluster), sky.clouds.Region(region),
        [sky.clouds.Zone(zone)], num_nodes=1)
    identity = remote_identity(cluster)
    vpc_name = skypilot_config.get_effective_region_config(cloud="aws", region=region, keys=("vpc_name",),
                                                           default_value=None)
    node = {"InstanceType": v["instance_type"], "ImageId": v["image_id"],
            "BlockDeviceMappings": [{"DeviceName": v["root_device_name"],
                                     "Ebs": {"VolumeSize": int(res.disk_size), "VolumeType": "gp3"}}]}
    if identity not in ("LOCAL_CREDENTIALS", "SERVICE_ACCOUNT"):
        node["IamInstanceProfile"] = {"Name": identity}
    if v["use_spot"]:
        node["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {"SpotInstanceType": "one-time"}}
    provider = {"type": "external", "module": "sky.provision.aws", "region": region, "availability_zone": zone,
                "security_group": {"GroupName": v["security_group"],
                                   "ManagedBySkyPilot": v["security_group_managed_by_skypilot"] == "true"},
                "use_internal_ips": False, "max_efa_interfaces": v["max_efa_interfaces"], "enforce_tags": []}
    if vpc_name is not None:
        provider["vpc_name"] = vpc_name
    cfg = common.ProvisionConfig(provider_config=provider, authentication_config={"ssh_user": "ubuntu"},
                                 docker_config={}, node_config=node, count=1, tags={"mesh": "mesh"},
                                 resume_stopped_nodes=True, ports_to_open_on_launch=None)
    cfg = aws_config.bootstrap_instances(region, cluster, cfg)
    record = aws_instance.run_instances(region, cluster, cluster, cfg)
    ec2 = boto3.client("ec2", region_name=region)
    inst = ec2.describe_instances(InstanceIds=[record.head_instance_id])["Reservations"][0]["Instances"][0]
    return {"security_group": v["security_group"], "managed_by_skypilot": v["security_group_managed_by_skypilot"],
            "remote_identity": identity, "vpc_name": vpc_name,
            "instance": {"id": inst["InstanceId"], "vpc": inst["VpcId"], "subnet": inst["SubnetId"],
                         # SkyPilot gives the groups to the network interface it asks for
                         "groups": sorted({g["GroupId"] for g in inst.get("SecurityGroups", [])} |
                                          {g["GroupId"] for n in inst.get("NetworkInterfaces", [])
                                           for g in n.get("Groups", [])}),
                         "profile": inst.get("IamInstanceProfile", {}).get("Arn", ""),
                         "public_ip": inst.get("PublicIpAddress", "")}}


def main() -> None:
    region, pairs = sys.argv[1], sys.argv[2:]
    out: dict = {}
    try:
        common_utils.validate_schema(skypilot_config.to_dict(), schemas.get_config_schema(), "Invalid config: ")
        out["config"] = {"ok": True}
    except Exception as e:  # noqa: BLE001 -- reported, the test decides
        out["config"] = {"ok": False, "error": str(e)}
    image = boto3.client("ec2", region_name=region).describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    for pair in pairs:
        cluster, template = pair.split("=", 1)
        try:
            out[cluster] = {"ok": True, **launch(region, cluster, template, image)}
        except BaseException as e:  # noqa: BLE001 -- SkyPilot exits through SystemExit on some errors
            out[cluster] = {"ok": False, "error": f"{type(e).__name__}: {e}",
                            "trace": traceback.format_exc()[-2000:]}
    print(RESULT + json.dumps(out))  # SkyPilot logs on stdout too: the result is the marked line


if __name__ == "__main__":
    main()
