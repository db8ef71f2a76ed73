"""trainer.export: a pretraining run (bf16, ZeRO-1, --init from a USF-MAE-format file) exported as
a timm-native folder that ``timm.create_model("local-dir:...", pretrained=True)`` loads by itself,
holding DeepSpeed's fp32 master weights, with a model card built from the shards' manifest."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from helpers import ROOT, run_py
from trainer.model import MaskedAutoencoderViT, config_for

IMG = 32  # mae_vit_demo_patch8: 4x4 patches of 8 px


def _release_file(path: Path) -> Path:
    """A 3-channel MAE saved as the USF-MAE release is (bare state dict, decoder included)."""
    torch.manual_seed(5)
    torch.save(MaskedAutoencoderViT(config_for("mae_vit_demo_patch8", img_size=IMG, in_chans=3)).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def run(demo_shards, tmp_path_factory):
    from trainer.export import export_from_checkpoint

    d = tmp_path_factory.mktemp("export")
    init = _release_file(d / "usf_mae.pt")
    out = d / "run"
    p = run_py([str(ROOT / "trainer" / "pretrain.py"), "--deepspeed_config", str(ROOT / "launch" / "ds.json"),
                "--model", "mae_vit_demo_patch8", "--img-size", str(IMG), "--workers", "1", "--no-tensorboard",
                "--data", str(demo_shards), "--output-dir", str(out), "--max-steps", "3", "--batch-size", "8",
                "--log-every", "1", "--no-recon-every-epoch", "--lr", "1e-3", "--warmup-steps", "1",
                "--precision", "bf16", "--init", str(init)])
    export = export_from_checkpoint(out / "checkpoints", d / "export")
    return {"dir": d, "run": out, "export": export, "log": p.stdout + p.stderr, "init": init,
            "shards": demo_shards}


def test_pretraining_init_from_a_release_file_is_logged(run):
    line = next(x for x in run["log"].splitlines() if "init from" in x)
    assert "[usf-mae]" in line and "3 -> 1 channels" in line and "decoder_pred 3 -> 1 channels" in line
    manifest = json.loads((run["shards"] / "manifest.json").read_text())
    assert f"mean ({manifest['pixel_stats']['mean']:.4g})" in line  # converted to the data's normalisation


@torch.no_grad()
def test_timm_loads_the_export_by_itself(run):
    from trainer.weights import build_mae

    enc = timm.create_model(f"local-dir:{run['export']}", pretrained=True).eval()
    cfg = json.loads((run["export"] / "config.json").read_text())
    manifest = json.loads((run["shards"] / "manifest.json").read_text())
    assert cfg["architecture"] == "vit_tiny_patch16_224" and timm.is_model(cfg["architecture"])
    assert cfg["num_classes"] == 0 and cfg["num_features"] == 192
    assert cfg["model_args"] == {"img_size": IMG, "patch_size": 8, "in_chans": 1, "embed_dim": 192, "depth": 4,
                                 "num_heads": 3, "mlp_ratio": 4.0}
    pc = cfg["pretrained_cfg"]
    assert pc["input_size"] == [1, IMG, IMG] and pc["mean"] == [manifest["pixel_stats"]["mean"]]
    assert pc["std"] == [manifest["pixel_stats"]["std"]] and pc["interpolation"] == "bicubic"
    assert 0 < pc["crop_pct"] <= 1 and pc["license"]
    assert enc.patch_embed.proj.weight.shape == (192, 1, 8, 8) and len(enc.blocks) == 4
    data = timm.data.resolve_data_config({}, model=enc)
    assert tuple(data["input_size"]) == (1, IMG, IMG) and tuple(data["mean"]) == tuple(pc["mean"])
    mae = build_mae(run["run"])[0]
    x = torch.randn(2, 1, IMG, IMG)
    ours = mae.forward_encoder(x, 0.0, torch.arange(16.0).expand(2, -1))[0]
    assert torch.allclose(enc.forward_features(x), ours, atol=1e-5)
    assert enc(x).shape == (2, 192)


def test_export_holds_the_fp32_master_weights(run):
    """Compared with DeepSpeed's own reconstruction of the optimizer's fp32 parameters from the
    checkpoint files (zero_to_fp32), not with what the trainer wrote."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ckpt = run["run"] / "checkpoints"
    master = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=(ckpt / "latest").read_text().strip())
    exported = load_file(str(run["export"] / "model.safetensors"))
    trained = [k for k in exported if k in master]  # the frozen sin-cos pos_embed is not optimised
    assert len(trained) == len(exported) - 1 and "pos_embed" not in trained
    for k in trained:
        assert exported[k].dtype == torch.float32 and torch.equal(exported[k], master[k].float()), k
    # and they are not the bf16 module copy: most trained tensors hold values bf16 cannot represent
    not_bf16 = [k for k in trained if not torch.equal(exported[k], exported[k].bfloat16().float())]
    assert len(not_bf16) > len(trained) // 2


def test_model_card_and_hub_layout(run):
    files = sorted(p.name for p in run["export"].iterdir())
    assert files == ["README.md", "config.json", "model.safetensors"]  # what upload_folder pushes
    card = (run["export"] / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: timm" in front and "license: other" in front
    manifest = json.loads((run["shards"] / "manifest.json").read_text())
    for name, ds in manifest["datasets"].items():
        if ds["written"] and not ds["holdout"]:
            assert f"| {name} | {ds['anatomy']} |" in card and f"| {ds['frames']} | {ds['written']} |" in card
    assert "usf_mae.pt" in card  # the init, by file name only
    for private in (str(run["dir"]), str(run["shards"]), "/tmp", "home"):
        assert private not in card


@torch.no_grad()
def test_any_weights_file_exports_to_timm(run, tmp_path):
    """`python -m trainer.export usf_mae.pt OUT`: the release itself as a timm folder."""
    from trainer.export import main
    from trainer.weights import IMAGENET_MEAN

    assert main([str(run["init"]), str(tmp_path / "out"), "--license", "cc-by-nc-4.0"]) == 0
    enc = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True).eval()
    assert list(enc.pretrained_cfg["mean"]) == list(IMAGENET_MEAN) and enc.pretrained_cfg["license"] == "cc-by-nc-4.0"
    src = MaskedAutoencoderViT(config_for("mae_vit_demo_patch8", img_size=IMG, in_chans=3))
    src.load_state_dict(torch.load(run["init"], weights_only=True))
    x = torch.randn(1, 3, IMG, IMG)
    ref = src.eval().forward_encoder(x, 0.0, torch.arange(16.0)[None])[0]
    assert torch.allclose(enc.forward_features(x), ref, atol=1e-5)
    assert "Not recorded" in (tmp_path / "out" / "README.md").read_text()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
