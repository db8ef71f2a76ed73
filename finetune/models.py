"""The classifiers a fine-tune run trains: the pretrained MAE encoder as a timm ViT, timm
baselines (optionally from local weights), and the linear-probe head (facebookresearch/mae
``main_finetune.py`` / ``main_linprobe.py``). Nothing is downloaded.

:func:`build_model` turns a :class:`FinetuneConfig` into a :class:`ModelBundle`: the model plus
the input size, channels and pixel statistics the data side needs.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from timm.layers import resample_abs_pos_embed, trunc_normal_
from torch import nn

from dali_pipes.finetune_torch import GRAY_MEAN, GRAY_STD, IMAGENET_MEAN, IMAGENET_STD, channel_stats
from finetune.config import DEFAULT_ARCH, ENCODER, FinetuneConfig
from trainer.weights import DECODER_PREFIXES, Norm, convert_input_conv, load_into_vit, read_state_dict, read_weights

log = logging.getLogger("finetune.models")


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
        # the gray-equivalent conversion the MAE weights get (sum RGB / spread gray); a baseline's
        # pixel statistics are its own (ImageNet or gray), so no normalisation change here
        src, dst = Norm.identity(sd[key].shape[1]), Norm.identity(own[key].shape[1])
        sd[key] = convert_input_conv(sd[key], None, src, dst)[0]
    return sd


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
        enc = {**read_weights(Path(arch).expanduser()).encoder_config(), "source": "random init"}
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
    model = timm.create_model(enc["timm_name"], pretrained=False, num_classes=num_classes, in_chans=chans,
                              global_pool=global_pool, drop_path_rate=drop_path, **arch_kw)
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
        sd = _adapt_state_dict(model, read_state_dict(ckpt))
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
