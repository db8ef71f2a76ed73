"""The DeepSpeed side of pretraining, built one way for ``trainer/pretrain.py`` and the train
benchmark (``benchmarks/throughput.py``): the JSON config (``launch/ds.json``) filled in for the
run, and the engine around the optimizer kernel ``trainer.kernels`` picks.

DeepSpeed owns ZeRO, gradient all-reduce, bf16, clipping, the lr schedule and checkpoints; the
JSON's ``optimizer`` section only supplies betas, eps and weight decay (the kernel is ours).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from trainer.config import TrainConfig
from trainer.kernels import make_optimizer, tune_ds_config_for_cpu
from trainer.param_groups import weight_decay_groups


def read_ds_json(path: str | Path) -> dict:
    """The DeepSpeed JSON as written (read once per run: the micro-batch sizes the loader before
    :func:`build_ds_config` fills in the rest)."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (a DeepSpeed config): {e}") from e


def micro_batch(cfg: TrainConfig, ds_json: dict) -> int:
    """Images per rank per step: ``--batch-size``, else the JSON's ``train_micro_batch_size_per_gpu``."""
    return cfg.batch_size or ds_json["train_micro_batch_size_per_gpu"]


def build_ds_config(cfg: TrainConfig, ds_json: dict, world: int, total_steps: int) -> tuple[dict, float]:
    """A copy of ``ds_json`` with what depends on the run filled in (micro batch, precision, ZeRO
    stage, schedule length, TensorBoard); returns (config, peak lr = blr x effective batch / 256
    unless ``--lr`` sets it)."""
    ds = copy.deepcopy(ds_json)
    ds["train_micro_batch_size_per_gpu"] = micro_batch(cfg, ds)
    ds.pop("train_batch_size", None)
    ds["bf16"] = {"enabled": cfg.precision == "bf16"}
    ds.pop("fp16", None)
    if cfg.zero_stage is not None:
        ds.setdefault("zero_optimization", {})["stage"] = cfg.zero_stage
    eff = ds["train_micro_batch_size_per_gpu"] * ds.get("gradient_accumulation_steps", 1) * world
    lr = cfg.lr if cfg.lr is not None else cfg.blr * eff / 256
    sch = ds.get("scheduler", {}).get("params", {})
    if sch:
        sch["total_num_steps"] = max(total_steps, 1)
        warm = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, int(0.05 * total_steps))
        sch["warmup_num_steps"] = min(warm, max(total_steps - 1, 0))
    if cfg.tensorboard:
        try:
            import tensorboard  # noqa: F401

            ds["tensorboard"] = {"enabled": True, "output_path": str(Path(cfg.output_dir) / "tb"),
                                 "job_name": "pretrain"}
        except ImportError:
            pass
    return ds, lr


def build_engine(model: nn.Module, ds_config: dict, lr: float, device: torch.device, fused: bool = True,
                 weight_decay: float | None = None):
    """-> (DeepSpeed engine, its lr scheduler or None, description of the optimizer kernel).

    ``ds_config`` is changed in place: on CPU, settings that only cost time there are switched off
    (``tune_ds_config_for_cpu``), and its ``optimizer`` section is taken out (DeepSpeed would build
    its own optimizer from it). ``weight_decay`` None: the JSON's (0.05 without one)."""
    import deepspeed

    if device.type == "cpu":
        tune_ds_config_for_cpu(ds_config)
    op = ds_config.pop("optimizer", {}).get("params", {})
    wd = weight_decay if weight_decay is not None else op.get("weight_decay", 0.05)
    optimizer, kernel = make_optimizer(weight_decay_groups(model, wd), lr=lr, betas=tuple(op.get("betas", (0.9, 0.95))),
                                       eps=op.get("eps", 1e-8), weight_decay=wd, fused=fused)
    engine, _, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config,
                                                   model_parameters=None)
    return engine, scheduler, kernel
