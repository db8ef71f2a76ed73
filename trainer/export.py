"""``python -m trainer.export CHECKPOINT_DIR OUT_DIR``: the pretrained encoder as a plain timm
VisionTransformer (design §3): ``model.safetensors`` + ``config.json``.

CHECKPOINT_DIR is a run's ``checkpoints/`` dir (its ``latest`` tag is used), one tag dir, or a
run's output dir. Loading uses safetensors only: nothing is unpickled.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .model import MAEConfig

ENCODER_PREFIXES = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")


def find_tag_dir(path: str | Path) -> Path:
    p = Path(path)
    for cand in (p, p / "checkpoints"):
        if (cand / "mae.safetensors").exists():
            return cand
        latest = cand / "latest"
        if latest.exists() and (cand / latest.read_text().strip() / "mae.safetensors").exists():
            return cand / latest.read_text().strip()
    raise FileNotFoundError(f"{p}: no mae.safetensors here or under its latest checkpoint")


def encoder_config(mcfg: MAEConfig, mean: float, std: float) -> dict:
    return {"timm_name": mcfg.timm_name, "img_size": mcfg.img_size, "patch_size": mcfg.patch_size,
            "in_chans": mcfg.in_chans, "embed_dim": mcfg.embed_dim, "depth": mcfg.depth,
            "num_heads": mcfg.num_heads, "mlp_ratio": mcfg.mlp_ratio, "mean": mean, "std": std}


def create_timm_encoder(cfg: dict, **kw):
    """The plain-timm model the export loads into (num_classes=0: features only)."""
    import timm

    return timm.create_model(cfg["timm_name"], pretrained=False, num_classes=kw.pop("num_classes", 0),
                             in_chans=cfg["in_chans"], img_size=cfg["img_size"], patch_size=cfg["patch_size"],
                             embed_dim=cfg["embed_dim"], depth=cfg["depth"], num_heads=cfg["num_heads"],
                             mlp_ratio=cfg.get("mlp_ratio", 4.0), **kw)


def export_from_checkpoint(ckpt_dir: str | Path, out_dir: str | Path) -> Path:
    tag = find_tag_dir(ckpt_dir)
    mcfg = MAEConfig(**json.loads((tag / "mae_config.json").read_text()))
    sd = load_file(str(tag / "mae.safetensors"))
    enc = {k: v for k, v in sd.items() if k.startswith(ENCODER_PREFIXES)}
    mean, std = 0.5, 0.25
    run_cfg = tag.parent.parent / "config.json"
    if run_cfg.exists():
        data = json.loads(run_cfg.read_text()).get("train", {}).get("data")
        if data and (Path(data) / "manifest.json").exists():
            ps = json.loads((Path(data) / "manifest.json").read_text())["pixel_stats"]
            mean, std = ps["mean"], ps["std"]
    cfg = encoder_config(mcfg, mean, std)
    model = create_timm_encoder(cfg)
    missing, unexpected = model.load_state_dict(enc, strict=True), None  # raises on any mismatch
    del missing, unexpected
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in enc.items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    return out


def load_mae_from_checkpoint(ckpt_dir: str | Path):
    """The full MAE (encoder + decoder) from a checkpoint tag, e.g. for reconstructions."""
    from .model import MaskedAutoencoderViT

    tag = find_tag_dir(ckpt_dir)
    model = MaskedAutoencoderViT(MAEConfig(**json.loads((tag / "mae_config.json").read_text())))
    model.load_state_dict(load_file(str(tag / "mae.safetensors")))
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("checkpoint")
    p.add_argument("out")
    a = p.parse_args(argv)
    out = export_from_checkpoint(a.checkpoint, a.out)
    print(f"exported encoder to {out}")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
