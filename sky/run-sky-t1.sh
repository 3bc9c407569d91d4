#!/usr/bin/env bash
# Serve NovaSky's Sky-T1 on the mesh as "sky-t1":
#   ./sky/run-sky-t1.sh [extra sky launch options, e.g. --use-spot]
# Clients reach it at http://sky-t1.default.svc.cluster.local:8000/v1.
set -euo pipefail
cd "$(dirname "$0")/.."   # the repository is the task's workdir
exec sky launch -c sky-t1 sky/model-server.yaml \
  --env MODEL=NovaSky-AI/Sky-T1-32B-Preview --gpus L4:4 "$@"
