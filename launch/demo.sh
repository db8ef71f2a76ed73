#!/usr/bin/env bash
# `make demo`: the whole flow on the built-in phantom corpus, on CPU (or a GPU if present).
#   raw phantom corpus -> usf-shard build/verify/preview -> deepspeed MAE pretraining -> export
#   -> throughput benchmark -> proof that pretraining helps (linear probe + fine-tune vs random init)
set -euo pipefail
OUT=${1:-runs/demo}
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export PATH="$PWD/.venv/bin:$PATH"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.venv/torch_extensions}"
if ! $PY -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  export DS_ACCELERATOR=cpu
fi
# demo sizes (the proof stage may tune them in launch/demo.env)
MODEL=mae_vit_demo_patch16; IMG_SIZE=128; PRETRAIN_STEPS=1200; BATCH=16; BLR=8e-3; WARMUP=100
CORPUS_SCALE=3; N_PATIENTS=40; PER_PATIENT=6; TASK_SMALL_P=0.3; TASK_SIZE_SCALE=1.0; TASK_CONSPICUITY=0.0
[ -f launch/demo.env ] && source launch/demo.env
t0=$(date +%s)
stage() { echo; echo "=== [$(( $(date +%s) - t0 ))s] $*"; }

rm -rf "$OUT"; mkdir -p "$OUT"
stage "1/6 phantom corpus (pretraining datasets + a held-out labelled lesion task)"
usf-shard -q demo "$OUT/raw" --scale "$CORPUS_SCALE" --downstream lesions_holdout --patients "$N_PATIENTS" \
  --per-patient "$PER_PATIENT" --task-small-p "$TASK_SMALL_P" --task-size-scale "$TASK_SIZE_SCALE" \
  --task-conspicuity "$TASK_CONSPICUITY"

stage "2/6 usf-shard build (lesions_holdout kept out of pretraining), verify, stats, preview"
# --text-policy off: the phantom burns typed labels into its scan regions on purpose; real data keeps
# the default (reject: frames the offline OCR reads text in are dropped, counted as text_found)
usf-shard build "$OUT/raw" --out "$OUT/shards" --workers 2 --holdout lesions_holdout --text-policy off
usf-shard -q verify "$OUT/shards"
usf-shard stats "$OUT/shards"
usf-shard preview "$OUT/shards" --out "$OUT/preview.png" -n 48

stage "3/6 MAE pretraining: deepspeed trainer/pretrain.py --deepspeed_config launch/ds.json (--precision auto)"
deepspeed --num_gpus 1 trainer/pretrain.py --deepspeed_config launch/ds.json --data "$OUT/shards" \
  --model "$MODEL" --img-size "$IMG_SIZE" --output-dir "$OUT/pretrain" --max-steps "$PRETRAIN_STEPS" \
  --batch-size "$BATCH" --blr "$BLR" --warmup-steps "$WARMUP" --log-every 100 --save-every 600 \
  ${PRETRAIN_EXTRA:-}

stage "4/6 export the encoder for plain timm"
$PY -m trainer.export "$OUT/pretrain" "$OUT/export"

stage "5/6 throughput benchmark (quick): loader and train step beside their baselines"
# (the contention figure, two more trainer runs, is in the full `make bench`)
$PY benchmarks/throughput.py loader train --quick --no-contention --json "$OUT/throughput.json"

stage "6/6 proof: does pretraining help on the held-out lesion task?"
if [ -f launch/demo_proof.sh ]; then
  OUT="$OUT" bash launch/demo_proof.sh
else
  $PY -m finetune.proof --labels "$OUT/raw/lesions_holdout/labels.csv" --export "$OUT/export" --output-dir "$OUT"
fi
echo
echo "reconstruction grids: $(ls "$OUT"/pretrain/recon_epoch*.png | tail -1)"
echo "contact sheet: $OUT/preview.png   metrics: $OUT/pretrain/metrics.jsonl   proof: $OUT/proof.json"
stage "demo finished"
