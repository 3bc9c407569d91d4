#!/usr/bin/env bash
# Mesh setup on a SkyPilot VM, run by the task templates in this directory
# from the synced repository (the task's workdir):
#
#   bash sky/mesh-setup.sh package       install meshd, meshagent and meshctl into /opt/mesh
#   bash sky/mesh-setup.sh agent NAME    join the mesh as node NAME (a systemd service)
#   bash sky/mesh-setup.sh coordinator   main node: K3s server, meshd, its own agent, join parameters
#
# Join parameters: MESH_COORDINATOR and MESH_JOIN_TOKEN when set, else read
# from SSM Parameter Store in $MESH_REGION under /mesh/$MESH_NAME/ with the
# VM's instance profile (see sky/config.yaml). The token never appears on a
# command line: it travels in the environment.
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

ssm_get() {  # parameter name -> value on stdout
  "$PREFIX/bin/python" -c '
import sys, boto3
region, name = sys.argv[1:3]
print(boto3.client("ssm", region_name=region).get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"])
' "$MESH_REGION" "$SSM_PATH/$1"
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

agent() {
  local name=${1:-}
  is_name "$name" || die "invalid node name '$name': $NAME_RULE"
  local rank=${SKYPILOT_SETUP_NODE_RANK:-0}
  local node=$name
  [ "$rank" = 0 ] || node="$name-$rank"  # workers of a multi-node cluster
  is_name "$node" || die "invalid node name '$node': $NAME_RULE"
  local coordinator=${MESH_COORDINATOR:-}
  if [ -z "$coordinator" ]; then
    coordinator=$(ssm_get meshd-address) \
      || die "MESH_COORDINATOR is not set and $SSM_PATH/meshd-address could not be read from SSM in $MESH_REGION"
  fi
  local token=${MESH_JOIN_TOKEN:-}
  if [ -z "$token" ] && ! sudo find /var/lib/meshagent -mindepth 1 -print -quit 2>/dev/null | grep -q .; then
    token=$(ssm_get join-token) \
      || die "MESH_JOIN_TOKEN is not set and $SSM_PATH/join-token could not be read from SSM in $MESH_REGION"
  fi
  export MESH_JOIN_TOKEN=$token
  sudo --preserve-env=MESH_JOIN_TOKEN meshctl install agent --coordinator "$coordinator" \
    --name "$node" --label "sky.cluster=$name"
}

coordinator() {
  # On AWS the private VPC address is the node's mesh address.
  local addr
  addr=$(hostname -I | awk '{print $1}')
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
  sudo meshctl install coordinator --listen 0.0.0.0:7443 \
    --daemon-arg="--advertise=$addr" \
    --daemon-arg="--k3s-server-url=https://$addr:6443" \
    --daemon-arg=--k3s-token-file=/etc/mesh/k3s-agent-token "${extra[@]}"
  # One multi-use token for the fleet, refreshed on every setup run.
  local token
  # The label lets the nodes it admits fetch the K3s agent token (meshd refuses it to others).
  token=$(sudo meshctl token create --ttl "${MESH_TOKEN_TTL:-30d}" --uses 0 --label mesh.k3s=agent \
            --description "SkyPilot VMs" --output json | jq -er .secret)
  echo "$addr:7443" | ssm_put meshd-address String
  echo "$token" | ssm_put join-token SecureString
  MESH_COORDINATOR="$addr:7443" MESH_JOIN_TOKEN="$token" agent main
}

case "${1:-}" in
  package) package ;;
  agent) agent "${2:-}" ;;
  coordinator) coordinator ;;
  *) die "usage: bash sky/mesh-setup.sh package | agent NAME | coordinator" ;;
esac
