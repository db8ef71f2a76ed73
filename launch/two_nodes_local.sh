#!/usr/bin/env bash
# Two nodes on one machine: two torchrun launchers, one per "node", meeting at a static rendezvous
# on localhost (gloo on CPU, NCCL on GPUs). It is what a real two-node job runs, without a second
# host: on real nodes start the NODE=0 line on the first node and NODE=1 on the second, with
# --master-addr set to the first node's address. Both need the shard dir and OUT on a shared
# filesystem (README, Multi-node).
#   launch/two_nodes_local.sh SHARDS OUT [pretrain.py args ...]      (--resume auto is always on)
#   env: NPROC_PER_NODE (1), MASTER_PORT (29555), PYTHON (.venv/bin/python), DS_CONFIG (launch/ds.json)
set -euo pipefail
DATA=${1:?shard dir}; OUT=${2:?output dir}; shift 2
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
for NODE in 0 1; do
  "$PY" -m torch.distributed.run --nnodes 2 --node-rank "$NODE" --nproc-per-node "${NPROC_PER_NODE:-1}" \
    --master-addr 127.0.0.1 --master-port "${MASTER_PORT:-29555}" \
    trainer/pretrain.py --deepspeed_config "${DS_CONFIG:-launch/ds.json}" --data "$DATA" --output-dir "$OUT" \
    --resume auto "$@" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit "$rc"
