#!/usr/bin/env bash
# Serve Qwen2.5-Coder on the mesh as "qwen-coder":
#   ./sky/run-qwen-coder.sh [extra sky launch options, e.g. --use-spot]
# Clients reach it at http://qwen-coder.default.svc.cluster.local:8000/v1.
set -euo pipefail
cd "$(dirname "$0")/.."   # the repository is the task's workdir
exec sky launch -c qwen-coder sky/model-server.yaml \
  --env MODEL=Qwen/Qwen2.5-Coder-32B-Instruct --gpus L4:4 "$@"
