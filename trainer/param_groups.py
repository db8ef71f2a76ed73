"""Optimizer parameter groups, for pretraining and fine-tuning alike: which tensors get weight
decay, and layer-wise lr decay for timm ViTs (facebookresearch/mae ``util/lr_decay.py``, BEiT).

No weight decay (MAE / timm convention) on every 0-D/1-D tensor (biases, norm weights), on
position embeddings and tokens (``cls_token``, ``mask_token``, ...) and on the names a model lists
in ``no_weight_decay()``. Frozen parameters (``requires_grad=False``) are left out.

Layer-wise decay: the patch embedding, class token and position embedding form layer 0, block
``i`` is layer ``i + 1`` and everything after the blocks (final norm, ``fc_norm``, head) is layer
``L + 1`` with ``L`` blocks. A parameter in layer ``l`` trains at ``lr * decay ** (L + 1 - l)``: the
head at the full rate, the stem at ``decay ** (L + 1)``: pretrained low layers move least.

Every group carries ``name``, ``weight_decay`` and ``lr_scale``; the fine-tune schedule sets
``group["lr"] = lr * group["lr_scale"]`` each step (pretraining's scheduler ignores the scale: 1).
"""
from __future__ import annotations

from collections.abc import Iterable

from torch import nn

# Token-like parameters that timm ViTs keep outside the blocks; all belong to layer 0.
_STEM_NAMES = ("cls_token", "pos_embed", "reg_token", "dist_token", "mask_token", "pos_embed_prefix")


def _no_decay_names(model: nn.Module, extra: Iterable[str]) -> set[str]:
    names = set(extra)
    if hasattr(model, "no_weight_decay"):
        names |= set(model.no_weight_decay())
    return names


def _skips_decay(name: str, p: nn.Parameter, no_decay_names: set[str]) -> bool:
    return (p.ndim <= 1 or name.endswith(".bias") or "pos_embed" in name or "token" in name
            or name in no_decay_names)


def weight_decay_groups(model: nn.Module, weight_decay: float,
                        no_weight_decay_list: Iterable[str] = ()) -> list[dict]:
    """Two groups, ``decay`` then ``no_decay`` (an empty one is left out), ``lr_scale`` 1: the
    pretraining optimizer, and fine-tuning of CNNs, from-scratch models and linear probes."""
    skip = _no_decay_names(model, no_weight_decay_list)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if _skips_decay(name, p, skip) else decay).append(p)
    groups = [{"name": "decay", "params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
              {"name": "no_decay", "params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}]
    return [g for g in groups if g["params"]]


def layer_id_for_vit(name: str, num_layers: int) -> int:
    """Layer index of a timm ViT parameter name; ``num_layers`` = blocks + 1 (the head layer)."""
    if name in _STEM_NAMES or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def layer_decay_groups(model: nn.Module, weight_decay: float = 0.05, layer_decay: float = 0.75,
                       no_weight_decay_list: Iterable[str] = ()) -> list[dict]:
    """Layer-decayed groups for a timm ``VisionTransformer`` (needs ``model.blocks``), named
    ``layer_{l}_decay`` / ``layer_{l}_no_decay`` in the order their first parameter appears."""
    if not hasattr(model, "blocks"):
        raise TypeError(f"layer-wise lr decay needs a ViT with .blocks, got {type(model).__name__}")
    num_layers = len(model.blocks) + 1
    scales = [layer_decay ** (num_layers - i) for i in range(num_layers + 1)]
    skip = _no_decay_names(model, no_weight_decay_list)
    groups: dict[str, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = _skips_decay(name, p, skip)
        lid = layer_id_for_vit(name, num_layers)
        key = f"layer_{lid}_{'no_decay' if no_decay else 'decay'}"
        if key not in groups:
            groups[key] = {"name": key, "params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                           "lr_scale": scales[lid]}
        groups[key]["params"].append(p)
    return list(groups.values())
