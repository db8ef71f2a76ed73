"""trainer.weights: every --init format, built here from the official key layouts (no downloads),
is detected, loaded and converted (3 -> 1 channel, position-embedding resize, normalisation) so
that features match the source model's; fine-tunes run from the USF-MAE release format and from
facebookresearch's ImageNet-MAE format."""
from __future__ import annotations

import argparse
import logging

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from trainer.model import MaskedAutoencoderViT, config_for
from trainer.weights import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Norm,
    WeightsError,
    build_mae,
    init_mae,
    load_into_mae,
    load_into_vit,
    read_weights,
    split_state_dict,
)

try:
    from finetune_fixtures import lesion_image
except ImportError:  # run from the repository root as a module
    from tests.finetune_fixtures import lesion_image

IMG = 64
RGB = Norm(IMAGENET_MEAN, IMAGENET_STD)
DATA = Norm((0.25,), (0.2,))  # a shard manifest's gray stats


def _source() -> MaskedAutoencoderViT:
    """facebookresearch/mae's MaskedAutoencoderViT layout (3 channels), small, every tensor
    perturbed so no conversion can pass by accident (zero biases, unit norms)."""
    torch.manual_seed(0)
    m = MaskedAutoencoderViT(config_for("mae_vit_demo_patch16", img_size=IMG, in_chans=3))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return m.eval()


def _vit(chans: int = 3, pool: str = "token", num_classes: int = 0, img: int = IMG) -> torch.nn.Module:
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, img_size=img,
                             depth=4, in_chans=chans, global_pool=pool).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One file per format, laid out as its publisher does."""
    d = tmp_path_factory.mktemp("weights")
    src = _source()
    full = src.state_dict()
    enc = split_state_dict(full, d / "src")[0]  # the encoder, as trainer.export cuts it
    out = {"src": src}
    # the USF-MAE release: torch.save(model.state_dict()) of the whole MaskedAutoencoderViT
    torch.save(full, d / "usf_mae.pt")
    # facebookresearch/mae mae_pretrain_vit_*.pth: {"model": encoder}
    torch.save({"model": enc}, d / "mae_pretrain_vit.pth")
    # facebookresearch/mae main_pretrain checkpoint-N.pth: whole model + optimizer, scaler, args
    torch.save({"model": full, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
                "epoch": 799, "scaler": {"scale": 65536.0}, "args": argparse.Namespace(norm_pix_loss=False)},
               d / "checkpoint-799.pth")
    # timm vit_base_patch16_224.mae: a VisionTransformer state dict (num_classes=0), safetensors / .bin
    save_file({k: v.contiguous() for k, v in enc.items()}, str(d / "vit.mae.safetensors"))
    torch.save(enc, d / "pytorch_model.bin")
    # facebookresearch/mae models_vit fine-tune (global_pool: fc_norm, no norm) with a 10-class head
    ft = _vit(pool="avg", num_classes=10)
    ft.load_state_dict({k: v for k, v in enc.items() if not k.startswith("norm.")}, strict=False)
    with torch.no_grad():
        ft.fc_norm.weight.add_(0.1 * torch.randn(192))
    torch.save({"model": ft.state_dict()}, d / "mae_finetuned_vit.pth")
    out["finetuned_src"] = ft
    out.update({n: d / n for n in ("usf_mae.pt", "mae_pretrain_vit.pth", "checkpoint-799.pth",
                                   "vit.mae.safetensors", "pytorch_model.bin", "mae_finetuned_vit.pth")})
    return out


def _gray_pair(n: int = 2, img: int = IMG) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw gray [n, 1, H, W] in 0..1 and the same images as RGB normalised the ImageNet way."""
    torch.manual_seed(3)
    x = torch.rand(n, 1, img, img)
    m, s = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return x, (x.expand(-1, 3, -1, -1) - m) / s


def _tokens(mae: MaskedAutoencoderViT, x: torch.Tensor) -> torch.Tensor:
    """Encoder output on all patches in order [B, 1+N, D] (mask ratio 0, identity shuffle)."""
    noise = torch.arange(float(mae.cfg.num_patches)).expand(x.shape[0], -1)
    return mae.forward_encoder(x, 0.0, noise)[0]


FORMATS = [("usf_mae.pt", "usf-mae", True), ("mae_pretrain_vit.pth", "mae", False),
           ("checkpoint-799.pth", "mae", True), ("vit.mae.safetensors", "timm", False),
           ("pytorch_model.bin", "timm", False)]


@pytest.mark.parametrize("name,fmt,decoder", FORMATS)
@torch.no_grad()
def test_every_format_loads_with_the_source_features(files, name, fmt, decoder):
    src = files["src"]
    w = read_weights(files[name])
    assert (w.fmt, w.has_decoder) == (fmt, decoder)
    c = w.config
    assert (c.patch_size, c.embed_dim, c.depth, c.num_heads, c.in_chans, c.img_size) == (16, 192, 4, 3, 3, IMG)
    assert w.norm == RGB  # no metadata in these files: ImageNet's, as their publishers trained
    gray, rgb = _gray_pair()
    ref = _tokens(src, rgb)
    # as published (3 channels, ImageNet normalisation) into a timm ViT: the same features
    vit = _vit()
    load_into_vit(vit, w)
    assert torch.allclose(vit.forward_features(rgb), ref, atol=1e-5)
    # gray: 1 channel normalised with the averaged stats gives what the RGB model gives on the gray image
    g = Norm.of(IMAGENET_MEAN, IMAGENET_STD, 1)
    vit1 = _vit(chans=1)
    rep = load_into_vit(vit1, w, g)
    assert rep.norm == g and any("3 -> 1 channels" in s for s in rep.converted)
    assert torch.allclose(vit1.forward_features((gray - g.mean[0]) / g.std[0]), ref, atol=1e-4)
    # pretraining init into a 1-channel MAE fed with a shard manifest's normalisation
    mae = MaskedAutoencoderViT(config_for("mae_vit_demo_patch16", img_size=IMG)).eval()
    rep = init_mae(mae, files[name], DATA.mean[0], DATA.std[0])
    z = (gray - DATA.mean[0]) / DATA.std[0]
    assert torch.allclose(_tokens(mae, z), ref, atol=1e-4)
    assert ("decoder_pred.weight" in rep.missing) != decoder
    if decoder:  # pixel predictions, back on the 0..1 scale, agree too
        noise = torch.rand(2, mae.cfg.num_patches)
        p_src = src(rgb, noise=noise)[1].reshape(2, -1, 256, 3)
        p_src = (p_src * torch.tensor(IMAGENET_STD) + torch.tensor(IMAGENET_MEAN)).mean(-1)
        p_dst = mae(z, noise=noise)[1] * DATA.std[0] + DATA.mean[0]
        assert torch.allclose(p_src, p_dst, atol=1e-4)


@torch.no_grad()
def test_finetuned_checkpoint_keeps_fc_norm_and_drops_the_head(files):
    w = read_weights(files["mae_finetuned_vit.pth"])
    assert w.fmt == "mae" and sorted(w.classifier) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    vit = _vit(pool="avg", num_classes=2)
    rep = load_into_vit(vit, w)
    assert "head.weight" in rep.skipped and "head.weight" in rep.missing
    _, rgb = _gray_pair()
    src = files["finetuned_src"]
    assert torch.allclose(vit.forward_head(vit.forward_features(rgb), pre_logits=True),
                          src.forward_head(src.forward_features(rgb), pre_logits=True), atol=1e-5)


@torch.no_grad()
def test_position_embeddings_resized_and_logged(files, caplog):
    mae = MaskedAutoencoderViT(config_for("mae_vit_demo_patch16", img_size=96, in_chans=3))
    with caplog.at_level(logging.INFO, logger="trainer.weights"):
        rep = load_into_mae(mae, read_weights(files["usf_mae.pt"]))
    assert any("pos_embed 4x4 -> 6x6" in s for s in rep.converted)
    assert any("decoder_pos_embed 4x4 -> 6x6" in s for s in rep.converted)
    from timm.layers import resample_abs_pos_embed

    want = resample_abs_pos_embed(files["src"].pos_embed, new_size=[6, 6], old_size=[4, 4], num_prefix_tokens=1)
    assert torch.allclose(mae.pos_embed, want)
    assert "usf_mae.pt [usf-mae]: 86 tensors loaded" in caplog.text and "pos_embed 4x4 -> 6x6" in caplog.text
    assert mae(torch.randn(1, 3, 96, 96))[1].shape == (1, 36, 16 * 16 * 3)


def test_norm_pix_decoder_only_merges_channels(files):
    """Per-patch normalised targets do not move with the input's normalisation: the pixel head of
    a norm_pix_loss model is only averaged over colour, the patch embedding is still converted."""
    mae = MaskedAutoencoderViT(config_for("mae_vit_demo_patch16", img_size=IMG, norm_pix_loss=True))
    rep = load_into_mae(mae, read_weights(files["usf_mae.pt"]), DATA)
    src = files["src"].state_dict()
    assert torch.allclose(mae.decoder_pred.weight, src["decoder_pred.weight"].reshape(256, 3, -1).mean(1))
    assert any(s.startswith("patch_embed 3 -> 1") for s in rep.converted)
    assert "decoder_pred 3 -> 1 channels (averaged: norm_pix_loss)" in rep.converted


def test_what_cannot_load_is_refused_by_name(files, tmp_path):
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(WeightsError, match=r"r18.pth: not a ViT"):
        read_weights(tmp_path / "r18.pth")
    with pytest.raises(WeightsError, match="encoder only"):
        build_mae(files["mae_pretrain_vit.pth"])
    deep = MaskedAutoencoderViT(config_for("mae_vit_demo_patch16", img_size=IMG, depth=5))
    with pytest.raises(WeightsError, match="depth 4 in the file vs 5"):
        load_into_mae(deep, read_weights(files["usf_mae.pt"]))
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="junk.pth: cannot be read"):
        read_weights(tmp_path / "junk.pth")
    with pytest.raises(WeightsError, match="no such file"):
        read_weights(tmp_path / "missing.pth")


@torch.no_grad()
def test_build_mae_from_a_release_file(files):
    mae, norm = build_mae(files["checkpoint-799.pth"])
    assert norm == RGB and mae.cfg.in_chans == 3 and mae.cfg.decoder_embed_dim == 128
    _, rgb = _gray_pair()
    noise = torch.rand(2, 16)
    assert torch.equal(mae(rgb, noise=noise)[1], files["src"](rgb, noise=noise)[1])


@pytest.mark.parametrize("name", ["usf_mae.pt", "mae_pretrain_vit.pth"])
def test_finetune_runs_from_release_files(files, name):
    """The two files a new user starts from: the USF-MAE release and ImageNet MAE."""
    from finetune import runner as FT

    rng = np.random.default_rng(0)
    data = [(lesion_image(rng, i % 2, IMG, IMG), i % 2, f"p{i}") for i in range(12)]
    r = FT.finetune(data[:8], data[8:], init=str(files[name]), in_chans=1, epochs=1, warmup_epochs=0,
                    batch_size=4, val_fraction=0.0, workers=0, progress=False)
    enc = r["encoder"]
    assert enc["format"] == read_weights(files[name]).fmt and enc["in_chans"] == 1 and enc["img_size"] == IMG
    assert r["n_test"] == 4 and 0.0 <= r["accuracy"] <= 1.0


def test_baseline_ckpt_takes_a_release_file(tmp_path):
    """--baseline-ckpt with a timm ViT baseline: the MAE decoder and mask token are left out."""
    from finetune.models import load_baseline

    torch.manual_seed(2)
    mae = MaskedAutoencoderViT(config_for("mae_vit_tiny_patch16", img_size=32, in_chans=3, decoder_depth=1,
                                          decoder_embed_dim=32, decoder_num_heads=1))
    torch.save(mae.state_dict(), tmp_path / "usf_mae_tiny.pt")
    vit = load_baseline("vit_tiny_patch16_224", 2, ckpt=tmp_path / "usf_mae_tiny.pt", img_size=32, in_chans=3)
    assert torch.equal(vit.blocks[11].mlp.fc2.weight, mae.blocks[11].mlp.fc2.weight)
    assert vit.head.weight.shape == (2, 192)


def test_describe_command(files, tmp_path, capsys):
    from trainer.weights import main

    assert main([str(files["usf_mae.pt"]), str(files["mae_pretrain_vit.pth"])]) == 0
    out = capsys.readouterr().out
    assert "[usf-mae]: ViT patch 16, 192 wide, 4 deep" in out and "no decoder" in out and "ImageNet" in out
    assert main([str(tmp_path / "none.pt")]) == 1 and "no such file" in capsys.readouterr().err
