"""Trainer configuration as a :mod:`runconfig` dataclass: the command line is generated from its
fields (``--config run.yaml`` replays a saved run), and the resolved config is saved with every
run (``config.json``, ``config.yaml``) and checkpoint."""
from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Literal

from runconfig import add_arguments, config, parse
from trainer.kernels import ATTENTION
from trainer.precision import PRECISIONS


@config
class TrainConfig:
    data: str = ""  # shard dir (with manifest.json)
    model: str = "mae_vit_base_patch16"
    output_dir: str = "runs/pretrain"
    deepspeed_config: str = "launch/ds.json"
    epochs: int = 1
    max_steps: int | None = None  # stops early (and sizes the schedule) when set
    batch_size: int | None = None  # per rank; default from the DeepSpeed config
    blr: float = 1.5e-4  # lr = blr * effective batch / 256 (MAE)
    lr: float | None = None  # absolute lr, overrides blr
    warmup_steps: int | None = None  # default: 5% of the run (MAE: 40 of 800 epochs)
    weight_decay: float | None = None  # default from the DeepSpeed config (0.05)
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False
    img_size: int = 224
    in_chans: int = 1
    loader: Literal["dali", "torch", "fixed"] = "dali"  # dali_pipes.build_pretrain_loader kinds
    data_device: Literal["cpu", "gpu", "auto"] = "auto"  # DALI decode device
    workers: int | None = None  # DALI threads / DataLoader workers per rank; default: cores per local rank
    threads: int | None = None  # torch intra-op threads per rank; default: cores per local rank
    seed: int = 0
    precision: Literal[PRECISIONS] = "auto"  # auto: bf16 where the device runs it natively, else fp32
    zero_stage: Literal[0, 1, 2, 3] | None = None  # overrides the DeepSpeed config's stage
    log_every: int = 10
    save_every: int = 0  # steps; 0: only at the end
    keep_last: int = 2
    resume: str | None = None  # "auto": latest checkpoint in output_dir
    init: str | None = None  # facebookresearch/mae checkpoint (.pth, loaded weights_only)
    fused: bool = True  # fused optimizer + SDPA; --no-fused is the benchmark baseline
    attention: Literal[ATTENTION] = "auto"  # auto (SDPA on CUDA, eager on CPU: measured faster there)
    compile: bool = False  # torch.compile the model
    grad_checkpointing: bool = False
    max_nonfinite: int = 5  # abort after this many non-finite losses in a row
    peak_tflops: float | None = None  # MFU denominator override
    tensorboard: bool = True
    recon_every_epoch: bool = True  # a grid every epoch (at most ~10 per run) and at the end
    local_rank: int = -1  # set by the deepspeed launcher


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="MAE pretraining under DeepSpeed")
    # the deepspeed launcher passes --local_rank=N, --deepspeed and --deepspeed_config (underscores)
    add_arguments(p, TrainConfig, flags={
        "local_rank": {"names": ["--local-rank", "--local_rank"]},
        "deepspeed_config": {"names": ["--deepspeed-config", "--deepspeed_config"]}})
    p.add_argument("--deepspeed", action="store_true", help=argparse.SUPPRESS)
    return p


def parse_args(argv=None) -> TrainConfig:
    """The command line (``--config FILE`` and flags) -> TrainConfig; raises runconfig.ConfigError."""
    return parse(build_parser(), TrainConfig, argv)[0]


def to_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)
