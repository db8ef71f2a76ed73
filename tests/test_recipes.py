"""Fine-tune recipes (finetune.recipes) on the CLI, the MAE train/eval transforms through timm
(dali_pipes.timm_aug) and their DALI mapping (dali_pipes.randaug)."""
from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from dali_pipes.randaug import RandAugSpec, parse_timm_randaug
from finetune.tasks import Record
from finetune.config import FinetuneConfig, build_parser, config_from_args
from dali_pipes.finetune_torch import FinetuneDataset, TransformConfig, build_finetune_loader, build_transform
from finetune.recipes import KNOBS, RECIPES, apply_recipe, recipe_table_markdown

BASE = ["--task", "folder", "--data-root", "d", "--output-dir", "o"]


def test_every_knob_is_a_config_field_and_on_the_cli() -> None:
    cfg_fields = {f.name for f in fields(FinetuneConfig)}
    dests = {a.dest for a in build_parser()._actions}
    assert set(KNOBS) <= cfg_fields and set(KNOBS) <= dests
    for r in RECIPES.values():  # a recipe value always says where it comes from
        assert set(r.values()) <= set(r.sources) or "*" in r.sources, r.name


def test_mae_recipes_as_published() -> None:
    b, lg = RECIPES["mae_vit_b"], RECIPES["mae_vit_l"]
    assert (b.blr, b.layer_decay, b.drop_path, b.epochs) == (5e-4, 0.65, 0.1, 100)  # FINETUNE.md ViT-B
    assert (lg.blr, lg.layer_decay, lg.drop_path, lg.epochs) == (1e-3, 0.75, 0.2, 50)  # FINETUNE.md ViT-L
    for r in (b, lg):
        assert (r.mixup, r.cutmix, r.label_smoothing, r.weight_decay, r.reprob) == (0.8, 1.0, 0.1, 0.05, 0.25)
        assert (r.aug, r.auto_augment, r.interpolation, r.re_mode, r.re_count) == (
            "timm", "rand-m9-mstd0.5-inc1", "bicubic", "pixel", 1)
    assert RECIPES["usf_mae_paper"].values() == {}  # nothing published: sets nothing
    assert "| `blr` | — | 0.0005 | 0.001 |" in recipe_table_markdown()


def test_cli_recipe_and_explicit_overrides() -> None:
    c = config_from_args(BASE + ["--recipe", "mae_vit_l", "--drop-path", "0.05", "--randaug", "rand-m5-n1"])
    assert (c.recipe, c.aug, c.layer_decay, c.mixup, c.crop_min) == ("mae_vit_l", "timm", 0.75, 0.8, 0.08)
    assert (c.drop_path, c.auto_augment) == (0.05, "rand-m5-n1")  # given explicitly: they win
    d = config_from_args(BASE)  # no recipe: the defaults as before
    assert (d.recipe, d.aug, d.mixup, d.crop_min, d.rotate_deg) == ("project", "torchvision", 0.0, 0.2, 10.0)
    assert config_from_args(BASE + ["--recipe", "mae_vit_b", "--randaug", "none"]).auto_augment is None
    assert apply_recipe(FinetuneConfig(), "project") == FinetuneConfig()


def test_parse_timm_randaug() -> None:
    assert parse_timm_randaug("rand-m9-mstd0.5-inc1") == RandAugSpec(n=2, m=9.0, mstd=0.5, inc=True, p=0.5, mmax=10.0)
    assert parse_timm_randaug("rand-n3-m7-p0.3") == RandAugSpec(n=3, m=7.0, p=0.3)
    for bad in ("rand-m9-w0", "augmix-m5", "rand-m11"):
        with pytest.raises(ValueError, match="--randaug"):
            parse_timm_randaug(bad)


@pytest.fixture(scope="module")
def gray() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.rayleigh(50.0, size=(48, 56)).clip(0, 255).astype(np.uint8)


def tcfg(in_chans: int = 1, **kw) -> TransformConfig:
    return TransformConfig(img_size=32, in_chans=in_chans, mean=(0.3,) * in_chans, std=(0.2,) * in_chans,
                           aug="timm", crop_min=0.08, **kw)


def test_timm_train_transform_is_seeded_and_gray_safe(gray) -> None:
    ds = FinetuneDataset([Record(None, 0, "g", image=gray)], build_transform(tcfg(1), "train"))
    # timm draws from random, np.random and torch: a sample's view is a function of its seed alone
    for seed in range(12):
        a, b = ds[(0, seed)]["image"], ds[(0, seed)]["image"]
        assert a.shape == (1, 32, 32) and torch.equal(a, b), seed
    assert not torch.equal(ds[(0, 11)]["image"], ds[(0, 12)]["image"])
    rgb = FinetuneDataset([Record(None, 0, "g", image=gray)], build_transform(tcfg(3, reprob=0.0), "train"))
    for seed in range(4):  # every RandAugment op keeps R = G = B on a gray image
        x = rgb[(0, seed)]["image"]
        assert x.shape == (3, 32, 32) and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_timm_eval_is_maes(gray) -> None:
    got = build_transform(tcfg(1, crop_pct=0.875), "eval")(torch.from_numpy(gray)[None])
    mae = T.Compose([T.Resize(int(32 / 0.875), interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32),
                     T.ToTensor(), T.Normalize((0.3,), (0.2,))])  # util/datasets.py build_transform (eval)
    assert torch.allclose(got, mae(Image.fromarray(gray)), atol=1e-6)
    three = build_transform(tcfg(3, crop_pct=0.875), "eval")(torch.from_numpy(gray)[None])
    assert three.shape == (3, 32, 32) and torch.allclose(three[2], got[0], atol=1e-5)


def test_dali_timm_recipe_runs(gray, tmp_path) -> None:
    pytest.importorskip("nvidia.dali")
    import cv2

    recs = []
    for i in range(4):
        p = tmp_path / f"{i}.png"
        cv2.imwrite(str(p), np.roll(gray, 5 * i, axis=1))
        recs.append(Record(path=p, label=i % 2, group=str(i)))
    loader = build_finetune_loader(recs, train=True, batch_size=4, tcfg=tcfg(3, reprob=0.0, rotate_deg=0.0),
                                   loader="dali", seed=3)
    x = next(iter(loader))["image"].float()
    assert x.shape == (4, 3, 32, 32) and torch.isfinite(x).all()
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])  # gray stays gray through RandAugment
    erased = build_finetune_loader(recs, train=True, batch_size=4, tcfg=tcfg(1, reprob=1.0, rotate_deg=0.0),
                                   loader="dali", seed=3)
    y = next(iter(erased))["image"].float()
    assert y.shape == (4, 1, 32, 32) and torch.isfinite(y).all()


def test_dali_posterize_and_solarize_bins_are_timms() -> None:
    """At m9 of the MAE string DALI's posterize keeps timm's 1 bit and solarize inverts from 26."""
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.auto_aug import rand_augment as ra

    from dali_pipes.randaug import magnitude_bins, timm_suite

    spec = parse_timm_randaug("rand-m9-mstd0.5-inc1")
    bins, m = magnitude_bins(spec)
    assert (bins, m) == (11, 9)
    ramp = np.tile(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), (1, 1, 3))
    ops = {op.name: op for op in timm_suite(spec)}
    assert len(ops) == 15 and "identity" not in ops

    @pipeline_def(enable_conditionals=True, batch_size=1, num_threads=1, device_id=None)
    def pipe():
        img = fn.external_source(source=lambda: [ramp], batch=True, layout="HWC", dtype=types.UINT8)
        return tuple(ra.apply_rand_augment([ops[k]], img, 1, m, num_magnitude_bins=bins)
                     for k in ("posterize", "solarize"))

    p = pipe()
    p.build()
    post, sol = (np.array(o.as_tensor())[0, :, :, 0].reshape(-1) for o in p.run())
    x = np.arange(256)
    assert np.array_equal(post, x & 0x80)  # 1 most significant bit (timm: 4 - int(3.6))
    assert np.array_equal(sol, np.where(x < 26, x, 255 - x))  # timm: 256 - int(0.9 * 256) = 26
