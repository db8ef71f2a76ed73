"""The fine-tune run's configuration and its command line (``python -m finetune``)."""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, fields

from finetune import recipes
from trainer.precision import PRECISIONS

__doc_cli__ = "Fine-tune (or linear-probe) an encoder on a downstream ultrasound task and score it the way the paper does."

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
    mixup_prob: float = 1.0  # probability of mixup or cutmix per batch (timm Mixup prob)
    mixup_switch_prob: float = 0.5  # probability of cutmix instead of mixup when both are on
    mixup_mode: str = "batch"  # batch | pair | elem (timm Mixup mode)
    balanced: str = "none"  # none | loss | sampler
    clip_grad: float | None = None
    select_metric: str = "f1"  # f1 | accuracy | auc | loss (validation metric for model selection)
    # data
    img_size: int | None = None  # default: encoder config, else 224
    in_chans: int | None = None  # default: encoder config; baselines 3
    crop_min: float = 0.2
    # linear probe only: False trains the head on the eval view (resize + centre crop, no random
    # crop/flip). Frozen small-data MAE features shift with scale/aspect jitter, and the head then
    # fits views it is never tested on (measured in finetune/proof.py); True: MAE's crop + flip.
    probe_augment: bool = True
    reprob: float = 0.25
    randaug_ops: int = 2
    randaug_magnitude: int = 9
    # the recipe (finetune.recipes) the CLI applied, and the augmentation knobs it fills:
    # aug="timm" is MAE's timm create_transform (auto_augment, interpolation, re_mode, re_count, hflip)
    recipe: str = "project"
    aug: str = "torchvision"
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    interpolation: str = "bicubic"
    re_mode: str = "pixel"
    re_count: int = 1
    hflip: float = 0.5
    rotate_deg: float = 10.0
    crop_pct: float = 0.875
    loader: str = "torch"  # torch | dali
    workers: int = 4
    # runtime
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda (under torchrun: this rank's GPU, cuda:LOCAL_RANK)
    # auto: bf16 where the GPU/CPU runs it natively, else fp32 (trainer.precision); saved resolved
    precision: str = "auto"
    save_model: bool = False  # write the selected weights as model_best.safetensors
    progress: bool = True  # tqdm bars
    # checkpoints (need output_dir): OUTPUT_DIR[/<split>]/checkpoints, see finetune.checkpoint
    save_every: int = 0  # epochs between checkpoints (0: none; the CLI default is 1)
    save_every_steps: int = 0  # also every N steps within an epoch (0: only at epoch ends)
    keep_checkpoints: int = 1  # newest checkpoints kept
    resume: str | None = None  # auto (latest checkpoint, else a fresh start) | a checkpoint dir | None


# ============================================================================ command line

def build_parser() -> argparse.ArgumentParser:
    d = FinetuneConfig()
    p = argparse.ArgumentParser(prog="python -m finetune", description=__doc_cli__,
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
    a("--mixup-prob", type=float, default=d.mixup_prob, help="probability of mixup/cutmix per batch")
    a("--mixup-switch-prob", type=float, default=d.mixup_switch_prob, help="cutmix instead of mixup, when both on")
    a("--mixup-mode", default=d.mixup_mode, choices=["batch", "pair", "elem"], help="timm Mixup mode")
    a("--balanced", default=d.balanced, choices=["none", "loss", "sampler"])
    a("--clip-grad", type=float, default=None)
    a("--select-metric", default=d.select_metric, choices=["f1", "accuracy", "auc", "loss"])
    a("--img-size", type=int, default=None, help="default: the encoder's (224 for baselines)")
    a("--in-chans", type=int, default=None, choices=[1, 3], help="default: the encoder's (3 for baselines)")
    a("--crop-min", type=float, default=d.crop_min, help="RandomResizedCrop lower scale")
    a("--no-probe-augment", dest="probe_augment", action="store_false",
      help="linear probe: train the head on the eval view (no random crop/flip)")
    a("--reprob", type=float, default=d.reprob, help="random erasing probability")
    recipes.add_cli_args(p, d)
    a("--loader", default=d.loader, choices=["torch", "dali"])
    a("--workers", type=int, default=d.workers)
    a("--seed", type=int, default=d.seed)
    a("--device", default=d.device)
    a("--precision", default=d.precision, choices=list(PRECISIONS),
      help="auto: bf16 where the GPU/CPU runs it natively, else fp32 (logged and saved in results.json)")
    a("--save-model", action="store_true", help="write the selected weights (model_best.safetensors)")
    a("--no-progress", action="store_true", help="no tqdm bars")
    a("--resume", nargs="?", const="auto", default=None, metavar="auto|CKPT_DIR",
      help="continue from the latest checkpoint in OUTPUT_DIR (or the one named); a fresh start if none")
    a("--save-every", type=int, default=1, help="epochs between checkpoints (0: none)")
    a("--save-every-steps", type=int, default=d.save_every_steps, help="also a checkpoint every N steps (0: off)")
    a("--keep-checkpoints", type=int, default=d.keep_checkpoints, help="newest checkpoints kept")
    return p


def config_from_args(argv: Sequence[str] | None = None) -> FinetuneConfig:
    ns = build_parser().parse_args(argv)
    kw = {f.name: getattr(ns, f.name) for f in fields(FinetuneConfig) if hasattr(ns, f.name)}
    kw["progress"] = not ns.no_progress
    kw["auto_augment"] = recipes.normalise_randaug(kw.get("auto_augment"))
    explicit = recipes.explicit_dests(build_parser(), argv)
    return recipes.apply_recipe(FinetuneConfig(**kw), ns.recipe, explicit=explicit)
