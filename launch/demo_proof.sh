#!/usr/bin/env bash
# Proof stage of `make demo` (launch/demo.sh stage 6): does our MAE pretraining help on the
# held-out phantom lesion task? Linear probe and fine-tune, random init vs pretrained, one table.
#   OUT=runs/demo bash launch/demo_proof.sh
# needs $OUT/shards (built with --holdout lesions_holdout), $OUT/raw/lesions_holdout/labels.csv,
# $OUT/export; writes $OUT/proof.json and $OUT/proof/<method>_<init>/ (the runner's reports).
set -euo pipefail
: "${OUT:?set OUT to the demo output dir}"
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -f launch/demo.env ] && source launch/demo.env
RECON=$(ls "$OUT"/pretrain/recon_epoch*.png 2>/dev/null | tail -1 || true)
# shellcheck disable=SC2086  # PROOF_ARGS is a list of flags
$PY -m finetune.proof --labels "$OUT/raw/lesions_holdout/labels.csv" --export "$OUT/export" \
  --output-dir "$OUT" --shards "$OUT/shards" --holdout-name lesions_holdout \
  ${RECON:+--recon "$RECON"} ${PROOF_ARGS:-}
