"""One weight loader for every ``--init``: pretraining, fine-tuning and the reconstruction viewer.

``read_weights(PATH)`` detects what PATH is and returns a :class:`Weights`: the tensors split into
encoder / decoder / classifier in one key layout, the architecture they imply, and the input
normalisation they expect. ``load_into_mae`` / ``load_into_vit`` then fit them to a model (position
embeddings resized to its grid, 3 <-> 1 input channels, pixel normalisation folded in) and log
what was loaded, skipped and converted.

Formats (``Weights.fmt``):
- ``usf-mae``: a bare ``torch.save(model.state_dict())`` of facebookresearch/mae's
  ``MaskedAutoencoderViT`` (the USF-MAE release: encoder + decoder, 3 channels, ImageNet mean/std).
- ``mae``: a facebookresearch/mae checkpoint ``{"model": state_dict, ...}``: the released
  ``mae_pretrain_vit_*.pth`` (encoder only), ``mae_visualize_*.pth`` / ``checkpoint-N.pth``
  (encoder + decoder) or a ``models_vit`` fine-tune (``fc_norm`` + ``head``). ImageNet mean/std.
- ``timm``: a timm VisionTransformer state dict (``.safetensors`` / ``.bin`` / ``.pth``, e.g.
  ``vit_base_patch16_224.mae``), or a timm/Hugging Face model folder (``config.json`` with
  ``pretrained_cfg`` + weights), which is also what ``trainer.export`` writes.
- ``export``: an export of this project in the older schema (``config.json`` with ``timm_name``).
- ``checkpoint``: a training run, its ``checkpoints/`` dir or one tag (``mae.safetensors`` +
  ``mae_config.json``); mean/std from the shards' manifest.

Key layout (the one facebookresearch/mae, timm and ``trainer.model`` share): encoder
``cls_token, pos_embed [1, 1+N, D], patch_embed.proj.{weight [D, C, p, p], bias}, blocks.K.*,
norm.*``; decoder ``mask_token, decoder_embed.*, decoder_pos_embed, decoder_blocks.K.*,
decoder_norm.*, decoder_pred.{weight [p*p*C, Dd], bias}``; classifier ``fc_norm.*, head.*``.
Nothing is unpickled: safetensors, or ``torch.load(weights_only=True)`` (``argparse.Namespace``,
which facebookresearch's training checkpoints carry as ``args``, is the one class allowed).
"""
from __future__ import annotations

import argparse
import json
import logging
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import nn

from .checkpoint import LATEST, read_latest
from .model import MAEConfig, MaskedAutoencoderViT

log = logging.getLogger("trainer.weights")

ENCODER_PREFIXES = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")
DECODER_PREFIXES = ("mask_token", "decoder_")
CLASSIFIER_PREFIXES = ("fc_norm.", "head.")
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "pytorch_model.pth")  # timm's order
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# checkpoints whose run config no longer points at a manifest (the trainer's old default)
FALLBACK_GRAY = ((0.5,), (0.25,))
# timm / MAE head counts by width (head dim 64; ViT-H/14 80); other widths: D // 64
_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}


class WeightsError(ValueError):
    """A weights file that cannot be read or does not fit; the message names the file."""


@dataclass(frozen=True)
class Norm:
    """Per-channel input normalisation x -> (x - mean) / std on the 0..1 pixel scale."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, mean, std, chans: int) -> "Norm":
        """From scalars (gray, replicated) or per-channel sequences; 3 values for 1 channel are
        averaged (a gray image replicated to RGB sees the average)."""
        def one(v) -> tuple[float, ...]:
            vals = (float(v),) if isinstance(v, (int, float)) else tuple(float(x) for x in v)
            if len(vals) == chans:
                return vals
            if len(vals) == 1:
                return vals * chans
            if chans == 1:
                return (sum(vals) / len(vals),)
            raise ValueError(f"{len(vals)} normalisation values for {chans} channels")
        return cls(one(mean), one(std))

    @classmethod
    def identity(cls, chans: int) -> "Norm":
        return cls((0.0,) * chans, (1.0,) * chans)

    @property
    def chans(self) -> int:
        return len(self.mean)


@dataclass
class Weights:
    """Tensors from one file or folder, in the shared key layout (module docstring)."""

    source: Path
    fmt: str  # usf-mae | mae | timm | export | checkpoint
    encoder: dict[str, torch.Tensor]
    decoder: dict[str, torch.Tensor]
    classifier: dict[str, torch.Tensor]
    config: MAEConfig  # architecture (decoder fields only meaningful when ``decoder``)
    norm: Norm  # the normalisation the weights expect
    timm_name: str = "vit_base_patch16_224"  # timm architecture the encoder loads into
    notes: list[str] = field(default_factory=list)  # how format, heads and stats were determined

    @property
    def has_decoder(self) -> bool:
        return bool(self.decoder)

    def describe(self) -> str:
        c = self.config
        dec = f", decoder {c.decoder_depth}x{c.decoder_embed_dim}" if self.has_decoder else ", no decoder"
        return (f"{self.source} [{self.fmt}]: ViT patch {c.patch_size}, {c.embed_dim} wide, {c.depth} deep, "
                f"{c.num_heads} heads, {c.in_chans} ch @ {c.img_size}px{dec}; expects mean "
                f"{_fmt(self.norm.mean)} std {_fmt(self.norm.std)}")

    def encoder_config(self) -> dict:
        """The encoder as the fine-tune runner describes it (the older export schema's keys)."""
        c = self.config
        return {"timm_name": self.timm_name, "img_size": c.img_size, "patch_size": c.patch_size,
                "in_chans": c.in_chans, "embed_dim": c.embed_dim, "depth": c.depth, "num_heads": c.num_heads,
                "mlp_ratio": c.mlp_ratio, "mean": _gray_or_list(self.norm.mean),
                "std": _gray_or_list(self.norm.std), "format": self.fmt}


@dataclass
class LoadReport:
    """What ``load_into_*`` did; ``str()`` is the log line."""

    source: Path
    fmt: str
    loaded: int = 0
    converted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # in the file, not used by the model
    missing: list[str] = field(default_factory=list)  # in the model, not in the file (kept as initialised)
    norm: Norm | None = None  # what the loaded model expects

    def __str__(self) -> str:
        parts = [f"init from {self.source} [{self.fmt}]: {self.loaded} tensors loaded"]
        if self.converted:
            parts.append("converted: " + "; ".join(self.converted))
        if self.skipped:
            parts.append("skipped (not used): " + _groups(self.skipped))
        if self.missing:
            parts.append("not in file (initialised fresh): " + _groups(self.missing))
        if self.norm is not None:
            parts.append(f"expects mean {_fmt(self.norm.mean)} std {_fmt(self.norm.std)}")
        return " | ".join(parts)


# ============================================================================ reading

def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors or torch file (``weights_only``), unwrapped from ``{"model": ...}``
    / ``{"state_dict": ...}`` / ``{"module": ...}``, ``module.``/``model.`` prefixes stripped."""
    return _read_file(Path(path).expanduser())[0]


def _read_file(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """-> (state dict, whether it came wrapped in a facebookresearch-style ``{"model": ...}``)."""
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return _strip(load_file(str(path))), False
        except Exception as e:
            raise WeightsError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path}: cannot be read as weights (safetensors, or torch.save of tensors "
                           f"loaded with weights_only=True): {type(e).__name__}: {str(e)[:200]}") from e
    wrapped = False
    for key in ("model", "state_dict", "model_state", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj, wrapped = obj[key], True
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: holds no state dict (a dict of tensors, possibly under 'model')")
    return _strip(obj), wrapped


def _strip(sd: dict) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for prefix in ("module.", "model."):
            k = k.removeprefix(prefix)
        out[k] = v
    return out


def read_weights(path: str | Path) -> Weights:
    """Detects the format of ``path`` (module docstring) and reads it."""
    p = Path(path).expanduser()
    if p.is_file() and p.name in ("mae.safetensors", "mae_config.json"):
        p = p.parent
    elif p.name in HUB_WEIGHT_FILES and (p.parent / "config.json").is_file():
        p = p.parent  # the weights file of an export / hub folder: the folder describes it
    if p.is_dir():  # a run dir has a config.json too (the training config): checkpoints first
        if any((c / n).exists() for c in (p, p / "checkpoints") for n in ("mae.safetensors", LATEST)):
            return _read_checkpoint(p)
        if (p / "config.json").is_file():
            return _read_export(p)
        return _read_checkpoint(p)  # raises: names what is missing
    if not p.exists():
        raise WeightsError(f"{p}: no such file or directory")
    sd, wrapped = _read_file(p)
    enc, dec, clf = split_state_dict(sd, p)
    if dec and not wrapped:
        fmt, note = "usf-mae", "a whole MaskedAutoencoderViT state dict (the USF-MAE release format)"
    elif wrapped:
        fmt, note = "mae", "a facebookresearch/mae checkpoint ({'model': ...})"
    else:
        fmt, note = "timm", "a timm VisionTransformer state dict"
    cfg = infer_config(enc, dec, p)
    # no metadata in these files: the normalisation they were trained with is ImageNet's
    # (facebookresearch/mae, USF-MAE, timm's .mae weights); a 1-channel file gets its gray average
    norm = Norm.of(IMAGENET_MEAN, IMAGENET_STD, cfg.in_chans)
    notes = [note, f"normalisation assumed ImageNet (no metadata in {p.name})", f"{cfg.num_heads} heads "
             f"(from width {cfg.embed_dim}: timm/MAE convention)"]
    return Weights(p, fmt, enc, dec, clf, cfg, norm, timm_family(cfg), notes)


def split_state_dict(sd: dict[str, torch.Tensor], path: Path
                     ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """-> (encoder, decoder, classifier) tensors; anything else is an error naming the keys."""
    enc = {k: v for k, v in sd.items() if k.startswith(ENCODER_PREFIXES)}
    dec = {k: v for k, v in sd.items() if k.startswith(DECODER_PREFIXES)}
    clf = {k: v for k, v in sd.items() if k.startswith(CLASSIFIER_PREFIXES)}
    other = sorted(set(sd) - set(enc) - set(dec) - set(clf))
    if other:
        raise WeightsError(f"{path}: not a ViT / MAE state dict (keys it does not know: {other[:6]}"
                           f"{' ...' if len(other) > 6 else ''})")
    if "patch_embed.proj.weight" not in enc or "pos_embed" not in enc:
        raise WeightsError(f"{path}: no patch_embed.proj.weight / pos_embed: not a ViT encoder "
                           f"(keys: {sorted(sd)[:6]})")
    return enc, dec, clf


def infer_config(enc: dict[str, torch.Tensor], dec: dict[str, torch.Tensor], path: Path,
                 num_heads: int | None = None, decoder_num_heads: int | None = None) -> MAEConfig:
    """The architecture the tensors imply. Head counts are not in the shapes: given, or from the
    width by the timm/MAE convention (decoder: 16 heads at 512 wide as in MAE, else 32 per head)."""
    w = enc["patch_embed.proj.weight"]
    if w.ndim != 4 or w.shape[2] != w.shape[3]:
        raise WeightsError(f"{path}: patch_embed.proj.weight has shape {tuple(w.shape)}, expected [D, C, p, p]")
    d, c, p = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    n = enc["pos_embed"].shape[1] - 1
    grid = int(round(n ** 0.5))
    if grid * grid != n:
        raise WeightsError(f"{path}: pos_embed has {n} patch positions, not a square grid")
    depth = 1 + max((int(m.group(1)) for k in enc if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    if depth == 0:
        raise WeightsError(f"{path}: no transformer blocks (blocks.N.*)")
    mlp = enc["blocks.0.mlp.fc1.weight"].shape[0] / d
    kw = dict(img_size=grid * p, patch_size=p, in_chans=c, embed_dim=d, depth=depth,
              num_heads=num_heads or _HEADS.get(d, max(1, d // 64)), mlp_ratio=mlp)
    if dec:
        dd = int(dec["decoder_embed.weight"].shape[0])
        kw.update(decoder_embed_dim=dd,
                  decoder_depth=1 + max(int(m.group(1)) for k in dec if (m := re.match(r"decoder_blocks\.(\d+)\.", k))),
                  decoder_num_heads=decoder_num_heads or (16 if dd == 512 else max(1, dd // 32)))
        if dec["decoder_pred.weight"].shape[0] != p * p * c:
            raise WeightsError(f"{path}: decoder_pred predicts {dec['decoder_pred.weight'].shape[0]} values per "
                               f"patch, the encoder's patches hold {p * p * c}")
    return MAEConfig(**kw)


def timm_family(cfg: MAEConfig) -> str:
    """A registered timm ViT name for the encoder: exact where timm has one (e.g.
    ``vit_base_patch16_224``), else the same width's family; the exact shape always travels in
    ``model_args`` (timm's ``create_model`` overrides the registered defaults with them)."""
    import timm

    size = {192: "tiny", 384: "small", 768: "base", 1024: "large", 1280: "huge"}.get(cfg.embed_dim, "base")
    for name in (f"vit_{size}_patch{cfg.patch_size}_{cfg.img_size}", f"vit_{size}_patch{cfg.patch_size}_224",
                 f"vit_{size}_patch16_224", f"vit_{size}_patch14_224", "vit_base_patch16_224"):
        if timm.is_model(name):
            return name
    return "vit_base_patch16_224"


def _read_export(d: Path) -> Weights:
    """A timm/Hugging Face model folder (``architecture`` + ``pretrained_cfg``) or an export in the
    older schema (``timm_name``, scalar mean/std)."""
    cfg_path = d / "config.json"
    try:
        meta = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise WeightsError(f"{cfg_path}: cannot read ({e})") from e
    wfile = next((d / n for n in HUB_WEIGHT_FILES if (d / n).is_file()), None)
    if wfile is None:
        raise WeightsError(f"{d}: config.json but no model.safetensors / pytorch_model.bin")
    sd, _ = _read_file(wfile)
    enc, dec, clf = split_state_dict(sd, wfile)
    if dec:  # an export is the encoder; decoder keys mean the file is not what config.json says
        raise WeightsError(f"{wfile}: an encoder export holding decoder tensors {sorted(dec)[:4]}")
    if "architecture" in meta:
        pc, args = meta.get("pretrained_cfg", {}), meta.get("model_args", {})
        cfg = infer_config(enc, {}, wfile, num_heads=args.get("num_heads"))
        norm = Norm.of(pc.get("mean", IMAGENET_MEAN), pc.get("std", IMAGENET_STD), cfg.in_chans)
        fmt, name, note = "timm", meta["architecture"], f"timm model folder ({cfg_path.name}: architecture)"
    elif "timm_name" in meta:
        cfg = infer_config(enc, {}, wfile, num_heads=meta.get("num_heads"))
        norm = Norm.of(meta.get("mean", FALLBACK_GRAY[0]), meta.get("std", FALLBACK_GRAY[1]), cfg.in_chans)
        fmt, name, note = "export", meta["timm_name"], f"export, older schema ({cfg_path.name}: timm_name)"
    else:
        raise WeightsError(f"{cfg_path}: neither a timm config (architecture) nor an export config (timm_name)")
    return Weights(d, fmt, enc, {}, clf, cfg, norm, name, [note])


def find_tag_dir(path: str | Path) -> Path:
    """A checkpoint tag dir (``mae.safetensors`` + ``mae_config.json``) from a tag dir, a
    ``checkpoints/`` dir (its ``latest``) or a run's output dir."""
    p = Path(path)
    for cand in (p, p / "checkpoints"):
        if (cand / "mae.safetensors").exists():
            return cand
        tag = read_latest(cand)
        if tag and (cand / tag / "mae.safetensors").exists():
            return cand / tag
    raise WeightsError(f"{p}: not a weights file, export folder or checkpoint (no config.json, no "
                       f"mae.safetensors here or under its latest checkpoint)")


def run_manifest(tag: Path) -> dict | None:
    """The shards' manifest a checkpoint tag was trained on (via the run's config.json), if found."""
    run_cfg = tag.parent.parent / "config.json"
    if not run_cfg.exists():
        return None
    data = json.loads(run_cfg.read_text()).get("train", {}).get("data")
    if data and (Path(data) / "manifest.json").exists():
        return json.loads((Path(data) / "manifest.json").read_text())
    return None


def _read_checkpoint(d: Path) -> Weights:
    from safetensors.torch import load_file

    tag = find_tag_dir(d)
    known = {f.name for f in fields(MAEConfig)}
    saved = json.loads((tag / "mae_config.json").read_text())
    cfg = MAEConfig(**{k: v for k, v in saved.items() if k in known})
    enc, dec, clf = split_state_dict(_strip(load_file(str(tag / "mae.safetensors"))), tag / "mae.safetensors")
    manifest = run_manifest(tag)
    if manifest:
        ps = manifest["pixel_stats"]
        norm, note = Norm.of(ps["mean"], ps["std"], cfg.in_chans), "normalisation from the shards' manifest"
    else:
        norm, note = Norm.of(*FALLBACK_GRAY, cfg.in_chans), "manifest not found: normalisation 0.5 / 0.25 assumed"
        log.warning("%s: %s", tag, note)
    return Weights(tag, "checkpoint", enc, dec, clf, cfg, norm, timm_family(cfg), [note])


# ============================================================================ conversion

def convert_input_conv(w: torch.Tensor, b: torch.Tensor | None, src: Norm, dst: Norm
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Patch-embedding conv (w [D, Cs, p, p], b [D]) trained on inputs normalised with ``src``
    -> the conv for inputs normalised with ``dst``, same outputs on the same image.

    Same channel count: exact for any image (w_c * dst.std_c / src.std_c, the mean shift moves to
    the bias). Other counts: exact for a gray image (all channels equal), the case here: the gray
    response A = sum_c w_c / src.std_c is spread as w'_c = A * dst.std_c / Cd. With identity
    norms this is the plain sum over RGB (1 channel) or even spread (3 channels)."""
    w, b = w.float(), None if b is None else b.float()
    ms, ss = torch.tensor(src.mean), torch.tensor(src.std)
    md, sd = torch.tensor(dst.mean), torch.tensor(dst.std)
    bias = torch.zeros(w.shape[0]) if b is None else b
    if src.chans == dst.chans:
        w2 = w * (sd / ss)[None, :, None, None]
        b2 = bias + (w * ((md - ms) / ss)[None, :, None, None]).sum(dim=(1, 2, 3))
    else:
        a = (w / ss[None, :, None, None]).sum(dim=1, keepdim=True)  # [D, 1, p, p]: response to raw gray
        b0 = bias - (w * (ms / ss)[None, :, None, None]).sum(dim=(1, 2, 3))
        w2 = a * sd[None, :, None, None] / dst.chans
        b2 = b0 + a.sum(dim=(1, 2, 3)) * md.mean()
    return w2, (None if b is None and torch.all(b2 == 0) else b2)


def convert_pixel_head(w: torch.Tensor, b: torch.Tensor, patch: int, src: Norm, dst: Norm
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder pixel head (w [p*p*Cs, Dd], b [p*p*Cs], channel fastest as ``patchify`` lays it
    out) predicting ``src``-normalised pixels -> predicting ``dst``-normalised ones. Other channel
    counts: the gray estimate mean_c(src.std_c * y_c + src.mean_c) is renormalised per channel."""
    w, b = w.float(), b.float()
    cs, dd = src.chans, w.shape[1]
    w3, b3 = w.reshape(patch * patch, cs, dd), b.reshape(patch * patch, cs)
    ms, ss = torch.tensor(src.mean), torch.tensor(src.std)
    md, sd = torch.tensor(dst.mean), torch.tensor(dst.std)
    if cs == dst.chans:
        w2 = w3 * (ss / sd)[None, :, None]
        b2 = (b3 * ss + ms - md) / sd
    else:
        gw = (w3 * ss[None, :, None]).mean(dim=1, keepdim=True)  # [pp, 1, Dd]: raw gray estimate
        gb = (b3 * ss + ms).mean(dim=1, keepdim=True)
        w2 = gw / sd[None, :, None]
        b2 = (gb - md) / sd
    return w2.reshape(-1, dd), b2.reshape(-1)


def _resize_pos(t: torch.Tensor, grid: int, key: str, report: LoadReport) -> torch.Tensor:
    from timm.layers import resample_abs_pos_embed

    old = int(round((t.shape[1] - 1) ** 0.5))
    if old == grid:
        return t
    report.converted.append(f"{key} {old}x{old} -> {grid}x{grid} (bicubic)")
    return resample_abs_pos_embed(t.float(), new_size=[grid, grid], old_size=[old, old], num_prefix_tokens=1)


def _fit(weights: Weights, sd: dict[str, torch.Tensor], model_sd: dict[str, torch.Tensor], grid: int,
         dst: Norm | None, report: LoadReport, norm_pix: bool = False) -> dict[str, torch.Tensor]:
    """Resize position embeddings, convert channels / normalisation; then every shape must fit.
    ``norm_pix``: the decoder predicts per-patch normalised pixels (``norm_pix_loss``), which a
    per-channel affine change of the input does not move: its head only averages/spreads channels."""
    src = weights.norm
    chans = model_sd["patch_embed.proj.weight"].shape[1]
    if dst is None:  # data normalised the weights' way; channels replicated (plain sum / spread)
        src, dst = Norm.identity(src.chans), Norm.identity(chans)
    if dst.chans != chans:
        raise ValueError(f"{dst.chans} normalisation values for a {chans}-channel model")
    sd = dict(sd)
    for key in ("pos_embed", "decoder_pos_embed"):
        if key in sd and key in model_sd:
            sd[key] = _resize_pos(sd[key], grid, key, report)
    if src != dst:
        what = f"{src.chans} -> {dst.chans} channels" if src.chans != dst.chans else "normalisation"
        w, b = convert_input_conv(sd["patch_embed.proj.weight"], sd.get("patch_embed.proj.bias"), src, dst)
        sd["patch_embed.proj.weight"] = w
        if b is not None:
            sd["patch_embed.proj.bias"] = b
        report.converted.append(f"patch_embed {what} (mean {_fmt(src.mean)} std {_fmt(src.std)} -> "
                                f"mean {_fmt(dst.mean)} std {_fmt(dst.std)})")
        if "decoder_pred.weight" in sd and "decoder_pred.weight" in model_sd:
            hs, hd = (Norm.identity(src.chans), Norm.identity(dst.chans)) if norm_pix else (src, dst)
            if hs != hd:
                sd["decoder_pred.weight"], sd["decoder_pred.bias"] = convert_pixel_head(
                    sd["decoder_pred.weight"], sd["decoder_pred.bias"], weights.config.patch_size, hs, hd)
                report.converted.append(f"decoder_pred {what}" + (" (averaged: norm_pix_loss)" if norm_pix else ""))
    bad = [f"{k} {tuple(v.shape)} vs model {tuple(model_sd[k].shape)}" for k, v in sd.items()
           if k in model_sd and v.shape != model_sd[k].shape]
    if bad:
        raise WeightsError(f"{weights.source}: does not fit the model: {bad[:4]}")
    return sd


def _check_arch(weights: Weights, cfg_like: dict, what: str) -> None:
    c = weights.config
    mine = {"patch_size": c.patch_size, "embed_dim": c.embed_dim, "depth": c.depth}
    diff = {k: (mine[k], cfg_like[k]) for k in mine if cfg_like.get(k) is not None and mine[k] != cfg_like[k]}
    if diff:
        raise WeightsError(f"{weights.source}: architecture differs from {what}: "
                           + ", ".join(f"{k} {a} in the file vs {b}" for k, (a, b) in diff.items()))


def load_into_mae(model: MaskedAutoencoderViT, weights: Weights | str | Path, norm: Norm | None = None
                  ) -> LoadReport:
    """Loads ``weights`` into an MAE (pretraining init, the viewer). ``norm``: how the model's
    inputs will be normalised (e.g. the shards' manifest stats); the weights are converted to it
    exactly (gray images). None: channels are replicated without renormalising.
    A missing decoder stays as initialised; a classifier is skipped."""
    w = weights if isinstance(weights, Weights) else read_weights(weights)
    _check_arch(w, {"patch_size": model.cfg.patch_size, "embed_dim": model.cfg.embed_dim,
                    "depth": model.cfg.depth}, "the MAE model")
    if w.has_decoder and (w.config.decoder_embed_dim, w.config.decoder_depth) != \
            (model.cfg.decoder_embed_dim, model.cfg.decoder_depth):
        raise WeightsError(f"{w.source}: decoder {w.config.decoder_depth}x{w.config.decoder_embed_dim} vs the "
                           f"model's {model.cfg.decoder_depth}x{model.cfg.decoder_embed_dim}")
    report = LoadReport(w.source, w.fmt, norm=norm or Norm.of(w.norm.mean, w.norm.std, model.cfg.in_chans))
    own = model.state_dict()
    sd = _fit(w, {**w.encoder, **w.decoder}, own, int(model.patch_embed.num_patches ** 0.5), norm, report,
              norm_pix=model.cfg.norm_pix_loss)
    report.skipped += sorted(w.classifier)
    sd = {k: v for k, v in sd.items() if k in own}
    report.skipped += sorted(set(w.encoder) - set(sd))
    res = model.load_state_dict(sd, strict=False)
    report.loaded = len(sd)
    report.missing = sorted(res.missing_keys)
    log.info("%s", report)
    return report


def load_into_vit(model: nn.Module, weights: Weights | str | Path, norm: Norm | None = None) -> LoadReport:
    """Loads the encoder of ``weights`` into a timm VisionTransformer (fine-tuning). Strict but
    for what MAE's recipe replaces: ``head`` (re-initialised) and, under average pooling, the
    final ``norm`` (superseded by ``fc_norm``; a fine-tuned ``fc_norm`` is loaded)."""
    w = weights if isinstance(weights, Weights) else read_weights(weights)
    _check_arch(w, {"patch_size": int(model.patch_embed.patch_size[0]), "embed_dim": int(model.embed_dim),
                    "depth": len(model.blocks)}, type(model).__name__)
    own = model.state_dict()
    chans = own["patch_embed.proj.weight"].shape[1]
    report = LoadReport(w.source, w.fmt, norm=norm or Norm.of(w.norm.mean, w.norm.std, chans))
    grid = int(model.patch_embed.grid_size[0])
    sd = _fit(w, {**w.encoder, **{k: v for k, v in w.classifier.items() if k.startswith("fc_norm.")}},
              own, grid, norm, report)
    report.skipped += sorted(k for k in w.classifier if k.startswith("head.")) + sorted(w.decoder)
    unexpected = sorted(k for k in sd if k not in own and not k.startswith(("norm.", "fc_norm.")))
    if unexpected:
        raise WeightsError(f"{w.source}: does not match {type(model).__name__} (unexpected {unexpected[:6]})")
    report.skipped += sorted(k for k in sd if k not in own)
    sd = {k: v for k, v in sd.items() if k in own}
    res = model.load_state_dict(sd, strict=False)
    bad = [k for k in res.missing_keys if not k.startswith(("head.", "fc_norm."))]
    if bad:
        raise WeightsError(f"{w.source}: does not match {type(model).__name__} (missing {bad[:6]})")
    report.loaded, report.missing = len(sd), sorted(res.missing_keys)
    log.info("%s", report)
    return report


def init_mae(model: MaskedAutoencoderViT, path: str | Path, mean=None, std=None) -> LoadReport:
    """``--init`` of pretraining: any weights of this module into ``model``, converted to the
    data's normalisation (``mean``/``std``: scalars or per channel; None: no renormalisation)."""
    norm = None if mean is None else Norm.of(mean, std, model.cfg.in_chans)
    return load_into_mae(model, read_weights(path), norm)


def build_mae(weights: Weights | str | Path, **overrides) -> tuple[MaskedAutoencoderViT, Norm]:
    """A full MAE with the file's architecture and weights (the reconstruction viewer); needs a
    decoder. -> (model in eval mode, the normalisation its inputs need)."""
    w = weights if isinstance(weights, Weights) else read_weights(weights)
    if not w.has_decoder:
        raise WeightsError(f"{w.source} [{w.fmt}] holds an encoder only: reconstructions need the decoder "
                           "(the USF-MAE release, facebookresearch's mae_visualize_*.pth or checkpoint-N.pth, "
                           "or a training checkpoint of this project)")
    cfg = replace(w.config, **overrides)
    model = MaskedAutoencoderViT(cfg)
    load_into_mae(model, w)
    return model.eval(), w.norm


def _gray_or_list(v: tuple[float, ...]) -> float | list[float]:
    """One channel as a number (as the older export schema wrote it), else a per-channel list."""
    return v[0] if len(v) == 1 else list(v)


def _fmt(v: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"


def _groups(keys: list[str]) -> str:
    """Keys summarised by module: 'decoder_blocks.* (96), mask_token'."""
    counts: dict[str, int] = {}
    for k in keys:
        head = k.split(".")[0]
        counts[head] = counts.get(head, 0) + 1
    return ", ".join(f"{h}.* ({n})" if n > 1 else h for h, n in counts.items())


def main(argv=None) -> int:
    """``python -m trainer.weights PATH ...``: what each file or folder is and what it expects."""
    import sys

    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m trainer.weights WEIGHTS [WEIGHTS ...]", file=sys.stderr)
        return 2
    rc = 0
    for p in paths:
        try:
            w = read_weights(p)
        except WeightsError as e:
            print(f"error: {e}", file=sys.stderr)
            rc = 1
            continue
        print(w.describe())
        for note in w.notes:
            print(f"  - {note}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
