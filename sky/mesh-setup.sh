#!/usr/bin/env bash
# Mesh setup on a SkyPilot VM, run by the task templates in this directory
# from the synced repository (the task's workdir):
#
#   bash sky/mesh-setup.sh package       install meshd, meshagent and meshctl into /opt/mesh
#   bash sky/mesh-setup.sh agent NAME    join the mesh as node NAME (a systemd service, also a K3s agent)
#   bash sky/mesh-setup.sh coordinator   main node: K3s server, meshd (mirroring into K3s and publishing
#                                        the join token), its own agent, join parameters
#
# Join parameters: MESH_COORDINATOR and MESH_JOIN_TOKEN when set, else read
# from SSM Parameter Store in $MESH_REGION under /mesh/$MESH_NAME/ with the
# VM's instance profile (see sky/config.yaml): on AWS meshd's private address
# (meshd-address), elsewhere its public one (meshd-public-address). The token
# never appears on a command line: it travels in the environment.
#
# MESH_JOB (managed jobs, sky/model-server-job.yaml): the node is named
# NAME-<6 characters of this VM's machine id>, since the relaunched job's
# VM is a new node; the job's token binds it to the job (sky.job label).
set -euo pipefail

NAME_RULE="1-63 lowercase letters, digits or '-', starting and ending with a letter or digit (RFC 1123 label)"
die() { echo "error: $*" >&2; exit 2; }
is_name() { [[ "$1" =~ ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$ ]]; }

MESH_NAME=${MESH_NAME:-mesh}
MESH_REGION=${MESH_REGION:-us-east-1}
is_name "$MESH_NAME" || die "invalid MESH_NAME '$MESH_NAME': $NAME_RULE"
[[ "$MESH_REGION" =~ ^[a-z]{2}(-gov)?-[a-z]+-[0-9]+$ ]] || die "invalid MESH_REGION '$MESH_REGION': must be an AWS region such as us-east-1"
PREFIX=/opt/mesh
SSM_PATH="/mesh/$MESH_NAME"

ssm_get() {  # parameter name [seconds to wait for it to appear, polling every 2 s] -> value on stdout
  "$PREFIX/bin/python" -c '
import sys, time, boto3
region, name, wait = sys.argv[1], sys.argv[2], float(sys.argv[3])
ssm = boto3.client("ssm", region_name=region)
deadline = time.monotonic() + wait
while True:
    try:
        print(ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"])
        break
    except ssm.exceptions.ParameterNotFound:
        if time.monotonic() >= deadline:
            sys.exit(f"parameter {name} not found in {region}")
        time.sleep(2)
' "$MESH_REGION" "$SSM_PATH/$1" "${2:-0}"
}

ssm_put() {  # parameter name, type; the value comes on stdin
  "$PREFIX/bin/python" -c '
import sys, boto3
region, name, kind = sys.argv[1:4]
boto3.client("ssm", region_name=region).put_parameter(
    Name=name, Type=kind, Value=sys.stdin.read().strip(), Overwrite=True,
    Description="written by sky/main.yaml on the main node")
' "$MESH_REGION" "$SSM_PATH/$1" "$2"
}

package() {
  sudo apt-get update -qq
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    python3.11 python3.11-venv wireguard-tools jq curl >/dev/null
  [ -x "$PREFIX/bin/python" ] || sudo python3.11 -m venv "$PREFIX"
  # A copy of the synced repository (SkyPilot re-syncs the workdir on every
  # launch), installed in place so meshctl finds the units in systemd/; the
  # exact versions are the ones the project is tested with.
  sudo mkdir -p "$PREFIX/src"
  tar -c --exclude=.git --exclude='.venv*' --exclude=__pycache__ . | sudo tar -x -C "$PREFIX/src"
  sudo "$PREFIX/bin/pip" install -q --disable-pip-version-check -c "$PREFIX/src/requirements.lock" \
    -e "$PREFIX/src[aws]"
  sudo ln -sf "$PREFIX/bin/meshd" "$PREFIX/bin/meshagent" "$PREFIX/bin/meshctl" /usr/local/bin/
}

on_aws() {  # the cloud SkyPilot launched this VM on
  local cloud
  cloud=$(echo "${SKYPILOT_CLUSTER_INFO:-{\}}" | jq -r '.cloud // "aws"' | tr '[:upper:]' '[:lower:]')
  [ "$cloud" = aws ]
}

agent() {
  local name=${1:-}
  is_name "$name" || die "invalid node name '$name': $NAME_RULE"
  local rank=${SKYPILOT_SETUP_NODE_RANK:-0}
  local node=$name
  if [ -n "${MESH_JOB:-}" ]; then
    node="$name-$(head -c 6 /etc/machine-id)"  # a relaunched job is a new node under the same service name
  fi
  [ "$rank" = 0 ] || node="$node-$rank"  # workers of a multi-node cluster
  is_name "$node" || die "invalid node name '$node': $NAME_RULE"
  local coordinator=${MESH_COORDINATOR:-}
  local param=meshd-address
  on_aws || param=meshd-public-address  # outside AWS, the VPC address is out of reach
  if [ -z "$coordinator" ]; then
    coordinator=$(ssm_get "$param") \
      || die "MESH_COORDINATOR is not set and $SSM_PATH/$param could not be read from SSM in $MESH_REGION" \
             "(outside AWS pass --env MESH_COORDINATOR=<main node's public address>:7443 --secret MESH_JOIN_TOKEN)"
  fi
  local token=${MESH_JOIN_TOKEN:-}
  if [ -z "$token" ] && ! sudo find /var/lib/meshagent -mindepth 1 -print -quit 2>/dev/null | grep -q .; then
    # meshd on the main node publishes it (and replaces it before it expires); wait for its first one
    token=$(ssm_get join-token 120) \
      || die "MESH_JOIN_TOKEN is not set and $SSM_PATH/join-token could not be read from SSM in $MESH_REGION" \
             "within 120 s (meshd on the main node publishes it)"
  fi
  export MESH_JOIN_TOKEN=$token
  # --k3s: the node joins the main node's K3s as an agent, with the token meshd hands it over mTLS.
  local k3s=(--k3s)
  [ "${MESH_K3S:-1}" = 1 ] || k3s=()
  sudo --preserve-env=MESH_JOIN_TOKEN meshctl install agent --coordinator "$coordinator" \
    --name "$node" --label "sky.cluster=$name" "${k3s[@]}"
}

imds() {  # instance metadata path -> value (IMDSv2)
  local t
  t=$(curl -sf -m 3 -X PUT http://169.254.169.254/latest/api/token -H "X-aws-ec2-metadata-token-ttl-seconds: 60") || return 1
  curl -sf -m 3 -H "X-aws-ec2-metadata-token: $t" "http://169.254.169.254/latest/meta-data/$1"
}

refuse_second_main() {  # the mesh has one main node: refuse if another one answers
  local addr=$1 existing
  existing=$(ssm_get meshd-address 2>/dev/null) || return 0
  [ "${existing%:*}" != "$addr" ] || return 0
  if timeout 3 bash -c "exec 3<>/dev/tcp/${existing%:*}/7444" 2>/dev/null; then
    die "mesh '$MESH_NAME' already has a main node: meshd at $existing answers ($SSM_PATH/meshd-address);" \
        "take it down first (sky down <its cluster>) or launch with another MESH_NAME"
  fi
}

coordinator() {
  # On AWS the private VPC address is the node's mesh address: the one the instance metadata names
  # (the first address `hostname -I` lists may belong to another interface: Docker's, a second NIC).
  local addr public
  addr=$(imds local-ipv4) || addr=$(hostname -I | awk '{print $1}')
  refuse_second_main "$addr"
  # VMs on other clouds join over the main node's public address (the group mesh-<name>-main admits 7443-7444).
  public=$(imds public-ipv4) || public=""
  sudo install -d -m 0755 /etc/mesh
  # The K3s agent token lets a node register, nothing more; meshd hands it
  # to admitted nodes over mTLS. No kubeconfig leaves this node.
  sudo sh -c 'umask 077; [ -s /etc/mesh/k3s-agent-token ] || openssl rand -hex 32 > /etc/mesh/k3s-agent-token'
  if ! command -v k3s >/dev/null; then
    curl -sfL https://get.k3s.io | sudo INSTALL_K3S_VERSION="$K3S_VERSION" sh -s - server \
      --node-ip "$addr" --advertise-address "$addr" \
      --agent-token-file /etc/mesh/k3s-agent-token \
      --write-kubeconfig-mode 0600 --disable traefik
  fi
  # MESHD_ARGS: more meshd options, e.g. "--consul=http://127.0.0.1:8500" (words without spaces).
  local extra=()
  for arg in ${MESHD_ARGS:-}; do extra+=("--daemon-arg=$arg"); done
  # --kubernetes: every name becomes a Service + EndpointSlice in K3s (kubectl get svc shows the mesh).
  sudo meshctl install coordinator --listen 0.0.0.0:7443 \
    --daemon-arg="--advertise=$addr" \
    --daemon-arg=--kubernetes=/etc/rancher/k3s/k3s.yaml \
    --daemon-arg="--k3s-server-url=https://$addr:6443" \
    --daemon-arg=--k3s-token-file=/etc/mesh/k3s-agent-token \
    --daemon-arg="--publish-join-token=ssm:$MESH_REGION:$SSM_PATH/join-token" \
    --daemon-arg=--publish-join-token-label=mesh.k3s=agent "${extra[@]}"
  # The fleet's join token: meshd keeps a short-lived one (24 h, unlimited uses) in $SSM_PATH/join-token
  # with the instance role and replaces it before it expires; its label lets the nodes it admits fetch
  # the K3s agent token (meshd refuses it to others). This node's own agent joins with a one-use token.
  local token
  token=$(sudo meshctl token create --ttl 10m --uses 1 --description "the main node's agent" \
            --output json | jq -er .secret)
  echo "$addr:7443" | ssm_put meshd-address String
  if [ -n "$public" ]; then echo "$public:7443" | ssm_put meshd-public-address String; fi
  MESH_K3S=0 MESH_COORDINATOR="$addr:7443" MESH_JOIN_TOKEN="$token" agent main  # the K3s server is here
}

case "${1:-}" in
  package) package ;;
  agent) agent "${2:-}" ;;
  coordinator) coordinator ;;
  *) die "usage: bash sky/mesh-setup.sh package | agent NAME | coordinator" ;;
esac
