"""Named fine-tune recipes: presets that fill a :class:`finetune.config.FinetuneConfig`, each
value with its source, every value still overridable on the command line.

    python -m finetune --recipe mae_vit_b ...            # MAE's ViT-B fine-tune recipe
    python -m finetune --recipe mae_vit_b --mixup 0 ...  # ... with one knob changed
    cfg = apply_recipe(FinetuneConfig(task="busbra", ...), "mae_vit_b")   # Python

Recipes: ``project`` (this repository's default, unchanged), ``mae_vit_b`` / ``mae_vit_l`` /
``mae_vit_h`` (facebookresearch/mae FINETUNE.md, main_finetune.py, util/datasets.py) and
``usf_mae_paper`` (what the USF-MAE authors published: nothing of their fine-tune settings, see
its entry). A ``None`` field is not set by the recipe: the config keeps its own value.

Sources, as read (search tool, stored copies):
- ``FINETUNE.md`` — facebookresearch/mae @2f170f2, "Fine-tuning" scripts for ViT-B/L/H.
- ``main_finetune.py`` — facebookresearch/mae, ``get_args_parser`` defaults (aa, smoothing,
  reprob/remode/recount, warmup_epochs, min_lr, color_jitter, mixup_prob/switch_prob/mode).
- ``util/datasets.py`` — facebookresearch/mae @be47fef, ``build_transform``: timm
  ``create_transform(is_training=True, color_jitter, auto_augment=aa, interpolation='bicubic',
  re_prob, re_mode, re_count, mean, std)``; eval ``Resize(int(224 / (224/256)), BICUBIC)`` +
  ``CenterCrop(224)`` (crop_pct 1.0 above 224).
- timm ``transforms_imagenet_train`` defaults for what MAE leaves unset: scale (0.08, 1),
  ratio (3/4, 4/3), hflip 0.5.
- Yusufii9/USF-MAE: ``README.md`` @5c8efa1, ``US_data_loading.py`` and
  ``USF-MAE_pretraining.ipynb`` @154b581 — pretraining only.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

log = logging.getLogger("finetune.recipes")

MAE_RANDAUG = "rand-m9-mstd0.5-inc1"


@dataclass(frozen=True)
class Recipe:
    """A fine-tune preset. Every field but ``name``/``summary``/``sources``/``reference``/
    ``unpublished`` is a :class:`FinetuneConfig` field; None: left as the config has it."""

    name: str
    summary: str
    # schedule / optimiser
    epochs: int | None = None
    warmup_epochs: float | None = None
    blr: float | None = None
    min_lr: float | None = None
    weight_decay: float | None = None
    layer_decay: float | None = None
    drop_path: float | None = None
    clip_grad: float | None = None
    # targets
    label_smoothing: float | None = None
    mixup: float | None = None
    cutmix: float | None = None
    mixup_prob: float | None = None
    mixup_switch_prob: float | None = None
    mixup_mode: str | None = None
    # augmentation
    aug: str | None = None  # torchvision | timm (dali_pipes.timm_aug)
    auto_augment: str | None = None  # timm RandAugment string (aug="timm")
    randaug_ops: int | None = None  # aug="torchvision": RandAugment num_ops (0: off)
    randaug_magnitude: int | None = None  # aug="torchvision": magnitude of 31 bins
    interpolation: str | None = None
    crop_min: float | None = None
    hflip: float | None = None
    rotate_deg: float | None = None
    reprob: float | None = None
    re_mode: str | None = None
    re_count: int | None = None
    crop_pct: float | None = None
    # where each value comes from, values the source gives but the recipe does not apply, and
    # settings the source does not publish
    sources: dict[str, str] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)
    unpublished: tuple[str, ...] = ()

    def values(self) -> dict[str, Any]:
        """The config fields this recipe sets (its non-None knobs)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in _META and getattr(self, f.name) is not None}


_META = {"name", "summary", "sources", "reference", "unpublished"}
KNOBS = tuple(f.name for f in fields(Recipe) if f.name not in _META)

_FT = "facebookresearch/mae FINETUNE.md"
_ARGS = "facebookresearch/mae main_finetune.py default"
_DS = "facebookresearch/mae util/datasets.py"
_TIMM = "timm create_transform default (MAE leaves it unset)"


def _mae(name: str, summary: str, *, epochs: int, blr: float, layer_decay: float, drop_path: float,
         batch: int) -> Recipe:
    """The MAE fine-tune recipe of one model size (values that differ by size as arguments)."""
    return Recipe(
        name=name, summary=summary,
        epochs=epochs, warmup_epochs=5, blr=blr, min_lr=1e-6, weight_decay=0.05, layer_decay=layer_decay,
        drop_path=drop_path, clip_grad=None, label_smoothing=0.1, mixup=0.8, cutmix=1.0,
        mixup_prob=1.0, mixup_switch_prob=0.5, mixup_mode="batch",
        aug="timm", auto_augment=MAE_RANDAUG, interpolation="bicubic", crop_min=0.08, hflip=0.5, rotate_deg=0.0,
        reprob=0.25, re_mode="pixel", re_count=1, crop_pct=224 / 256,
        sources={
            "epochs": _FT, "blr": _FT, "layer_decay": _FT, "weight_decay": _FT, "drop_path": _FT,
            "reprob": _FT, "mixup": _FT, "cutmix": _FT,
            "warmup_epochs": _ARGS, "min_lr": _ARGS, "label_smoothing": f"{_ARGS} (--smoothing)",
            "clip_grad": f"{_ARGS} (None: no clipping)", "auto_augment": f"{_ARGS} (--aa)",
            "mixup_prob": _ARGS, "mixup_switch_prob": _ARGS, "mixup_mode": _ARGS,
            "re_mode": f"{_ARGS} (--remode)", "re_count": f"{_ARGS} (--recount)",
            "interpolation": _DS, "crop_pct": f"{_DS} (224/256 up to 224 px; MAE uses 1.0 above: pass --crop-pct 1)",
            "crop_min": f"{_TIMM}: scale (0.08, 1)", "hflip": _TIMM,
            "rotate_deg": f"{_DS}: no rotation in the transform", "aug": _DS,
        },
        reference={
            "global_batch": (batch, f"{_FT}: lr = blr x global batch / 256; not applied — batch_size is per "
                                    "rank and sized to the data set (a 1-2k image set would make 1-2 steps)"),
            "color_jitter": (None, f"{_ARGS}; timm also disables it when auto_augment is set"),
            "global_pool": (True, f"{_ARGS}; the encoder here is built with global_pool='avg'"),
            "mean / std": ("ImageNet", f"{_DS}; here the encoder's own statistics (part of the weights)"),
        })


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe(
        name="project", summary="this repository's default (torchvision pipeline, small-data schedule)",
        epochs=50, warmup_epochs=5.0, blr=None, min_lr=1e-6, weight_decay=None, layer_decay=0.65, drop_path=0.1,
        clip_grad=None, label_smoothing=None, mixup=0.0, cutmix=0.0, mixup_prob=1.0, mixup_switch_prob=0.5,
        mixup_mode="batch",
        aug="torchvision", randaug_ops=2, randaug_magnitude=9, crop_min=0.2, hflip=0.5, rotate_deg=10.0,
        reprob=0.25, crop_pct=0.875,
        sources={"*": "finetune/config.py FinetuneConfig defaults; blr / weight_decay / label_smoothing None: "
                      "5e-4 / 0.05 / 0.1 fine-tuning, 0.05 / 0 / 0 linear probe (resolve_config)"}),
    _mae("mae_vit_b", "MAE ViT-B/16 fine-tune (ImageNet 83.6)", epochs=100, blr=5e-4, layer_decay=0.65,
         drop_path=0.1, batch=1024),
    _mae("mae_vit_l", "MAE ViT-L/16 fine-tune (ImageNet 85.9)", epochs=50, blr=1e-3, layer_decay=0.75,
         drop_path=0.2, batch=1024),
    _mae("mae_vit_h", "MAE ViT-H/14 fine-tune (ImageNet 86.9)", epochs=50, blr=1e-3, layer_decay=0.75,
         drop_path=0.3, batch=1024),
    Recipe(
        name="usf_mae_paper",
        summary="USF-MAE's own fine-tune settings: not published; sets nothing, says so",
        sources={"*": "Yusufii9/USF-MAE README.md @5c8efa1 (no fine-tune section), US_data_loading.py and "
                      "USF-MAE_pretraining.ipynb @154b581 (pretraining only)"},
        reference={
            "pretraining (notebook)": ("AdamW, lr = blr x 128/256 with blr in {3e-4, 1e-3}, wd in {0.01, 0.05}, "
                                       "100 epochs, batch 64, 10% warmup + half-cosine to 1e-5, clip 1.0, bf16",
                                       "USF-MAE_pretraining.ipynb — the MAE pretraining, not the fine-tune"),
            "loader transform": ("Resize((224, 224), NEAREST), RandomRotation((0, 90)), hflip 0.5, vflip 0.5, "
                                 "RandomResizedCrop(224, scale=(0.5, 2.0)), ImageNet mean/std, RGB",
                                 "US_data_loading.py get_transforms — used by the pretraining notebook"),
        },
        unpublished=KNOBS),
)}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}") from None


def apply_recipe(cfg, name: str, explicit: Sequence[str] = ()):
    """Copy of ``cfg`` (a FinetuneConfig) with recipe ``name``'s values, except the fields named
    in ``explicit`` (set by the user: they win). Records the name in ``cfg.recipe``."""
    r = get_recipe(name)
    out = copy.deepcopy(cfg)
    for k, v in r.values().items():
        if k not in explicit:
            setattr(out, k, v)
    out.recipe = name
    if r.unpublished:
        log.warning("recipe %s: %d setting(s) are not published by its source (%s); they keep this run's "
                    "values", name, len(r.unpublished), r.sources.get("*", "see finetune/recipes.py"))
    return out


# ---------------------------------------------------------------------------- command line

def normalise_randaug(value: str | None) -> str | None:
    """CLI 'none' / '' -> None (no RandAugment)."""
    return None if value is None or value.strip().lower() in ("", "none", "off") else value


# ---------------------------------------------------------------------------- documentation

def recipe_table_markdown(names: Sequence[str] = ("project", "mae_vit_b", "mae_vit_l")) -> str:
    """Markdown table: one row per knob, one column per recipe, values as applied."""
    recs = [get_recipe(n) for n in names]
    rows = ["| knob | " + " | ".join(f"`{r.name}`" for r in recs) + " |",
            "|---|" + "---|" * len(recs)]
    for k in KNOBS:
        vals = [getattr(r, k) for r in recs]
        if all(v is None for v in vals):
            continue
        cells = ["—" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v) for v in vals]
        rows.append(f"| `{k}` | " + " | ".join(cells) + " |")
    return "\n".join(rows)


__all__ = ["KNOBS", "MAE_RANDAUG", "RECIPES", "Recipe", "apply_recipe", "get_recipe", "normalise_randaug",
           "recipe_table_markdown"]
