"""The training and evaluation steps of a fine-tune run (facebookresearch/mae
``engine_finetune.py``): optimizer and lr schedule, losses, one epoch of training, prediction and
the gathered evaluation, bf16 autocast, and the DDP wrapper.

Batches follow the fine-tune batch contract (design §2): ``{"image": (B, C, H, W) float32,
"label": (B,) int64}``, plus ``"index"`` (B,) int64 (the record's position) where a loader
carries it, so the gathered evaluation can restore record order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from finetune.config import FinetuneConfig
from finetune.dist import DistContext, sync_batchnorm
from finetune.models import ModelBundle
from trainer.param_groups import layer_decay_groups, weight_decay_groups
from trainer.precision import resolve_precision


def build_optimizer(bundle: ModelBundle, cfg: FinetuneConfig, device: torch.device | None = None
                    ) -> torch.optim.Optimizer:
    """AdamW (MAE fine-tune betas (0.9, 0.999)); layer-wise lr decay for a pretrained ViT being
    fine-tuned, plain decay/no-decay groups otherwise (from-scratch models and linear probes).
    The fused kernel on GPU, the multi-tensor one on CPU (torch's CPU default is per tensor)."""
    model = bundle.model
    if bundle.is_vit and bundle.pretrained and not cfg.linear_probe and cfg.layer_decay < 1.0:
        groups = layer_decay_groups(model, cfg.weight_decay, cfg.layer_decay)
    else:
        groups = weight_decay_groups(model, cfg.weight_decay)
    impl = {"fused": True} if device is not None and device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), **impl)


def lr_at(epoch_f: float, cfg: FinetuneConfig) -> float:
    """Learning rate at fractional epoch ``epoch_f``: linear warmup, then half-cosine to min_lr."""
    if epoch_f < cfg.warmup_epochs:
        return cfg.lr * epoch_f / cfg.warmup_epochs
    span = max(cfg.epochs - cfg.warmup_epochs, 1e-8)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * (epoch_f - cfg.warmup_epochs) / span))


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, class_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy against soft targets (smoothed one-hot or mixup mixtures).

    logits, target: (B, K); class_weight: (K,) or None. With weights, each class's term is
    scaled by its weight (class-balanced loss); the batch mean is unnormalised by weight sum."""
    logp = F.log_softmax(logits.float(), dim=-1)
    t = target if class_weight is None else target * class_weight
    return -(t * logp).sum(dim=-1).mean()


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """(B,) int64 -> (B, K) targets with ``smoothing`` spread uniformly (timm's convention)."""
    off = smoothing / num_classes
    t = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return t.scatter_(1, labels.unsqueeze(1), 1.0 - smoothing + off)


def _autocast(device: torch.device, precision: str):
    """bf16 autocast when ``precision`` (resolved, or ``auto`` resolved here) is bf16."""
    if precision == "auto":
        precision = resolve_precision("auto", device)[0]
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _set_train_mode(model: nn.Module) -> None:
    if hasattr(model, "probe_head"):
        model.eval()  # frozen encoder: no dropout / drop path, fixed norm statistics
        model.get_submodule(model.probe_head).train()  # the probe's BatchNorm tracks statistics
    else:
        model.train()


@dataclass
class EpochTotals:
    """Running sums of a training epoch on this rank (kept in checkpoints taken mid-epoch)."""

    loss_sum: float = 0.0
    seen: int = 0


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, cfg: FinetuneConfig, epoch: int,
                    device: torch.device, num_classes: int, mixup_fn=None, class_weight: torch.Tensor | None = None,
                    *, start_step: int = 0, totals: EpochTotals | None = None, ctx: DistContext | None = None,
                    after_step=None) -> dict:
    """One pass over ``loader`` (batches ``{"image": (B, C, H, W), "label": (B,)}``); lr set per step.

    model: the module to train (DDP-wrapped when there are several ranks; ``_set_train_mode``
    looks through the wrapper). start_step: steps of this epoch already done (a resumed loader
    yields the rest; the lr schedule continues from there). totals: the epoch's running loss sum,
    continued from a checkpoint. after_step(step_done, totals): called after every step (mid-epoch
    checkpoints). Returns ``{"loss", "lr", "steps"}``: the mean loss over all ranks' samples.
    The loss is accumulated on device and read once per epoch (no host sync per step)."""
    ctx = ctx or DistContext(device=device)
    _set_train_mode(getattr(model, "module", model))
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    n = max(len(loader), 1)
    totals = totals or EpochTotals()
    total = torch.zeros((), device=device)
    seen = 0
    lr = cfg.lr
    params = [p for g in optimizer.param_groups for p in g["params"]]
    i = start_step
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not (cfg.progress and ctx.is_main),
               initial=start_step, total=n)
    for i, batch in enumerate(bar, start=start_step):
        lr = lr_at(epoch + i / n, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        x = batch["image"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        if mixup_fn is not None and x.shape[0] % 2 == 0:  # timm's batch mixup pairs samples
            x, target = mixup_fn(x, y)
        else:
            target = smooth_one_hot(y, num_classes, cfg.label_smoothing)
        with _autocast(device, cfg.precision):
            logits = model(x)
        loss = soft_cross_entropy(logits, target, class_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP: gradients are averaged over the ranks here
        if cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        optimizer.step()
        total += loss.detach() * x.shape[0]
        seen += x.shape[0]
        if after_step is not None:
            after_step(i + 1, EpochTotals(totals.loss_sum + float(total), totals.seen + seen))
    loss_sum, count = ctx.sum([totals.loss_sum + float(total), float(totals.seen + seen)])
    mean_loss = loss_sum / max(count, 1.0)
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"training loss is {mean_loss} in epoch {epoch + 1}; lower --lr/--blr")
    return {"loss": mean_loss, "lr": lr, "steps": len(loader)}


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device, precision: str = "auto", progress: bool = False,
            num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """This rank's predictions over ``loader``: probabilities (N, K) float32, labels (N,) int64,
    the summed cross-entropy, and the record indices (N,) int64 the batches carried (0..N-1 when
    a loader carries none). ``num_classes`` shapes the empty result of a rank with no records."""
    model.eval()
    probs, labels, index = [], [], []
    loss_sum = torch.zeros((), device=device)
    for batch in tqdm(loader, desc="eval", leave=False, disable=not progress):
        x = batch["image"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        with _autocast(device, precision):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        probs.append(torch.softmax(logits, dim=-1).cpu())
        labels.append(y.cpu())
        index.append(batch["index"].cpu() if "index" in batch else None)
    if not probs:
        return np.zeros((0, num_classes or 0), np.float32), np.zeros(0, np.int64), 0.0, np.zeros(0, np.int64)
    y = torch.cat(labels).numpy()
    idx = torch.cat(index).numpy() if all(t is not None for t in index) else np.arange(len(y))
    return torch.cat(probs).numpy(), y, float(loss_sum), idx


def evaluate(model: nn.Module, loader, n_records: int, cfg: FinetuneConfig, device: torch.device, ctx: DistContext,
             num_classes: int, what: str) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Every rank predicts its share of a set of ``n_records``; rank 0 gets (probs (N, K), labels
    (N,), mean loss) in record order and checks that each record was predicted exactly once
    (other ranks get None). Runs the unwrapped model: no collective per batch, so ranks with
    uneven shares cannot hang."""
    probs, y, loss_sum, idx = predict(model, loader, device, cfg.precision, num_classes=num_classes)
    parts = ctx.gather((idx, probs, y, loss_sum))
    if parts is None:
        return None
    idx = np.concatenate([p[0] for p in parts])
    counts = np.bincount(idx, minlength=n_records) if len(idx) else np.zeros(n_records, np.int64)
    if len(counts) != n_records or not np.all(counts == 1):
        bad = np.flatnonzero(counts != 1)[:8].tolist()
        raise RuntimeError(f"{what}: {len(idx)} predictions over {ctx.world_size} rank(s) for {n_records} records; "
                           f"records {bad} were not predicted exactly once")
    order = np.argsort(idx, kind="stable")
    probs = np.concatenate([p[1] for p in parts])[order]
    y = np.concatenate([p[2] for p in parts])[order]
    return probs, y, sum(p[3] for p in parts) / max(n_records, 1)


def wrap_ddp(model: nn.Module, cfg: FinetuneConfig, ctx: DistContext) -> nn.Module:
    """The module the training step calls: ``model`` itself on one rank, DDP around it on several
    (parameters and buffers broadcast from rank 0 at construction, gradients all-reduced in
    buckets overlapping backward). The linear probe's BatchNorm is synchronised over the ranks
    (SyncBatchNorm on GPUs; on CPU, where torch has none, an all-reduce BatchNorm1d), so its
    statistics are those of the global batch, as on one rank. (Fine-tuned baselines with
    BatchNorm, e.g. ResNet-50, keep per-rank statistics, as torch DDP does by default.)"""
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    if cfg.linear_probe:
        sync_batchnorm(model.get_submodule(model.probe_head), ctx.device)
    return DDP(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
               gradient_as_bucket_view=True)
