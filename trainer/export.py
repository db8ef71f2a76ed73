"""``python -m trainer.export WEIGHTS OUT_DIR``: the encoder as a timm-native model folder.

WEIGHTS is anything ``trainer.weights`` reads: a run's ``checkpoints/`` dir (its ``latest`` tag),
one tag dir, a run's output dir, the USF-MAE release, a facebookresearch/mae ``.pth``, a timm
state dict. OUT_DIR gets what ``timm`` and the Hugging Face Hub use as they are:

- ``model.safetensors``: the encoder (``cls_token, pos_embed, patch_embed, blocks, norm``), fp32.
  From a training run they come from the tag's ``mae.safetensors``, which ``trainer.checkpoint``
  writes from DeepSpeed's fp32 master weights (``full_state_dict``), not the bf16 module copy.
- ``config.json``: ``architecture`` (a registered timm ViT), ``num_classes`` 0, ``num_features``,
  ``model_args`` (the exact shape: img/patch size, channels, width, depth, heads) and
  ``pretrained_cfg`` (``input_size`` (C, H, W), per-channel ``mean``/``std``, ``interpolation``,
  ``crop_pct``, ``license``), so ``timm.create_model("local-dir:OUT_DIR", pretrained=True)``
  builds and loads the encoder with no other argument (timm >= 1.0.16).
- ``README.md``: a model card: architecture, how to load, and what the shards' manifest says about
  the training data (datasets, anatomy, licences, frame counts; no paths, names or ids).

``huggingface_hub.upload_folder(repo_id=..., folder_path=OUT_DIR)`` publishes it unchanged.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from runconfig import add_arguments, config, parse

from .weights import Weights, read_weights, run_manifest

EVAL_CROP_PCT = 0.875  # the fine-tune runner's eval view: resize to img / 0.875, centre crop
DEFAULT_LICENSE = "other"  # the training data's licences decide; the card lists them


# ============================================================================ timm config

def timm_config(weights: Weights, license: str = DEFAULT_LICENSE) -> dict:
    """config.json in timm's Hugging Face layout for the encoder of ``weights``."""
    c, n = weights.config, weights.norm
    return {
        "architecture": weights.timm_name,
        "num_classes": 0,
        "num_features": c.embed_dim,
        "model_args": {"img_size": c.img_size, "patch_size": c.patch_size, "in_chans": c.in_chans,
                       "embed_dim": c.embed_dim, "depth": c.depth, "num_heads": c.num_heads,
                       "mlp_ratio": c.mlp_ratio},
        "pretrained_cfg": {
            "tag": "usf_mae",
            "custom_load": False,
            "input_size": [c.in_chans, c.img_size, c.img_size],
            "fixed_input_size": True,
            "interpolation": "bicubic",
            "crop_pct": EVAL_CROP_PCT,
            "crop_mode": "center",
            "mean": list(n.mean),
            "std": list(n.std),
            "num_classes": 0,
            "pool_size": None,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
            "license": license,
        },
    }


def create_timm_encoder(cfg: dict, **kw):
    """The plain-timm model an export's config.json describes (features only, random weights):
    timm's layout (``architecture`` + ``model_args``) or the older one (``timm_name`` + fields)."""
    import timm

    if "architecture" in cfg:
        name, args = cfg["architecture"], dict(cfg.get("model_args", {}))
    else:
        name = cfg["timm_name"]
        args = {k: cfg[k] for k in ("in_chans", "img_size", "patch_size", "embed_dim", "depth", "num_heads")}
        args["mlp_ratio"] = cfg.get("mlp_ratio", 4.0)
    return timm.create_model(name, pretrained=False, num_classes=kw.pop("num_classes", 0), **{**args, **kw})


# ============================================================================ model card

def model_card(weights: Weights, cfg: dict, manifest: dict | None, run: dict | None) -> str:
    """README.md for the Hub: front matter, architecture, usage, training data from the manifest."""
    c, pc = weights.config, cfg["pretrained_cfg"]
    lines = ["---", "library_name: timm", f"license: {pc['license']}", "tags:", "- image-feature-extraction",
             "- timm", "- ultrasound", "- masked-autoencoder", "pipeline_tag: image-feature-extraction", "---",
             "# Ultrasound MAE encoder (usf-mae)", "",
             f"A ViT encoder pretrained as a masked autoencoder on ultrasound frames (exported from "
             f"`{weights.fmt}` weights by `python -m trainer.export`).", "",
             "## Model", "",
             f"- timm `VisionTransformer` (`{cfg['architecture']}` with `model_args`): patch {c.patch_size}, "
             f"width {c.embed_dim}, depth {c.depth}, {c.num_heads} heads, MLP ratio {c.mlp_ratio:g}",
             f"- input: {c.in_chans} channel(s) of {c.img_size}x{c.img_size}, pixels on 0..1 normalised with "
             f"mean {pc['mean']} std {pc['std']}",
             "- features: `forward_features` gives the normalised tokens [B, 1 + N, D]; the model's output "
             "is the class token (`global_pool='avg'` for MAE-style fine-tuning)", "",
             "## Usage", "", "```python", "import timm",
             'model = timm.create_model("local-dir:PATH_TO_THIS_FOLDER", pretrained=True)  # or "hf-hub:OWNER/REPO"',
             "cfg = timm.data.resolve_data_config({}, model=model)  # input size, mean/std, crop",
             "```", ""]
    if run:
        t, m = run.get("train", {}), run.get("model", {})
        lines += ["## Pretraining", "",
                  f"- MAE (`{t.get('model')}`), mask ratio {m.get('mask_ratio')}, norm_pix_loss "
                  f"{m.get('norm_pix_loss')}, decoder {m.get('decoder_depth')} x {m.get('decoder_embed_dim')}",
                  f"- checkpoint `{weights.source.name}`, peak lr {run.get('lr')}, precision {t.get('precision')}"]
        if t.get("init"):
            lines.append(f"- initialised from `{Path(str(t['init'])).name}` (its licence applies as well)")
        lines.append("")
    if manifest:
        ds = manifest.get("datasets", {})
        lic = {d.get("name"): d.get("licence") for d in manifest.get("config", {}).get("datasets", [])}
        used = {k: v for k, v in ds.items() if not v.get("holdout") and v.get("written", 0) > 0}
        held = sorted(k for k, v in ds.items() if v.get("holdout"))
        splits: dict[str, int] = {}
        for s in manifest.get("shards", []):
            splits[s["split"]] = splits.get(s["split"], 0) + int(s["samples"])
        lines += ["## Training data", "",
                  f"{len(used)} dataset(s) curated by `usf-shard` (scan region cropped, gray, short side "
                  f"{manifest.get('size_policy', {}).get('short_side')}, exact and near duplicates removed); "
                  f"frames per split: " + ", ".join(f"{k} {v}" for k, v in sorted(splits.items())) + ". "
                  f"Pixel statistics {manifest.get('pixel_stats')}.", "",
                  "| dataset | anatomy | licence | frames read | frames kept |", "|---|---|---|---:|---:|"]
        for name, v in sorted(used.items()):
            lines.append(f"| {name} | {v.get('anatomy')} | {lic.get(name) or 'see the dataset terms'} | "
                         f"{v.get('frames')} | {v.get('written')} |")
        t = manifest.get("totals", {})
        lines += ["", f"Totals: {t.get('frames')} frames read, {t.get('written')} kept, {t.get('duplicates')} "
                  f"duplicates, {t.get('rejected')} rejected."]
        if held:
            lines += ["", "Held out of pretraining (evaluation only, leak-checked): " + ", ".join(held) + "."]
        lines += ["", "All datasets keep their original licences; the weights' `license` field is "
                  f"`{pc['license']}` until you set it (`--license`)."]
    else:
        lines += ["## Training data", "", "Not recorded with these weights."]
    return "\n".join(lines) + "\n"


# ============================================================================ export

def write_export(weights: Weights, out_dir: str | Path, *, license: str = DEFAULT_LICENSE,
                 manifest: dict | None = None, run: dict | None = None) -> Path:
    """Writes the encoder of ``weights`` as a timm model folder; checks it loads strictly."""
    cfg = timm_config(weights, license)
    enc = {k: v.detach().float().contiguous() for k, v in weights.encoder.items()}
    model = create_timm_encoder(cfg)
    model.load_state_dict(enc, strict=True)  # raises on any mismatch: what timm will load
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(enc, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "README.md").write_text(model_card(weights, cfg, manifest, run))
    return out


def export_from_checkpoint(ckpt_dir: str | Path, out_dir: str | Path, license: str | None = None) -> Path:
    """Any weights (a training checkpoint above all) -> timm model folder ``out_dir``."""
    w = read_weights(ckpt_dir)
    manifest = run = None
    if w.fmt == "checkpoint":
        manifest = run_manifest(w.source)
        run_cfg = w.source.parent.parent / "config.json"
        run = json.loads(run_cfg.read_text()) if run_cfg.exists() else None
    return write_export(w, out_dir, license=license or _manifest_license(manifest), manifest=manifest, run=run)


def _manifest_license(manifest: dict | None) -> str:
    """The one licence every pretraining dataset shares, else ``other`` (the card lists them)."""
    if not manifest:
        return DEFAULT_LICENSE
    lic = {d.get("licence") for d in manifest.get("config", {}).get("datasets", []) if not d.get("holdout")}
    return lic.pop().lower() if len(lic) == 1 and None not in lic else DEFAULT_LICENSE


@config
class ExportConfig:
    checkpoint: str  # training checkpoint / run dir, or any weights file trainer.weights reads
    out: str  # the timm model folder to write
    license: str | None = None  # for config.json and the card; default: the datasets' common one, else other


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, ExportConfig, flags={"checkpoint": {"positional": True}, "out": {"positional": True}},
                  config_file=False)
    a = parse(p, ExportConfig, argv)[0]
    out = export_from_checkpoint(a.checkpoint, a.out, license=a.license)
    print(f"exported encoder to {out} (timm: create_model('local-dir:{out}', pretrained=True))")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
