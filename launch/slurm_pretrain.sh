#!/usr/bin/env bash
# Multi-node MAE pretraining under SLURM: one task per GPU, DeepSpeed reads the rank layout from
# the environment set here (no ssh, no hostfile). Submit with:
#   sbatch --nodes 4 launch/slurm_pretrain.sh /data/openus46_shards runs/vitb_openus46
# The shard dir and the output dir must be on a filesystem every node sees (all ranks write into
# and read from the same checkpoint dirs). Resubmitting with another --nodes resumes from the
# latest checkpoint through DeepSpeed's universal checkpoint (README, Multi-node); keep
# --batch-size x ranks the same to keep the global batch.
#SBATCH --job-name=usf-mae-pretrain
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail
DATA=${1:?shard dir}; OUT=${2:?output dir}; CONFIG=${DS_CONFIG:-launch/ds.json}
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=${MASTER_PORT:-29500}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.venv/torch_extensions}
# srun starts one process per GPU; each maps SLURM's ids to the variables torch.distributed reads.
srun --kill-on-bad-exit=1 bash -c '
  export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID
  exec .venv/bin/python trainer/pretrain.py --deepspeed_config '"$CONFIG"' --data '"$DATA"' \
    --model mae_vit_base_patch16 --output-dir '"$OUT"' --epochs 800 --batch-size 256 --blr 1.5e-4 \
    --warmup-steps 2000 --workers 8 --log-every 50 --save-every 2000 --resume auto'
