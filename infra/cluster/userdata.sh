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
ETCD_CLUSTER='@@ETCD_CLUSTER@@'      # replicas only: r0=https://10.4.0.10:2380,...
ETCD_NAME='@@ETCD_NAME@@'
PRIVATE_IP='@@PRIVATE_IP@@'
PACKAGE='@@PACKAGE@@'
AWAIT_IMPORT='@@AWAIT_IMPORT@@'      # 1: launched by a profile switch; meshd serves once the store is copied in

apt-get update -qq
apt-get install -y -qq --no-install-recommends python3-venv wireguard-tools wireguard-go nftables curl >/dev/null
[ "$ROLE" = replica ] && apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
if [ "$ROLE" = coordinator ] || [ "$ROLE" = replica ]; then
  # SSM Run Command carries a profile switch's steps (stop meshd, copy the store, serve it)
  if ! systemctl list-unit-files amazon-ssm-agent.service >/dev/null 2>&1; then
    curl -fsSL -o /tmp/amazon-ssm-agent.deb \
      "https://s3.$REGION.amazonaws.com/amazon-ssm-$REGION/latest/debian_amd64/amazon-ssm-agent.deb"
    dpkg -i /tmp/amazon-ssm-agent.deb >/dev/null && rm -f /tmp/amazon-ssm-agent.deb
  fi
  systemctl enable --now amazon-ssm-agent
fi
[ -x /opt/mesh/bin/python ] || python3 -m venv /opt/mesh
/opt/mesh/bin/pip install -q --disable-pip-version-check boto3
case "$PACKAGE" in
  s3://*)  # the wheel `cluster create` uploaded: readable by this cluster's instance role only
    install -d -m 0700 /var/cache/mesh
    wheel="/var/cache/mesh/${PACKAGE##*/}"
    /opt/mesh/bin/python - "$MAIN_REGION" "$PACKAGE" "$wheel" <<'PY'
import sys, time, boto3
region, url, dest = sys.argv[1:4]
bucket, _, key = url[len("s3://"):].partition("/")
for attempt in range(30):
    try:
        boto3.client("s3", region_name=region).download_file(bucket, key, dest)
        break
    except Exception as e:
        if attempt == 29:
            sys.exit(f"cannot fetch {url}: {e}")
        time.sleep(10)
PY
    PACKAGE="$wheel" ;;
esac
/opt/mesh/bin/pip install -q --disable-pip-version-check "$PACKAGE"
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
  etcd_tls=''
  if [ "$ROLE" = replica ]; then
    # etcd listens on this replica's address only, speaks TLS only and wants a client certificate from
    # the cluster's store CA, for clients (meshd) and peers alike; the mesh CA, which signed every
    # node's certificate, opens nothing here. The store CA's key is read from SSM, used once and removed.
    param "$MAIN_REGION" "/mesh-clusters/$CLUSTER/coordinator/store-ca-key" > /run/store-ca.key
    param "$MAIN_REGION" "/mesh-clusters/$CLUSTER/coordinator/store-ca-cert" > /run/store-ca.crt
    meshctl install store-certs --ca-key /run/store-ca.key --ca-cert /run/store-ca.crt --name "$ETCD_NAME" \
      --address "$PRIVATE_IP" --etcd-dir /var/lib/etcd/tls --meshd-dir /var/lib/meshd/etcd
    rm -f /run/store-ca.key /run/store-ca.crt
    cat > /etc/default/etcd <<EOF
ETCD_NAME=$ETCD_NAME
ETCD_DATA_DIR=/var/lib/etcd/$CLUSTER
ETCD_LISTEN_PEER_URLS=https://$PRIVATE_IP:2380
ETCD_LISTEN_CLIENT_URLS=https://$PRIVATE_IP:2379
ETCD_INITIAL_ADVERTISE_PEER_URLS=https://$PRIVATE_IP:2380
ETCD_ADVERTISE_CLIENT_URLS=https://$PRIVATE_IP:2379
ETCD_INITIAL_CLUSTER=$ETCD_CLUSTER
ETCD_INITIAL_CLUSTER_STATE=new
ETCD_INITIAL_CLUSTER_TOKEN=mesh-$CLUSTER
ETCD_CERT_FILE=/var/lib/etcd/tls/member.crt
ETCD_KEY_FILE=/var/lib/etcd/tls/member.key
ETCD_TRUSTED_CA_FILE=/var/lib/etcd/tls/ca.crt
ETCD_CLIENT_CERT_AUTH=true
ETCD_PEER_CERT_FILE=/var/lib/etcd/tls/member.crt
ETCD_PEER_KEY_FILE=/var/lib/etcd/tls/member.key
ETCD_PEER_TRUSTED_CA_FILE=/var/lib/etcd/tls/ca.crt
ETCD_PEER_CLIENT_CERT_AUTH=true
EOF
    systemctl restart etcd
    store="etcds://$(echo "$ETCD_CLUSTER" | sed -E 's#[a-z0-9]+=https://([0-9.]+):2380#\1:2379#g')"
    etcd_tls="--daemon-arg=--etcd-ca=/var/lib/meshd/etcd/ca.crt --daemon-arg=--etcd-cert=/var/lib/meshd/etcd/client.crt"
    etcd_tls="$etcd_tls --daemon-arg=--etcd-key=/var/lib/meshd/etcd/client.key"
  fi
  await=()
  [ "$AWAIT_IMPORT" = 1 ] && await=(--daemon-arg=--await-import)
  # $etcd_tls unquoted on purpose: three words (or none), without spaces
  meshctl install coordinator --listen 0.0.0.0:@@MESHD_PORT@@ --daemon-arg="--store=$store" $etcd_tls "${await[@]}" \
    --daemon-arg=--bootstrap-token-file=/etc/mesh/bootstrap-token --daemon-arg="--advertise=$PRIVATE_IP" \
    --daemon-arg="--publish-join-token=ssm:$MAIN_REGION:/mesh/$CLUSTER/join-token" \
    --daemon-arg="--advertise=${COORDINATOR%:*}"
fi

MESH_JOIN_TOKEN=$(param "$MAIN_REGION" "/mesh/$CLUSTER/join-token") \
  meshctl install agent --coordinator "$COORDINATOR" --name "$NODE_NAME" --label "mesh.cluster=$CLUSTER" \
  --label "mesh.role=$ROLE" --daemon-arg=--wireguard=mesh0 --daemon-arg="--hub=$HUB"
