"""The fine-tune run's configuration and its command line (``python -m finetune``), both from
the :mod:`runconfig` dataclass below: one flag per field (``--config run.yaml`` replays a saved
run), and a recipe (finetune.recipes) fills the knobs the user did not set."""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Literal

from dali_pipes.timm_aug import INTERPOLATIONS, RE_MODES
from finetune.tasks import TASKS
from runconfig import add_arguments, config, parse
from finetune import recipes
from trainer.precision import PRECISIONS

__doc_cli__ = ("Fine-tune (or linear-probe) an encoder on a downstream ultrasound task and score it the way the "
               "paper does.")

ENCODER = "encoder"  # --model value for the pretrained MAE encoder (the default)
DEFAULT_ARCH = "vit_base_patch16_224"
FT_BLR, PROBE_BLR = 5e-4, 0.05  # base lrs (per 256 images) for fine-tuning and linear probing


@config
class FinetuneConfig:
    """Everything a run needs; ``None`` fields are resolved from the task, the encoder config or
    the mode (fine-tune vs linear probe) and saved resolved in ``config.json``."""

    task: Literal[(*TASKS, "memory")] = "folder"  # memory: records given in Python (the finetune() API)
    data_root: str | None = None  # the unzipped data set (or its parent); folder task: class dirs or a CSV
    init: str | None = None  # export dir | training checkpoint dir | none (random init)
    output_dir: str | None = None  # None: write nothing (Python API)
    model: str = ENCODER  # "encoder" or a timm baseline name (resnet50, vit_base_patch16_224, ...)
    arch: str | None = None  # with --init none: timm name or export dir whose architecture to use
    baseline_ckpt: str | None = None  # local weights for a baseline (safetensors / torch weights_only)
    linear_probe: bool = False  # freeze the encoder, train BatchNorm + linear head
    # splits
    split: int | None = None  # BUS-BRA test fold (1..k, default 1), GIST514 split (0..4, default 0)
    cv: bool = False  # every fold / split, then mean ± std
    folds: Literal[5, 10] = 5  # BUS-BRA fold file
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
    layer_decay: float = 0.65  # layer-wise lr decay, ViT-B (MAE); applied only to pretrained ViTs
    drop_path: float = 0.1
    label_smoothing: float | None = None  # default 0.1 fine-tune, 0 linear probe
    mixup: float = 0.0  # alpha (0: off); MAE ImageNet uses 0.8
    cutmix: float = 0.0  # alpha (0: off); MAE ImageNet uses 1.0
    mixup_prob: float = 1.0  # probability of mixup or cutmix per batch (timm Mixup prob)
    mixup_switch_prob: float = 0.5  # probability of cutmix instead of mixup when both are on
    mixup_mode: Literal["batch", "pair", "elem"] = "batch"  # timm Mixup mode
    balanced: Literal["none", "loss", "sampler"] = "none"  # class balance: loss weights or a sampler
    clip_grad: float | None = None
    select_metric: Literal["f1", "accuracy", "auc", "loss"] = "f1"  # validation metric for model selection
    # data
    img_size: int | None = None  # default: encoder config, else 224
    in_chans: int | None = None  # default: encoder config; baselines 3
    crop_min: float = 0.2  # RandomResizedCrop lower scale
    # linear probe only: False trains the head on the eval view (resize + centre crop, no random
    # crop/flip). Frozen small-data MAE features shift with scale/aspect jitter, and the head then
    # fits views it is never tested on (measured in finetune/proof.py); True: MAE's crop + flip.
    probe_augment: bool = True
    reprob: float = 0.25  # random erasing probability
    randaug_ops: int = 2  # --aug torchvision: RandAugment num_ops (0: off)
    randaug_magnitude: int = 9  # --aug torchvision: RandAugment magnitude (of 31 bins)
    # the recipe (finetune.recipes) the CLI applied, and the augmentation knobs it fills:
    # aug="timm" is MAE's timm create_transform (auto_augment, interpolation, re_mode, re_count, hflip)
    recipe: Literal[tuple(recipes.RECIPES)] = "project"  # preset for every knob it names; options given win
    aug: Literal["torchvision", "timm"] = "torchvision"  # train transform: torchvision pipeline | timm (MAE)
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"  # --aug timm: RandAugment string; 'none' disables
    interpolation: Literal[INTERPOLATIONS] = "bicubic"  # --aug timm: random-resized-crop and eval resize
    re_mode: Literal[RE_MODES] = "pixel"  # --aug timm: random erasing fill
    re_count: int = 1  # --aug timm: random erasing boxes per image
    hflip: float = 0.5  # --aug timm: horizontal flip probability
    rotate_deg: float = 10.0  # --aug torchvision: rotation range +- degrees (0: off)
    crop_pct: float = 0.875  # eval: resize to img_size / crop_pct, centre-crop img_size
    loader: Literal["torch", "dali"] = "torch"
    workers: int = 4
    # runtime
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda (under torchrun: this rank's GPU, cuda:LOCAL_RANK)
    # auto: bf16 where the GPU/CPU runs it natively, else fp32 (trainer.precision); saved resolved
    precision: Literal[PRECISIONS] = "auto"
    save_model: bool = False  # write the selected weights as model_best.safetensors
    progress: bool = True  # tqdm bars
    # checkpoints (need output_dir): OUTPUT_DIR[/<split>]/checkpoints, see finetune.checkpoint
    save_every: int = 0  # epochs between checkpoints (0: none; the CLI default is 1)
    save_every_steps: int = 0  # also every N steps within an epoch (0: only at epoch ends)
    keep_checkpoints: int = 1  # newest checkpoints kept
    resume: str | None = None  # auto (latest checkpoint, else a fresh start) | a checkpoint dir | None


# ============================================================================ command line

# the command line differs from the Python API in these: "memory" needs records in Python,
# the paths are required, the channel count of a baseline is 1 or 3, a checkpoint every epoch
CLI_FLAGS = {
    "task": {"required": True, "choices": list(TASKS), "default": None, "help": "the downstream task"},
    "data_root": {"required": True},
    "output_dir": {"required": True},
    "in_chans": {"choices": [1, 3]},
    "save_every": {"default": 1},
    "auto_augment": {"names": ["--randaug"], "metavar": "TIMM_STRING"},
    "resume": {"nargs": "?", "const": "auto", "metavar": "auto|CKPT_DIR"},
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m finetune", description=__doc_cli__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(p, FinetuneConfig, flags=CLI_FLAGS)
    return p


def config_from_args(argv: Sequence[str] | None = None) -> FinetuneConfig:
    """The command line -> FinetuneConfig: defaults, then ``--config FILE``, then flags; then the
    recipe fills every knob neither the file nor a flag set. Raises runconfig.ConfigError."""
    cfg, _, explicit = parse(build_parser(), FinetuneConfig, argv)
    cfg.auto_augment = recipes.normalise_randaug(cfg.auto_augment)
    return recipes.apply_recipe(cfg, cfg.recipe, explicit=explicit)
