"""Fine-tune (or linear-probe) an encoder on a downstream ultrasound task and score it the way
the paper does.

    python -m trainer.finetune --task busbra --data-root ~/data/BUSBRA --init runs/export \\
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

import argparse
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

from trainer import metrics as M
from trainer.downstream import TASKS, DatasetFormatError, Record, Split, TaskData, group_split, load_task
from trainer.finetune_data import (
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
from trainer.lr_decay import param_groups_lrd, param_groups_weight_decay

log = logging.getLogger("trainer.finetune")

ENCODER = "encoder"  # --model value for the pretrained MAE encoder (the default)
DEFAULT_ARCH = "vit_base_patch16_224"
FT_BLR, PROBE_BLR = 5e-4, 0.05  # base lrs (per 256 images) for fine-tuning and linear probing


@dataclass
class FinetuneConfig:
    """Everything a run needs; ``None`` fields are resolved from the task, the encoder config or
    the mode (fine-tune vs linear probe) and saved resolved in ``config.json``."""

    task: str = "folder"  # busbra | mmotu2d | gist514 | folder (| memory, for the Python API)
    data_root: str | None = None
    init: str | None = None  # export dir | training checkpoint dir | none (random init)
    output_dir: str | None = None  # None: write nothing (Python API)
    model: str = ENCODER  # "encoder" or a timm baseline name (resnet50, vit_base_patch16_224, ...)
    arch: str | None = None  # with --init none: timm name or export dir whose architecture to use
    baseline_ckpt: str | None = None  # local weights for a baseline (safetensors / torch weights_only)
    linear_probe: bool = False
    # splits
    split: int | None = None  # BUS-BRA test fold (1..k, default 1), GIST514 split (0..4, default 0)
    cv: bool = False  # every fold / split, then mean ± std
    folds: int = 5  # BUS-BRA fold file: 5 or 10
    val_fraction: float = 0.15  # of train, by group, for model selection; 0: keep the last epoch
    test_fraction: float = 0.2  # folder task without its own test set
    # schedule
    epochs: int = 50
    warmup_epochs: float = 5.0
    batch_size: int = 32
    lr: float | None = None  # absolute; default blr * batch_size / 256
    blr: float | None = None  # default 5e-4 fine-tune, 0.05 linear probe
    min_lr: float = 1e-6
    weight_decay: float | None = None  # default 0.05 fine-tune, 0 linear probe
    layer_decay: float = 0.65  # ViT-B (MAE); applied only to pretrained ViTs
    drop_path: float = 0.1
    label_smoothing: float | None = None  # default 0.1 fine-tune, 0 linear probe
    mixup: float = 0.0  # alpha; MAE ImageNet uses 0.8
    cutmix: float = 0.0  # alpha; MAE ImageNet uses 1.0
    balanced: str = "none"  # none | loss | sampler
    clip_grad: float | None = None
    select_metric: str = "f1"  # f1 | accuracy | auc | loss (validation metric for model selection)
    # data
    img_size: int | None = None  # default: encoder config, else 224
    in_chans: int | None = None  # default: encoder config; baselines 3
    crop_min: float = 0.2
    # linear probe only: False trains the head on the eval view (resize + centre crop, no random
    # crop/flip). Frozen small-data MAE features shift with scale/aspect jitter, and the head then
    # fits views it is never tested on (measured in trainer/proof.py); True: MAE's crop + flip.
    probe_augment: bool = True
    reprob: float = 0.25
    randaug_ops: int = 2
    randaug_magnitude: int = 9
    loader: str = "torch"  # torch | dali
    workers: int = 4
    # runtime
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    save_model: bool = False  # write the selected weights as model_best.safetensors
    progress: bool = True  # tqdm bars


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
    """config.json of an export (design §3), checked for the keys this module uses."""
    path = Path(export_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read encoder config ({e})") from e
    missing = [k for k in ("timm_name", "img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads")
               if k not in cfg]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}")
    return cfg


def resolve_init(init: str | Path, work_dir: str | Path | None = None) -> Path:
    """Export dir for ``init``: an export dir itself, the ``model.safetensors`` inside one, or a
    training checkpoint dir exported on the fly with ``trainer.export.export_from_checkpoint``."""
    p = Path(init).expanduser()
    if p.is_file() and (p.parent / "config.json").is_file():
        return p.parent
    if not p.is_dir():
        raise FileNotFoundError(f"--init {p}: no such export or checkpoint directory")
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
    path = Path(path).expanduser()
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
        for key in ("model", "state_dict", "model_state", "module"):
            if isinstance(sd, dict) and isinstance(sd.get(key), dict):
                sd = sd[key]
    if not isinstance(sd, dict):
        raise TypeError(f"{path}: not a state dict")
    out = {}
    for k, v in sd.items():
        for prefix in ("module.", "model."):
            k = k.removeprefix(prefix)
        out[k] = v
    return out


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
        enc = {**read_encoder_config(export), "source": str(export)}
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
    if export is not None:
        from safetensors.torch import load_file

        wfile = export / "model.safetensors"
        if not wfile.is_file():
            raise FileNotFoundError(f"{wfile}: missing")
        sd = _adapt_state_dict(model, load_file(str(wfile)))
        res = model.load_state_dict(sd, strict=False)
        bad_missing = [k for k in res.missing_keys if not k.startswith(("head.", "fc_norm."))]
        bad_unexpected = [k for k in res.unexpected_keys if not k.startswith("norm.")]
        if bad_missing or bad_unexpected:
            raise ValueError(f"{wfile}: does not match {enc['timm_name']} (missing {bad_missing[:6]}, "
                             f"unexpected {bad_unexpected[:6]})")
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

def resolve_config(cfg: FinetuneConfig, bundle: ModelBundle | None = None) -> FinetuneConfig:
    """Copy of ``cfg`` with mode-dependent defaults and the model's size/channels filled in."""
    c = copy.deepcopy(cfg)
    probe = c.linear_probe
    c.blr = c.blr if c.blr is not None else (PROBE_BLR if probe else FT_BLR)
    c.lr = c.lr if c.lr is not None else c.blr * c.batch_size / 256
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
        groups = param_groups_lrd(model, cfg.weight_decay, cfg.layer_decay)
    else:
        groups = param_groups_weight_decay(model, cfg.weight_decay)
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
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)


def _set_train_mode(model: nn.Module) -> None:
    if hasattr(model, "probe_head"):
        model.eval()  # frozen encoder: no dropout / drop path, fixed norm statistics
        model.get_submodule(model.probe_head).train()  # the probe's BatchNorm tracks statistics
    else:
        model.train()


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, cfg: FinetuneConfig, epoch: int,
                    device: torch.device, num_classes: int, mixup_fn=None, class_weight: torch.Tensor | None = None
                    ) -> dict:
    """One pass over ``loader`` (batches ``{"image": (B, C, H, W), "label": (B,)}``); lr set per step.

    Returns ``{"loss", "lr"}``. The loss is accumulated on device and read once per epoch
    (no host sync per step)."""
    _set_train_mode(model)
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    n = max(len(loader), 1)
    total = torch.zeros((), device=device)
    seen = 0
    lr = cfg.lr
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, batch in enumerate(tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not cfg.progress)):
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
        loss.backward()
        if cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        optimizer.step()
        total += loss.detach() * x.shape[0]
        seen += x.shape[0]
    mean_loss = float(total) / max(seen, 1)
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"training loss is {mean_loss} in epoch {epoch + 1}; lower --lr/--blr")
    return {"loss": mean_loss, "lr": lr}


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device, precision: str = "auto",
            progress: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """Probabilities (N, K) float32, labels (N,) int64 and mean cross-entropy over ``loader``."""
    model.eval()
    probs, labels = [], []
    loss_sum, n = torch.zeros((), device=device), 0
    for batch in tqdm(loader, desc="eval", leave=False, disable=not progress):
        x = batch["image"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        with _autocast(device, precision):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        n += y.shape[0]
        probs.append(torch.softmax(logits, dim=-1).cpu())
        labels.append(y.cpu())
    return torch.cat(probs).numpy(), torch.cat(labels).numpy(), float(loss_sum) / max(n, 1)


def _score(metric: str, m: dict, loss: float) -> float:
    if metric == "loss":
        return -loss
    v = m.get(metric)
    return -math.inf if v is None else float(v)


def fit_and_evaluate(train: Sequence[Record], val: Sequence[Record], test: Sequence[Record], class_names: list[str],
                     cfg: FinetuneConfig, out_dir: Path | None = None, meta: dict | None = None) -> dict:
    """Train on ``train``, select the epoch on ``val`` (last epoch if empty), score on ``test``.

    Writes the run's files into ``out_dir`` when given. Returns the results dict; the test
    predictions ride along under the private key ``_pred`` ((labels, probs) arrays) for pooling
    and are never written to results.json."""
    t0 = time.time()
    dali_module(cfg.loader)  # fail before any training if the asked-for loader is missing
    seed_everything(cfg.seed)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if cfg.device == "auto" else cfg.device))
    k = len(class_names)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    bundle = build_model(cfg, k, work_dir=out_dir)
    cfg = resolve_config(cfg, bundle)
    model = bundle.model.to(device)
    tcfg = TransformConfig(img_size=bundle.img_size, in_chans=bundle.in_chans, mean=bundle.mean, std=bundle.std,
                           crop_min=cfg.crop_min, reprob=cfg.reprob, randaug_ops=cfg.randaug_ops,
                           randaug_magnitude=cfg.randaug_magnitude)
    labels = [r.label for r in train]
    cw = class_balanced_weights(labels, k)
    sample_w = cw[np.asarray(labels)] if cfg.balanced == "sampler" else None
    class_weight = torch.tensor(cw, dtype=torch.float32, device=device) if cfg.balanced == "loss" else None
    common = {"batch_size": cfg.batch_size, "tcfg": tcfg, "loader": cfg.loader, "seed": cfg.seed,
              "workers": cfg.workers, "device": device}
    probe_mode = "probe" if cfg.probe_augment else "eval"
    train_loader = build_finetune_loader(train, train=True, mode=probe_mode if cfg.linear_probe else "train",
                                         sample_weights=sample_w, drop_last=len(train) > cfg.batch_size, **common)
    val_loader = build_finetune_loader(val, train=False, **common) if val else None
    test_loader = build_finetune_loader(test, train=False, **common)
    optimizer = build_optimizer(bundle, cfg, device)
    mixup_fn = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        from timm.data import Mixup

        mixup_fn = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                         num_classes=k)

    best = {"score": -math.inf, "epoch": cfg.epochs - 1, "val": None, "state": None}
    if out_dir is not None:
        (out_dir / "log.jsonl").write_text("")  # a rerun into the same dir starts a fresh log
    bar = tqdm(range(cfg.epochs), desc=f"{cfg.task} {meta.get('split', '') if meta else ''}".strip(),
               disable=not cfg.progress)
    for epoch in bar:
        stats = train_one_epoch(model, train_loader, optimizer, cfg, epoch, device, k, mixup_fn, class_weight)
        rec = {"epoch": epoch + 1, "train_loss": stats["loss"], "lr": stats["lr"]}
        if val_loader is not None:
            vp, vy, vloss = predict(model, val_loader, device, cfg.precision)
            vm = M.classification_metrics(vy, vp, class_names)
            rec.update({"val_loss": vloss, **{f"val_{m}": vm[m] for m in M.HEADLINE}})
            score = _score(cfg.select_metric, vm, vloss)
            if score > best["score"]:  # strictly better: ties keep the earlier epoch
                best.update(score=score, epoch=epoch, val={**{m: vm[m] for m in M.HEADLINE}, "loss": vloss},
                            state={n: t.detach().to("cpu", copy=True) for n, t in model.state_dict().items()})
        bar.set_postfix(loss=f"{stats['loss']:.3f}", **({"val_f1": f"{rec['val_f1']:.3f}"} if "val_f1" in rec else {}))
        if out_dir is not None:
            with (out_dir / "log.jsonl").open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    probs, y, test_loss = predict(model, test_loader, device, cfg.precision)
    res = M.classification_metrics(y, probs, class_names)
    spec = TASKS.get(cfg.task)
    results = {
        "task": cfg.task, "title": spec.title if spec else cfg.task, **(meta or {}),
        "mode": "linear_probe" if cfg.linear_probe else "finetune", "model": bundle.name,
        "class_names": list(class_names), "n_train": len(train), "n_val": len(val), "n_test": len(test),
        **res, "test_loss": test_loss, "best_epoch": best["epoch"] + 1,
        "selected_by": f"val {cfg.select_metric}" if val else "last epoch", "val": best["val"],
        "paper": paper_figures(cfg.task), "elapsed_s": round(time.time() - t0, 2),
        "config": asdict(cfg), "encoder": bundle.info.get("encoder"), "versions": _versions(),
    }
    if out_dir is not None:
        write_run(out_dir, results, y, probs)
        if cfg.save_model:
            from safetensors.torch import save_file

            save_file({n: t.contiguous() for n, t in model.state_dict().items()}, str(out_dir / "model_best.safetensors"))
    results["_pred"] = (y, probs)
    return results


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


def write_run(out_dir: Path, results: dict, y: np.ndarray, probs: np.ndarray) -> None:
    """results.json, results.md, confusion.png, roc.png of one run (or of pooled CV predictions)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(_json_ready(results), indent=2, default=str))
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
                                 "versions")}
    out.update({
        "split": "cv", "n_folds": len(runs), **agg["mean"], "mean": agg["mean"], "std": agg["std"],
        **{f"{m}_std": agg["std"][m] for m in M.HEADLINE},
        "per_class": pooled["per_class"], "confusion_matrix": pooled["confusion_matrix"],
        "pooled": {m: pooled[m] for m in (*M.HEADLINE, "n")},
        "folds": [{"split": r["split"], **{m: r[m] for m in M.HEADLINE}, "best_epoch": r["best_epoch"],
                   "n_train": r["n_train"], "n_val": r["n_val"], "n_test": r["n_test"]} for r in runs],
        "elapsed_s": round(sum(r["elapsed_s"] for r in runs), 2),
    })
    if out_dir is not None:
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
    if out is not None:
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
    if out is not None:
        (out / "config.json").write_text(json.dumps(res["config"], indent=2, default=str))
    return _json_ready(res)


def linear_probe(train: Iterable, test: Iterable, cfg: FinetuneConfig | None = None, **kw) -> dict:
    """:func:`finetune` with the encoder frozen (BatchNorm + linear head trained only)."""
    return finetune(train, test, cfg, linear_probe=True, **kw)


# ============================================================================ command line

def build_parser() -> argparse.ArgumentParser:
    d = FinetuneConfig()
    p = argparse.ArgumentParser(prog="python -m trainer.finetune", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--task", required=True, choices=["busbra", "mmotu2d", "gist514", "folder"])
    a("--data-root", required=True, help="unzipped data set folder (or the folder holding it); folder task: "
      "class folders or a CSV of path,label")
    a("--init", default=None, help="export dir (model.safetensors + config.json), training checkpoint dir, or none")
    a("--output-dir", required=True)
    a("--model", default=d.model, help="'encoder' (the MAE encoder from --init) or a timm baseline name")
    a("--arch", default=None, help="with --init none: timm name or export dir whose architecture to use")
    a("--baseline-ckpt", default=None, help="local weights for a baseline (.safetensors or torch weights-only)")
    a("--linear-probe", action="store_true", help="freeze the encoder, train BatchNorm + linear head")
    a("--split", type=int, default=None, help="BUS-BRA test fold 1..k (default 1); GIST514 split 0..4 (default 0)")
    a("--cv", action="store_true", help="run every official fold/split and report mean ± std")
    a("--folds", type=int, default=d.folds, choices=[5, 10], help="BUS-BRA fold file")
    a("--val-fraction", type=float, default=d.val_fraction, help="of train, by patient group, for model selection")
    a("--test-fraction", type=float, default=d.test_fraction, help="folder task without a test set")
    a("--epochs", type=int, default=d.epochs)
    a("--warmup-epochs", type=float, default=d.warmup_epochs)
    a("--batch-size", type=int, default=d.batch_size)
    a("--lr", type=float, default=None, help="absolute lr (default blr * batch / 256)")
    a("--blr", type=float, default=None, help=f"base lr per 256 images (default {FT_BLR}; linear probe {PROBE_BLR})")
    a("--min-lr", type=float, default=d.min_lr)
    a("--weight-decay", type=float, default=None, help="default 0.05 (linear probe 0)")
    a("--layer-decay", type=float, default=d.layer_decay, help="layer-wise lr decay (pretrained ViTs)")
    a("--drop-path", type=float, default=d.drop_path)
    a("--label-smoothing", type=float, default=None, help="default 0.1 (linear probe 0)")
    a("--mixup", type=float, default=d.mixup, help="mixup alpha (0: off)")
    a("--cutmix", type=float, default=d.cutmix, help="cutmix alpha (0: off)")
    a("--balanced", default=d.balanced, choices=["none", "loss", "sampler"])
    a("--clip-grad", type=float, default=None)
    a("--select-metric", default=d.select_metric, choices=["f1", "accuracy", "auc", "loss"])
    a("--img-size", type=int, default=None, help="default: the encoder's (224 for baselines)")
    a("--in-chans", type=int, default=None, choices=[1, 3], help="default: the encoder's (3 for baselines)")
    a("--crop-min", type=float, default=d.crop_min, help="RandomResizedCrop lower scale")
    a("--no-probe-augment", dest="probe_augment", action="store_false",
      help="linear probe: train the head on the eval view (no random crop/flip)")
    a("--reprob", type=float, default=d.reprob, help="random erasing probability")
    a("--loader", default=d.loader, choices=["torch", "dali"])
    a("--workers", type=int, default=d.workers)
    a("--seed", type=int, default=d.seed)
    a("--device", default=d.device)
    a("--precision", default=d.precision, choices=["auto", "bf16", "fp32"])
    a("--save-model", action="store_true", help="write the selected weights (model_best.safetensors)")
    a("--no-progress", action="store_true", help="no tqdm bars")
    return p


def config_from_args(argv: Sequence[str] | None = None) -> FinetuneConfig:
    ns = build_parser().parse_args(argv)
    kw = {f.name: getattr(ns, f.name) for f in fields(FinetuneConfig) if hasattr(ns, f.name)}
    kw["progress"] = not ns.no_progress
    return FinetuneConfig(**kw)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(argv)
    try:
        res = run_finetune(cfg)
    except (DatasetFormatError, FileNotFoundError) as e:  # a data/path problem: the message says it all
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(results_markdown(res))
    print(f"\nwrote {Path(cfg.output_dir) / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
