"""Fine-tune (or linear-probe) an encoder on a downstream ultrasound task and score it the way
the paper does.

    python -m finetune --task busbra --data-root ~/data/BUSBRA --init runs/export \\
        --output-dir runs/ft/busbra [--cv] [--linear-probe] [--model resnet50] ...

writes ``OUTPUT_DIR/results.json`` (accuracy, macro precision/recall/F1, AUC, per-class table,
confusion matrix, the paper's figure), ``results.md``, ``confusion.png``, ``roc.png``,
``config.json`` (the resolved config) and ``log.jsonl`` (one record per epoch). With ``--cv``
each fold/split runs in ``OUTPUT_DIR/<split>/`` and the top level holds the mean ± std.

Recipe (facebookresearch/mae ``main_finetune.py`` / ``engine_finetune.py``): AdamW with
lr = blr x batch / 256, layer-wise lr decay for a pretrained ViT, drop path, per-step linear
warmup then half-cosine decay, label smoothing, optional mixup/cutmix (timm), optional
class-balanced loss or sampling, bf16 autocast on GPU, model selection on a validation split
carved from train by patient group, fixed seeds. The encoder is built with ``global_pool="avg"``
(mean of patch tokens -> ``fc_norm`` -> head) and the head starts at trunc_normal(std=2e-5).

Python use: :func:`run_finetune` (a :class:`FinetuneConfig` -> the results dict), and
:func:`finetune` / :func:`linear_probe` on in-memory ``(image array, label, group)`` records.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import random
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed, trunc_normal_
from torch import nn
from tqdm.auto import tqdm

from finetune import metrics as M
from finetune.config import (DEFAULT_ARCH, ENCODER, FT_BLR, PROBE_BLR, FinetuneConfig, build_parser,  # noqa: F401
                             config_from_args)
from finetune.tasks import TASKS, DatasetFormatError, Record, Split, TaskData, group_split, load_task
from finetune.checkpoint import FinetuneCheckpoints, rng_state, set_rng_state
from dali_pipes.finetune_torch import (
    GRAY_MEAN,
    GRAY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TransformConfig,
    build_finetune_loader,
    channel_stats,
    dali_module,
    class_balanced_weights,
)
from finetune.dist import DistContext, dist_context, is_main_process, shutdown, sync_batchnorm
from trainer.param_groups import layer_decay_groups, weight_decay_groups
from trainer.precision import resolve_precision
from trainer.weights import DECODER_PREFIXES, Norm, load_into_vit, read_state_dict, read_weights

log = logging.getLogger("finetune.runner")

# ============================================================================ models

@dataclass
class ModelBundle:
    """A built classifier and the facts the data side and the optimizer need."""

    model: nn.Module
    name: str  # human-readable, e.g. "encoder vit_base_patch16_224 (export runs/x)"
    pretrained: bool  # starts from pretrained weights (layer decay applies to ViTs)
    is_vit: bool
    img_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    info: dict = field(default_factory=dict)


def read_encoder_config(export_dir: str | Path) -> dict:
    """The encoder config (timm name, shape, mean/std) of an export or any weights
    ``trainer.weights`` reads; a ``ValueError`` names the file when it cannot."""
    return read_weights(export_dir).encoder_config()


def resolve_init(init: str | Path, work_dir: str | Path | None = None) -> Path:
    """What ``trainer.weights.read_weights`` reads for ``init``: a weights file (the USF-MAE release,
    a facebookresearch/mae or timm file, an export's ``model.safetensors``), an export dir, or a
    training checkpoint dir exported on the fly with ``trainer.export.export_from_checkpoint``."""
    p = Path(init).expanduser()
    if p.is_file():
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"--init {p}: no such weights file, export or checkpoint directory")
    if (p / "config.json").is_file():
        return p
    try:
        from trainer.export import export_from_checkpoint
    except ImportError as e:
        raise RuntimeError(f"--init {p} has no config.json, so it is taken as a training checkpoint, but "
                           f"trainer.export.export_from_checkpoint is unavailable ({e}). Export it first with "
                           "`python -m trainer.export CHECKPOINT_DIR OUT_DIR` and pass OUT_DIR.") from e
    out = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="usf_export_"))
    out = out / "init_export"
    log.info("exporting checkpoint %s -> %s", p, out)
    return Path(export_from_checkpoint(p, out))


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from safetensors or a torch file loaded with ``weights_only=True`` (never unpickled
    objects); unwraps ``{"model": ...}``/``{"state_dict": ...}`` and strips ``module.`` prefixes."""
    return read_state_dict(path)


def _adapt_state_dict(model: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fit pretrained tensors to the model: resample ``pos_embed`` to another grid (img_size or
    patch grid change) and convert the first conv between 1 and 3 input channels."""
    sd = dict(sd)
    own = model.state_dict()
    if "pos_embed" in sd and "pos_embed" in own and sd["pos_embed"].shape != own["pos_embed"].shape:
        npt = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
        grid = model.patch_embed.grid_size
        sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], new_size=list(grid), num_prefix_tokens=npt)
    first = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    key = f"{first}.weight" if first else None
    if key and key in sd and key in own and sd[key].shape[1] != own[key].shape[1]:
        sd[key] = convert_input_channels(sd[key], own[key].shape[1])
    return sd


def convert_input_channels(w: torch.Tensor, in_chans: int) -> torch.Tensor:
    """First-conv weight (O, I, kh, kw) for ``in_chans`` inputs such that a gray image replicated
    to all channels gives the same response: sum RGB filters into one gray filter, or spread one
    gray filter evenly over the channels."""
    if in_chans == 1:
        return w.sum(dim=1, keepdim=True)
    if w.shape[1] == 1:
        return w.repeat(1, in_chans, 1, 1) / in_chans
    raise ValueError(f"cannot convert a {w.shape[1]}-channel input conv to {in_chans} channels")


def _create_vit(timm_name: str, num_classes: int, **kw) -> nn.Module:
    return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **kw)


def load_encoder(init: str | Path | None, num_classes: int, *, drop_path: float = 0.1, img_size: int | None = None,
                 in_chans: int | None = None, global_pool: str = "avg", arch: str | None = None,
                 work_dir: str | Path | None = None, head_init_std: float = 2e-5) -> tuple[nn.Module, dict]:
    """The pretrained MAE encoder as a timm ViT classifier.

    Args:
        init: export dir (``model.safetensors`` + ``config.json``), a training checkpoint dir
            (exported via ``trainer.export``), or ``None``/``"none"`` for random init.
        num_classes: head outputs.
        img_size, in_chans: override the export's (pos_embed is resampled, the patch conv
            converted between gray and RGB).
        global_pool: ``"avg"`` (MAE fine-tuning: mean of patch tokens + ``fc_norm``) or ``"token"``.
        arch: with random init, a timm name or an export dir to copy the architecture from.

    Returns (model, encoder config dict incl. ``mean``/``std``). Loading is strict except for the
    keys MAE's recipe replaces: ``head.*``/``fc_norm.*`` may be missing and ``norm.*`` unexpected
    (the final norm is superseded by ``fc_norm`` under average pooling).
    """
    random_init = init is None or str(init).lower() == "none"
    export = None
    if random_init and arch and Path(arch).expanduser().is_dir():
        enc = {**read_encoder_config(Path(arch).expanduser()), "source": "random init"}
    elif random_init:
        enc = {"timm_name": arch or DEFAULT_ARCH, "in_chans": 1, "source": "random init"}
    else:
        export = resolve_init(init, work_dir)
        weights = read_weights(export)
        enc = {**weights.encoder_config(), "source": str(export)}
    chans = int(in_chans or enc["in_chans"])
    arch_kw = {k: enc[k] for k in ("patch_size", "embed_dim", "depth", "num_heads") if k in enc}
    size = img_size or enc.get("img_size")
    if size:
        arch_kw["img_size"] = int(size)
    model = _create_vit(enc["timm_name"], num_classes, in_chans=chans, global_pool=global_pool,
                        drop_path_rate=drop_path, **arch_kw)
    if not hasattr(model, "blocks") or not hasattr(model, "patch_embed"):
        raise ValueError(f"{enc['timm_name']}: the encoder must be a timm VisionTransformer")
    # Record the architecture actually built (fills in what a bare timm name left implicit).
    enc.update(img_size=int(model.patch_embed.img_size[0]), patch_size=int(model.patch_embed.patch_size[0]),
               in_chans=chans, embed_dim=int(model.embed_dim), depth=len(model.blocks),
               num_heads=int(model.blocks[0].attn.num_heads))
    if export is not None:  # pos_embed resized, channels and normalisation converted, all logged
        load_into_vit(model, weights, Norm.of(weights.norm.mean, weights.norm.std, chans))
    if isinstance(model.head, nn.Linear):  # MAE: tiny head init so early steps keep the features
        trunc_normal_(model.head.weight, std=head_init_std)
        nn.init.zeros_(model.head.bias)
    return model, enc


def load_baseline(name: str, num_classes: int, *, ckpt: str | Path | None = None, drop_path: float = 0.1,
                  img_size: int = 224, in_chans: int = 3) -> nn.Module:
    """A timm baseline (``pretrained=False``: nothing is downloaded), optionally initialised from
    local weights; a classifier of another size in the checkpoint is dropped and re-initialised."""
    kw = {"in_chans": in_chans, "drop_path_rate": drop_path}
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, img_size=img_size, **kw)
    except TypeError:  # CNNs take any input size and have no img_size argument
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kw)
    if ckpt:
        sd = _adapt_state_dict(model, _read_state_dict(ckpt))
        sd = {k: v for k, v in sd.items() if not k.startswith(DECODER_PREFIXES)}  # an MAE's decoder
        own = model.state_dict()
        clf = (getattr(model, "pretrained_cfg", None) or {}).get("classifier", "head")
        sd = {k: v for k, v in sd.items() if not (k.startswith(clf + ".") and k in own and v.shape != own[k].shape)}
        res = model.load_state_dict(sd, strict=False)
        bad_missing = [k for k in res.missing_keys if not k.startswith((clf + ".", "fc_norm."))]
        if bad_missing or res.unexpected_keys:
            raise ValueError(f"{ckpt}: does not match {name} (missing {bad_missing[:6]}, "
                             f"unexpected {list(res.unexpected_keys)[:6]})")
    return model


def to_linear_probe(model: nn.Module) -> nn.Module:
    """Freeze everything but the classifier, which becomes BatchNorm(affine=False) + Linear as in
    MAE's linear probing (normalising the frozen features makes one lr fit any encoder)."""
    clf = (getattr(model, "pretrained_cfg", None) or {}).get("classifier", "head")
    head = model.get_submodule(clf)
    if not isinstance(head, nn.Linear):
        raise TypeError(f"linear probe needs a Linear classifier at {clf!r}, got {type(head).__name__}")
    trunc_normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    for p in model.parameters():
        p.requires_grad = False
    new = nn.Sequential(nn.BatchNorm1d(head.in_features, affine=False, eps=1e-6), head)
    for p in new.parameters():
        p.requires_grad = True
    parent_name, _, attr = clf.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    model.probe_head = clf  # remembered so train mode can be set on the head only
    return model


def build_model(cfg: FinetuneConfig, num_classes: int, work_dir: str | Path | None = None) -> ModelBundle:
    """The classifier ``cfg`` asks for, with its input size, channels and pixel statistics."""
    if cfg.model == ENCODER:
        if cfg.init is None:
            raise ValueError("--init is required with the encoder model: an export dir, a checkpoint dir or 'none'")
        model, enc = load_encoder(cfg.init, num_classes, drop_path=cfg.drop_path, img_size=cfg.img_size,
                                  in_chans=cfg.in_chans, arch=cfg.arch, work_dir=work_dir)
        chans = enc["in_chans"]
        pretrained = enc["source"] != "random init"
        mean = channel_stats(enc.get("mean"), chans, GRAY_MEAN)
        std = channel_stats(enc.get("std"), chans, GRAY_STD)
        bundle = ModelBundle(model, f"encoder {enc['timm_name']} ({enc['source']})", pretrained, True,
                             enc["img_size"], chans, mean, std, info={"encoder": enc})
    else:
        size, chans = cfg.img_size or 224, cfg.in_chans or 3
        model = load_baseline(cfg.model, num_classes, ckpt=cfg.baseline_ckpt, drop_path=cfg.drop_path,
                              img_size=size, in_chans=chans)
        rgb = chans == 3
        bundle = ModelBundle(model, f"{cfg.model} ({'weights ' + str(cfg.baseline_ckpt) if cfg.baseline_ckpt else 'scratch'})",
                             bool(cfg.baseline_ckpt), hasattr(model, "blocks"), size, chans,
                             channel_stats(None, chans, IMAGENET_MEAN if rgb else GRAY_MEAN),
                             channel_stats(None, chans, IMAGENET_STD if rgb else GRAY_STD))
    if cfg.linear_probe:
        to_linear_probe(bundle.model)
    return bundle


# ============================================================================ optimisation

def resolve_config(cfg: FinetuneConfig, bundle: ModelBundle | None = None, world_size: int = 1) -> FinetuneConfig:
    """Copy of ``cfg`` with mode-dependent defaults and the model's size/channels filled in.

    ``batch_size`` is per rank (MAE's convention); the default lr scales with the global batch
    ``batch_size x world_size``, so N ranks at batch b train like one rank at batch N*b."""
    c = copy.deepcopy(cfg)
    probe = c.linear_probe
    c.blr = c.blr if c.blr is not None else (PROBE_BLR if probe else FT_BLR)
    c.lr = c.lr if c.lr is not None else c.blr * c.batch_size * world_size / 256
    c.weight_decay = c.weight_decay if c.weight_decay is not None else (0.0 if probe else 0.05)
    c.label_smoothing = c.label_smoothing if c.label_smoothing is not None else (0.0 if probe else 0.1)
    if probe:
        c.mixup = c.cutmix = 0.0  # MAE linprobe: no mixup / cutmix / smoothing
    if c.epochs > 0 and c.warmup_epochs >= c.epochs:  # a short run would never reach its lr
        log.warning("warmup (%s epochs) >= epochs (%s): warming up for %s instead", c.warmup_epochs, c.epochs,
                    c.epochs / 10)
        c.warmup_epochs = c.epochs / 10
    if bundle is not None:
        c.img_size, c.in_chans = bundle.img_size, bundle.in_chans
    if c.balanced not in ("none", "loss", "sampler"):
        raise ValueError(f"--balanced must be none, loss or sampler, got {c.balanced!r}")
    if c.select_metric not in ("f1", "accuracy", "auc", "loss"):
        raise ValueError(f"--select-metric must be f1, accuracy, auc or loss, got {c.select_metric!r}")
    return c


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ============================================================================ engine

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


def _score(metric: str, m: dict, loss: float) -> float:
    if metric == "loss":
        return -loss
    v = m.get(metric)
    return -math.inf if v is None else float(v)


def _fingerprint(cfg: FinetuneConfig, ctx: DistContext) -> dict:
    """The settings a checkpoint must agree on to be resumed (not paths, progress or I/O knobs)."""
    skip = {"resume", "output_dir", "progress", "workers", "save_every", "save_every_steps", "keep_checkpoints",
            "save_model", "data_root", "device"}
    return {**{k: v for k, v in asdict(cfg).items() if k not in skip}, "world_size": ctx.world_size}


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().to("cpu", copy=True) for n, t in model.state_dict().items()}


def _wrap_ddp(model: nn.Module, cfg: FinetuneConfig, ctx: DistContext) -> nn.Module:
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


def fit_and_evaluate(train: Sequence[Record], val: Sequence[Record], test: Sequence[Record], class_names: list[str],
                     cfg: FinetuneConfig, out_dir: Path | None = None, meta: dict | None = None) -> dict:
    """Train on ``train``, select the epoch on ``val`` (last epoch if empty), score on ``test``.

    Under torchrun every rank calls this with the same arguments: each trains on its share of
    every global batch (DDP), evaluates its share of val/test, and rank 0 gathers the
    predictions, computes the metrics once and writes the run's files into ``out_dir``. With
    ``cfg.save_every``/``save_every_steps`` checkpoints go to ``out_dir/checkpoints`` and
    ``cfg.resume`` continues from one. Returns the results dict on every rank; the test
    predictions ride along under the private key ``_pred`` ((labels, probs) arrays) for pooling
    and are never written to results.json."""
    t0 = time.time()
    dali_module(cfg.loader)  # fail before any training if the asked-for loader is missing
    ctx = dist_context(cfg.device)
    device = ctx.device
    requested_precision = cfg.precision
    precision, why = resolve_precision(requested_precision, device)
    if ctx.is_main:
        log.info("precision %s (%s); %d rank(s)%s on %s", precision, why, ctx.world_size,
                 f" ({ctx.backend})" if ctx.distributed else "", device)
    seed_everything(cfg.seed + ctx.rank)  # rank 0 draws what a one-rank run draws; DDP broadcasts its weights
    k = len(class_names)
    main_dir = out_dir if ctx.is_main else None  # only rank 0 writes the run's files
    if main_dir is not None:
        main_dir.mkdir(parents=True, exist_ok=True)
    with ctx.main_first():  # e.g. exporting a checkpoint --init once, then reading it on every rank
        bundle = build_model(cfg, k, work_dir=out_dir)
    cfg = resolve_config(cfg, bundle, world_size=ctx.world_size)
    cfg.precision = precision
    model = bundle.model.to(device)
    tcfg = TransformConfig(img_size=bundle.img_size, in_chans=bundle.in_chans, mean=bundle.mean, std=bundle.std,
                           crop_min=cfg.crop_min, reprob=cfg.reprob, randaug_ops=cfg.randaug_ops,
                           randaug_magnitude=cfg.randaug_magnitude, aug=cfg.aug, auto_augment=cfg.auto_augment,
                           interpolation=cfg.interpolation, re_mode=cfg.re_mode, re_count=cfg.re_count,
                           hflip=cfg.hflip, rotate_deg=cfg.rotate_deg, crop_pct=cfg.crop_pct)
    labels = [r.label for r in train]
    cw = class_balanced_weights(labels, k)
    sample_w = cw[np.asarray(labels)] if cfg.balanced == "sampler" else None
    class_weight = torch.tensor(cw, dtype=torch.float32, device=device) if cfg.balanced == "loss" else None
    common = {"batch_size": cfg.batch_size, "tcfg": tcfg, "loader": cfg.loader, "seed": cfg.seed,
              "workers": cfg.workers, "device": device, "rank": ctx.rank, "world_size": ctx.world_size}
    probe_mode = "probe" if cfg.probe_augment else "eval"
    global_batch = cfg.batch_size * ctx.world_size
    train_loader = build_finetune_loader(train, train=True, mode=probe_mode if cfg.linear_probe else "train",
                                         sample_weights=sample_w, drop_last=len(train) > global_batch, **common)
    val_loader = build_finetune_loader(val, train=False, **common) if val else None
    test_loader = build_finetune_loader(test, train=False, **common)
    ctx.check_same(len(train_loader), "training steps per epoch")
    optimizer = build_optimizer(bundle, cfg, device)
    step_model = _wrap_ddp(model, cfg, ctx)
    mixup_fn = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        from timm.data import Mixup

        mixup_fn = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                         num_classes=k, prob=cfg.mixup_prob, switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode)

    best = {"score": -math.inf, "epoch": cfg.epochs - 1, "val": None, "state": None}
    records: list[dict] = []  # log.jsonl
    start_epoch, start_step, totals = 0, 0, EpochTotals()
    ckpts = None
    if out_dir is not None and (cfg.save_every > 0 or cfg.save_every_steps > 0 or cfg.resume):
        ckpts = FinetuneCheckpoints(out_dir / "checkpoints", ctx, cfg.keep_checkpoints)
    fingerprint = _fingerprint(cfg, ctx)
    resume_from = ckpts.find(cfg.resume) if ckpts is not None else None
    if resume_from is not None:
        st, rank_st, best_w = ckpts.load(resume_from, model=model, optimizer=optimizer, fingerprint=fingerprint)
        start_epoch, start_step = int(st["epoch"]), int(st["step"])
        records = list(st["log"])
        best.update(score=-math.inf if st["best_score"] is None else st["best_score"],
                    epoch=cfg.epochs - 1 if st["best_epoch"] is None else st["best_epoch"], val=st["best_val"],
                    state=best_w)
        if rank_st is not None:  # None: a finished run, only re-scored
            train_loader.load_state_dict(rank_st["loader"])
            totals = EpochTotals(float(rank_st["loss_sum"]), int(rank_st["seen"]))
            set_rng_state(rank_st["rng"])  # last: nothing after it draws before training continues
        if ctx.is_main:
            log.info("resumed from %s (epoch %d, step %d)", resume_from, start_epoch, start_step)
    if main_dir is not None:  # a fresh run starts a fresh log; a resumed one its saved records
        (main_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    def save(epoch_done: int, step: int, tot: EpochTotals) -> Path:
        state = {"fingerprint": fingerprint, "log": records,
                 "best_score": None if best["score"] == -math.inf else best["score"],
                 "best_epoch": best["epoch"] if best["state"] is not None else None, "best_val": best["val"]}
        rank_state = {"rng": rng_state(), "loader": train_loader.state_dict(), "loss_sum": tot.loss_sum,
                      "seen": tot.seen}
        return ckpts.save(epoch_done, step, model=model, optimizer=optimizer, state=state, rank_state=rank_state,
                          best_weights=best["state"])

    def after_step(step: int, tot: EpochTotals, epoch: int) -> None:
        if ckpts is not None and cfg.save_every_steps > 0 and step % cfg.save_every_steps == 0 \
                and step < len(train_loader):
            save(epoch, step, tot)

    bar = tqdm(range(start_epoch, cfg.epochs), desc=f"{cfg.task} {meta.get('split', '') if meta else ''}".strip(),
               disable=not (cfg.progress and ctx.is_main))
    for epoch in bar:
        stats = train_one_epoch(step_model, train_loader, optimizer, cfg, epoch, device, k, mixup_fn, class_weight,
                                start_step=start_step, totals=totals, ctx=ctx,
                                after_step=lambda s, t, e=epoch: after_step(s, t, e))
        start_step, totals = 0, EpochTotals()
        rec = {"epoch": epoch + 1, "train_loss": stats["loss"], "lr": stats["lr"], "steps": stats["steps"]}
        is_best, val_best = False, None
        if val_loader is not None:
            res = evaluate(model, val_loader, len(val), cfg, device, ctx, k, "validation")
            if res is not None:  # rank 0 scores; the decision goes to every rank
                vp, vy, vloss = res
                vm = M.classification_metrics(vy, vp, class_names)
                rec.update({"val_loss": vloss, **{f"val_{m}": vm[m] for m in M.HEADLINE}})
                score = _score(cfg.select_metric, vm, vloss)
                is_best = score > best["score"]  # strictly better: ties keep the earlier epoch
                val_best = (score, {**{m: vm[m] for m in M.HEADLINE}, "loss": vloss})
            rec, is_best, val_best = ctx.broadcast((rec, is_best, val_best if is_best else None))
            if is_best:
                best.update(score=val_best[0], epoch=epoch, val=val_best[1], state=_cpu_state(model))
        records.append(rec)
        bar.set_postfix(loss=f"{stats['loss']:.3f}", **({"val_f1": f"{rec['val_f1']:.3f}"} if "val_f1" in rec else {}))
        if main_dir is not None:
            with (main_dir / "log.jsonl").open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
        if ckpts is not None and (epoch + 1 == cfg.epochs or (cfg.save_every > 0 and (epoch + 1) % cfg.save_every == 0)):
            final = save(epoch + 1, 0, EpochTotals())
            if epoch + 1 == cfg.epochs:
                ckpts.finish(final)
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    res = evaluate(model, test_loader, len(test), cfg, device, ctx, k, "test")
    results = None
    if res is not None:
        probs, y, test_loss = res
        metrics = M.classification_metrics(y, probs, class_names)
        spec = TASKS.get(cfg.task)
        results = {
            "task": cfg.task, "title": spec.title if spec else cfg.task, **(meta or {}),
            "mode": "linear_probe" if cfg.linear_probe else "finetune", "model": bundle.name,
            "class_names": list(class_names), "n_train": len(train), "n_val": len(val), "n_test": len(test),
            **metrics, "test_loss": test_loss, "best_epoch": best["epoch"] + 1,
            "selected_by": f"val {cfg.select_metric}" if val else "last epoch", "val": best["val"],
            "paper": paper_figures(cfg.task), "elapsed_s": round(time.time() - t0, 2),
            # (the key "precision" is the metric; cfg.precision below holds the resolved choice too)
            "compute_precision": {"requested": requested_precision, "used": precision, "reason": why},
            "distributed": {"world_size": ctx.world_size, "backend": ctx.backend, "batch_per_rank": cfg.batch_size,
                            "global_batch": global_batch, "steps_per_epoch": len(train_loader),
                            "resumed_from": str(resume_from) if resume_from is not None else None},
            "config": asdict(cfg), "encoder": bundle.info.get("encoder"), "versions": _versions(),
        }
        if main_dir is not None:
            write_run(main_dir, results, y, probs, ids=[r.name for r in test])
            if cfg.save_model:
                from safetensors.torch import save_file

                save_file({n: t.contiguous() for n, t in model.state_dict().items()},
                          str(main_dir / "model_best.safetensors"))
        results["_pred"] = (y, probs)
    return ctx.broadcast(results)  # every rank returns what rank 0 computed


# ============================================================================ reporting

def paper_figures(task: str) -> dict | None:
    """The USF-MAE paper's figures for ``task`` on the 0..1 scale used in results.json."""
    spec = TASKS.get(task)
    if not spec or not spec.paper:
        return None
    return {"model": "USF-MAE (paper)", **{k: v / 100.0 for k, v in spec.paper.items()}}


def _versions() -> dict:
    return {"torch": torch.__version__, "timm": timm.__version__, "python": sys.version.split()[0]}


def results_markdown(r: dict) -> str:
    """Markdown report of one run or of a CV aggregate (``r["std"]`` present)."""
    std = r.get("std") or {}
    paper = r.get("paper") or {}
    head = [f"# {r.get('title', r['task'])}",
            "",
            f"- model: {r['model']} — {r['mode'].replace('_', ' ')}",
            f"- split: {r.get('split', '—')}" + (f" ({r['n_folds']} folds, mean ± std)" if r.get("n_folds") else
                                                 f"; train {r['n_train']} / val {r['n_val']} / test {r['n_test']} images"
                                                 f"; selected epoch {r['best_epoch']} by {r['selected_by']}"),
            "",
            "| metric | ours | USF-MAE (paper) |",
            "|---|---:|---:|"]
    names = {"accuracy": "accuracy", "precision": "precision (macro)", "recall": "recall (macro)",
             "f1": "F1 (macro)", "auc": "AUC" + (" (OvR macro)" if len(r["class_names"]) > 2 else "")}
    rows = [f"| {names[m]} | {M.pct(r.get(m), std.get(m) if std else None)} | {M.pct(paper.get(m))} |"
            for m in M.HEADLINE]
    body = ["", "## Per class" + (" (pooled over folds)" if r.get("n_folds") else ""), "",
            M.markdown_per_class(r["per_class"]), "", "## Confusion matrix", "",
            M.markdown_confusion(r["confusion_matrix"], r["class_names"]), ""]
    if r.get("folds"):
        body += ["## Folds", "", "| split | accuracy | F1 | AUC | test images |", "|---|---:|---:|---:|---:|"]
        body += [f"| {f['split']} | {M.pct(f['accuracy'])} | {M.pct(f['f1'])} | {M.pct(f['auc'])} | {f['n_test']} |"
                 for f in r["folds"]]
        body.append("")
    return "\n".join(head + rows + body)


def _json_ready(r: dict) -> dict:
    return {k: v for k, v in r.items() if not k.startswith("_")}


def write_predictions(path: Path, ids: Sequence[str], y: np.ndarray, probs: np.ndarray,
                      class_names: Sequence[str]) -> None:
    """``predictions.csv``: one row per test record (id, label, predicted class, probabilities)."""
    import csv

    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "label", "pred", *[f"p_{c}" for c in class_names]])
        for name, lab, p in zip(ids, y, probs):
            w.writerow([name, int(lab), int(np.argmax(p)), *[f"{v:.9g}" for v in p]])


def write_run(out_dir: Path, results: dict, y: np.ndarray, probs: np.ndarray, ids: Sequence[str] | None = None) -> None:
    """results.json, results.md, confusion.png, roc.png (and predictions.csv when the record
    ``ids`` are given) of one run, or of pooled CV predictions."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(_json_ready(results), indent=2, default=str))
    if ids is not None:
        write_predictions(out_dir / "predictions.csv", ids, y, probs, results["class_names"])
    (out_dir / "results.md").write_text(results_markdown(results))
    title = f"{results['task']} {results.get('split', '')} — {results['model']}"
    M.plot_confusion(results["confusion_matrix"], results["class_names"], out_dir / "confusion.png", title)
    M.plot_roc(y, probs, results["class_names"], out_dir / "roc.png", title)


def aggregate_runs(runs: list[dict], out_dir: Path | None = None) -> dict:
    """CV aggregate: headline metrics as mean (with ``std``) over folds, per-class table and
    confusion matrix on the pooled test predictions (each image is tested once across folds)."""
    agg = M.aggregate(runs)
    y = np.concatenate([r["_pred"][0] for r in runs])
    probs = np.concatenate([r["_pred"][1] for r in runs])
    first = runs[0]
    pooled = M.classification_metrics(y, probs, first["class_names"])
    out = {k: first[k] for k in ("task", "title", "mode", "model", "class_names", "paper", "config", "encoder",
                                 "versions", "compute_precision", "distributed")}
    out.update({
        "split": "cv", "n_folds": len(runs), **agg["mean"], "mean": agg["mean"], "std": agg["std"],
        **{f"{m}_std": agg["std"][m] for m in M.HEADLINE},
        "per_class": pooled["per_class"], "confusion_matrix": pooled["confusion_matrix"],
        "pooled": {m: pooled[m] for m in (*M.HEADLINE, "n")},
        "folds": [{"split": r["split"], **{m: r[m] for m in M.HEADLINE}, "best_epoch": r["best_epoch"],
                   "n_train": r["n_train"], "n_val": r["n_val"], "n_test": r["n_test"]} for r in runs],
        "elapsed_s": round(sum(r["elapsed_s"] for r in runs), 2),
    })
    if out_dir is not None and is_main_process():
        write_run(out_dir, out, y, probs)
    out["_pred"] = (y, probs)
    return out


# ============================================================================ entry points

def _run_splits(data: TaskData, cfg: FinetuneConfig) -> dict:
    out = Path(cfg.output_dir).expanduser() if cfg.output_dir else None
    runs = []
    for split in data.splits:
        train, val = group_split(split.train, cfg.val_fraction, cfg.seed)
        run_dir = None if out is None else (out / split.name if len(data.splits) > 1 else out)
        runs.append(fit_and_evaluate(train, val, split.test, data.class_names, cfg, run_dir,
                                     meta={"split": split.name, "data_root": str(data.root)}))
    result = runs[0] if len(runs) == 1 else aggregate_runs(runs, out)
    if out is not None and is_main_process():
        resolved = dict(runs[0]["config"])
        (out / "config.json").write_text(json.dumps(resolved, indent=2, default=str))
    return result


def run_finetune(cfg: FinetuneConfig) -> dict:
    """Load ``cfg.task`` from ``cfg.data_root``, run the split(s), write the reports to
    ``cfg.output_dir``; returns the results dict (what results.json holds)."""
    if cfg.data_root is None:
        raise ValueError("--data-root is required")
    if cfg.cv and cfg.split is not None:
        raise ValueError("--cv runs every split; do not combine it with --split")
    data = load_task(cfg.task, cfg.data_root, split=cfg.split, cv=cfg.cv, kfold=cfg.folds,
                     test_fraction=cfg.test_fraction, seed=cfg.seed)
    return _json_ready(_run_splits(data, cfg))


def _as_records(items: Iterable) -> list[Record]:
    out = []
    for i, it in enumerate(items):
        if isinstance(it, Record):
            out.append(it)
            continue
        img, label, *rest = it
        group = str(rest[0]) if rest else f"item{i}"
        if isinstance(img, (str, Path)):
            out.append(Record(Path(img), int(label), group))
        else:
            out.append(Record(None, int(label), group, image=np.asarray(img)))
    return out


def finetune(train: Iterable, test: Iterable, cfg: FinetuneConfig | None = None, *, val: Iterable | None = None,
             class_names: Sequence[str] | None = None, **overrides) -> dict:
    """Fine-tune on in-memory records and score on ``test`` — no files needed.

    train, test, val: :class:`Record`s or ``(image, label, group)`` tuples, ``image`` an (H, W)
        uint8 array (or (H, W, 3)) or a file path; ``group`` (patient) is optional.
    cfg / overrides: a :class:`FinetuneConfig` and/or its fields (``init``, ``epochs``, ...);
        ``output_dir`` stays None unless given (then the usual reports are written there).
    val: model-selection set; default: ``cfg.val_fraction`` of ``train`` carved out by group.

    Returns the results dict (metrics as in results.json)."""
    cfg = copy.deepcopy(cfg) if cfg is not None else FinetuneConfig(task="memory", workers=0, progress=False)
    for k, v in overrides.items():
        if k not in {f.name for f in fields(FinetuneConfig)}:
            raise TypeError(f"unknown FinetuneConfig field {k!r}")
        setattr(cfg, k, v)
    tr, te = _as_records(train), _as_records(test)
    if val is None:
        tr, va = group_split(tr, cfg.val_fraction, cfg.seed)
    else:
        va = _as_records(val)
    k = 1 + max(r.label for r in [*tr, *va, *te])
    names = list(class_names) if class_names is not None else [str(i) for i in range(max(k, 2))]
    if len(names) < k:
        raise ValueError(f"{len(names)} class names for labels up to {k - 1}")
    data = TaskData(cfg.task, names, Path("."), [Split("memory", tr, te)])
    out = Path(cfg.output_dir).expanduser() if cfg.output_dir else None
    res = fit_and_evaluate(tr, va, te, data.class_names, cfg, out, meta={"split": "memory"})
    if out is not None and is_main_process():
        (out / "config.json").write_text(json.dumps(res["config"], indent=2, default=str))
    return _json_ready(res)


def linear_probe(train: Iterable, test: Iterable, cfg: FinetuneConfig | None = None, **kw) -> dict:
    """:func:`finetune` with the encoder frozen (BatchNorm + linear head trained only)."""
    return finetune(train, test, cfg, linear_probe=True, **kw)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; under ``torchrun --nproc_per_node N -m finetune ...`` every rank
    runs it and rank 0 prints and writes."""
    cfg = config_from_args(argv)
    ctx = dist_context(cfg.device)
    logging.basicConfig(level=logging.INFO if ctx.is_main else logging.WARNING,
                        format=f"%(levelname)s %(name)s{f' [rank {ctx.rank}]' if ctx.distributed else ''}: %(message)s")
    try:
        res = run_finetune(cfg)
    except (DatasetFormatError, FileNotFoundError) as e:  # a data/path problem: the message says it all
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        shutdown()
    if ctx.is_main:
        print(results_markdown(res))
        print(f"\nwrote {Path(cfg.output_dir) / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
