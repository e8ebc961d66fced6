#!/usr/bin/env bash
# The fast-serving bench on a GPU machine (issue 15): batched Relay against the plain FastAPI app,
# both with the model on the GPU (relay.serve.loader.serving_device). From the repository root of
# a machine with an NVIDIA GPU and a CUDA build of torch:
#   bash bench/gpu_check.sh [bench.serving options, e.g. --conns 1,8,32,64,128]
# Target: batched Relay (c) >= 5x the plain app (a) at 32 orders/request.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
test -x "$PY" || make setup
"$PY" - <<'PYEOF'
import torch

assert torch.cuda.is_available(), "torch sees no CUDA device (a CPU build of torch, or no GPU)"
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
PYEOF
# Three model applications (batched, unbatched, no idle wait) share the one GPU.
export RELAY_SERVING__MODEL_GPUS=${RELAY_SERVING__MODEL_GPUS:-0.25}
exec "$PY" -m bench.serving --ingress plain,haproxy,haproxy-nocache "$@"
