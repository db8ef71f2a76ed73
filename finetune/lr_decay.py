"""Optimizer parameter groups for fine-tuning: layer-wise lr decay for timm ViTs (as in
facebookresearch/mae ``util/lr_decay.py`` and BEiT) and plain weight-decay groups otherwise.

Layer-wise decay: the patch embedding, class token and position embedding form layer 0, block
``i`` is layer ``i + 1`` and everything after the blocks (final norm, ``fc_norm``, head) is layer
``L + 1`` with ``L`` blocks. A parameter in layer ``l`` trains at ``lr * decay ** (L + 1 - l)``: the
head at the full rate, the stem at ``decay ** (L + 1)`` — pretrained low layers move least.

The scale is stored in each group's ``lr_scale``; the schedule multiplies it in every step
(``group["lr"] = lr * group["lr_scale"]``). Bias, norm weights (every 1-D tensor) and the
model's ``no_weight_decay()`` names (pos_embed, cls_token, ...) get no weight decay.
"""
from __future__ import annotations

from collections.abc import Iterable

from torch import nn

# Token-like parameters that timm ViTs keep outside the blocks; all belong to layer 0.
_STEM_NAMES = ("cls_token", "pos_embed", "reg_token", "dist_token", "mask_token", "pos_embed_prefix")


def layer_id_for_vit(name: str, num_layers: int) -> int:
    """Layer index of a timm ViT parameter name; ``num_layers`` = blocks + 1 (the head layer)."""
    if name in _STEM_NAMES or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def _no_decay_names(model: nn.Module, extra: Iterable[str]) -> set[str]:
    names = set(extra)
    if hasattr(model, "no_weight_decay"):
        names |= set(model.no_weight_decay())
    return names


def param_groups_lrd(model: nn.Module, weight_decay: float = 0.05, layer_decay: float = 0.75,
                     no_weight_decay_list: Iterable[str] = ()) -> list[dict]:
    """Layer-decayed parameter groups for a timm ``VisionTransformer`` (needs ``model.blocks``).

    Frozen parameters (``requires_grad=False``) are left out. Returns a list of
    ``{"params", "weight_decay", "lr_scale", "name"}`` dicts ready for ``torch.optim.AdamW``.
    """
    if not hasattr(model, "blocks"):
        raise TypeError(f"layer-wise lr decay needs a ViT with .blocks, got {type(model).__name__}")
    num_layers = len(model.blocks) + 1
    scales = [layer_decay ** (num_layers - i) for i in range(num_layers + 1)]
    skip = _no_decay_names(model, no_weight_decay_list)
    groups: dict[str, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim == 1 or name in skip
        lid = layer_id_for_vit(name, num_layers)
        key = f"layer_{lid}_{'no_decay' if no_decay else 'decay'}"
        if key not in groups:
            groups[key] = {"name": key, "params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                           "lr_scale": scales[lid]}
        groups[key]["params"].append(p)
    return list(groups.values())


def param_groups_weight_decay(model: nn.Module, weight_decay: float = 0.05,
                              no_weight_decay_list: Iterable[str] = ()) -> list[dict]:
    """Two groups (decay / no decay) with ``lr_scale`` 1 — for CNNs and linear probes."""
    skip = _no_decay_names(model, no_weight_decay_list)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim == 1 or name in skip else decay).append(p)
    groups = []
    if decay:
        groups.append({"name": "decay", "params": decay, "weight_decay": weight_decay, "lr_scale": 1.0})
    if no_decay:
        groups.append({"name": "no_decay", "params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0})
    return groups
