#!/bin/bash
# First boot of a mesh cluster instance, written by `meshctl cluster create`.
#   cluster @@CLUSTER@@  role @@ROLE@@  region @@REGION@@
# Installs the mesh, then starts the units from systemd/ through
# `meshctl install`. Secrets come from SSM Parameter Store with the
# instance role and never appear on a command line.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
CLUSTER='@@CLUSTER@@'
ROLE='@@ROLE@@'                      # coordinator | replica | agent
REGION='@@REGION@@'                  # this instance's region
MAIN_REGION='@@MAIN_REGION@@'        # where the coordinators and their secrets are
NODE_NAME='@@NODE_NAME@@'
HUB='@@HUB@@'                        # the node that relays for NAT'd ones
COORDINATOR='@@COORDINATOR@@'        # the stable address agents use, host:port
ETCD_CLUSTER='@@ETCD_CLUSTER@@'      # replicas only: r0=http://10.4.0.10:2380,...
ETCD_NAME='@@ETCD_NAME@@'
PRIVATE_IP='@@PRIVATE_IP@@'
PACKAGE='@@PACKAGE@@'

apt-get update -qq
apt-get install -y -qq --no-install-recommends python3-venv wireguard-tools wireguard-go nftables >/dev/null
[ "$ROLE" = replica ] && apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
[ -x /opt/mesh/bin/python ] || python3 -m venv /opt/mesh
/opt/mesh/bin/pip install -q --disable-pip-version-check "$PACKAGE" boto3
ln -sf /opt/mesh/bin/meshd /opt/mesh/bin/meshagent /opt/mesh/bin/meshctl /usr/local/bin/

param() {  # region, name -> value on stdout (bounded retries: the role may take a moment to apply)
  /opt/mesh/bin/python - "$1" "$2" <<'PY'
import sys, time, boto3
region, name = sys.argv[1:3]
ssm = boto3.client("ssm", region_name=region)
for attempt in range(30):
    try:
        print(ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"])
        break
    except Exception as e:
        if attempt == 29:
            sys.exit(f"cannot read {name} in {region}: {e}")
        time.sleep(10)
PY
}

install -d -m 0700 /etc/mesh
umask 077
if [ "$ROLE" = coordinator ] || [ "$ROLE" = replica ]; then
  install -d -m 0700 /var/lib/meshd
  param "$MAIN_REGION" "/mesh-clusters/$CLUSTER/coordinator/ca-key" > /var/lib/meshd/ca.key
  param "$MAIN_REGION" "/mesh/$CLUSTER/ca-cert" > /var/lib/meshd/ca.crt
  param "$MAIN_REGION" "/mesh/$CLUSTER/join-token" > /etc/mesh/bootstrap-token
  store=sqlite
  if [ "$ROLE" = replica ]; then
    cat > /etc/default/etcd <<EOF
ETCD_NAME=$ETCD_NAME
ETCD_DATA_DIR=/var/lib/etcd/$CLUSTER
ETCD_LISTEN_PEER_URLS=http://$PRIVATE_IP:2380
ETCD_LISTEN_CLIENT_URLS=http://$PRIVATE_IP:2379,http://127.0.0.1:2379
ETCD_INITIAL_ADVERTISE_PEER_URLS=http://$PRIVATE_IP:2380
ETCD_ADVERTISE_CLIENT_URLS=http://$PRIVATE_IP:2379
ETCD_INITIAL_CLUSTER=$ETCD_CLUSTER
ETCD_INITIAL_CLUSTER_STATE=new
ETCD_INITIAL_CLUSTER_TOKEN=mesh-$CLUSTER
EOF
    systemctl restart etcd
    store="etcd://$(echo "$ETCD_CLUSTER" | sed -E 's#[a-z0-9]+=http://([0-9.]+):2380#\1:2379#g')"
  fi
  meshctl install coordinator --listen 0.0.0.0:@@MESHD_PORT@@ --daemon-arg="--store=$store" \
    --daemon-arg=--bootstrap-token-file=/etc/mesh/bootstrap-token --daemon-arg="--advertise=$PRIVATE_IP" \
    --daemon-arg="--publish-join-token=ssm:$MAIN_REGION:/mesh/$CLUSTER/join-token" \
    --daemon-arg="--advertise=${COORDINATOR%:*}"
fi

MESH_JOIN_TOKEN=$(param "$MAIN_REGION" "/mesh/$CLUSTER/join-token") \
  meshctl install agent --coordinator "$COORDINATOR" --name "$NODE_NAME" --label "mesh.cluster=$CLUSTER" \
  --label "mesh.role=$ROLE" --daemon-arg=--wireguard=mesh0 --daemon-arg="--hub=$HUB"
