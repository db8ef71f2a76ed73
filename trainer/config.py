"""Trainer configuration as a dataclass; the command line is generated from its fields, and the
resolved config is saved with every run and checkpoint."""
from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, fields


@dataclass
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
    loader: str = "dali"  # dali | torch
    data_device: str = "auto"  # cpu | gpu | auto (DALI decode device)
    workers: int | None = None  # DALI threads / DataLoader workers per rank; default: cores per local rank
    threads: int | None = None  # torch intra-op threads per rank; default: cores per local rank
    seed: int = 0
    precision: str = "auto"  # auto (bf16 where the device runs it natively, else fp32) | bf16 | fp32
    zero_stage: int | None = None  # overrides the DeepSpeed config's stage
    log_every: int = 10
    save_every: int = 0  # steps; 0: only at the end
    keep_last: int = 2
    resume: str | None = None  # "auto": latest checkpoint in output_dir
    init: str | None = None  # facebookresearch/mae checkpoint (.pth, loaded weights_only)
    fused: bool = True  # fused optimizer + SDPA; --no-fused is the benchmark baseline
    attention: str = "auto"  # auto (SDPA on CUDA, eager on CPU: measured faster there) | sdpa | eager
    compile: bool = False  # torch.compile the model
    grad_checkpointing: bool = False
    max_nonfinite: int = 5  # abort after this many non-finite losses in a row
    peak_tflops: float | None = None  # MFU denominator override
    tensorboard: bool = True
    recon_every_epoch: bool = True  # a grid every epoch (at most ~10 per run) and at the end
    local_rank: int = -1  # set by the deepspeed launcher


def parse_args(argv=None) -> TrainConfig:
    p = argparse.ArgumentParser(description="MAE pretraining under DeepSpeed")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = None if f.default is MISSING else f.default
        if f.type in ("bool", bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default)
        else:
            typ = {"int": int, "float": float, "str": str}.get(str(f.type).split(" ")[0], str)
            p.add_argument(flag, dest=f.name, type=typ, default=default)
    p.add_argument("--local_rank", dest="local_rank", type=int, default=-1)  # launcher spelling
    p.add_argument("--deepspeed", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--deepspeed_config", dest="deepspeed_config", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    d = {f.name: getattr(a, f.name) for f in fields(TrainConfig)}
    if a.deepspeed_config:
        d["deepspeed_config"] = a.deepspeed_config
    return TrainConfig(**d)


def to_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)
