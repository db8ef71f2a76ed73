"""DALI fine-tune loader (dali_pipes/finetune.py) on CPU (``device_id=None``): batch contract,
label/pixel correspondence, eval coverage and normalisation, exact resume, class-balanced
sampling, file errors, and one short run of the fine-tune runner with ``--loader dali``.

Most images are constant gray with a distinct level per file (class 0 dark, class 1 bright), so a
cropped, resized, flipped sample still names its file: a batch can be checked sample by sample."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")

from dali_pipes.finetune import DaliFinetuneLoader, FinetuneOptions, build_finetune_loader, image_format  # noqa: E402
from finetune.tasks import Record  # noqa: E402
from dali_pipes.finetune_torch import TransformConfig, build_transform, class_balanced_weights  # noqa: E402

try:
    from finetune_fixtures import lesion_image, make_export
    from finetune_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)
except ImportError:  # tests/ imported as a package
    from tests.finetune_fixtures import lesion_image, make_export
    from tests.finetune_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)

N, SIZE = 24, 32
MEAN, STD = 0.3, 0.2


def level(i: int) -> int:
    """Gray level of file i: class 0 (even i) 30..76, class 1 (odd i) 172..218; 4 levels apart."""
    return 30 + 2 * i if i % 2 == 0 else 170 + 2 * i


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> list[Record]:
    """24 constant-gray images of 2 classes, varied sizes; PNG and JPEG, gray and R=G=B colour."""
    root = tmp_path_factory.mktemp("dali_ft")
    recs = []
    for i in range(N):
        h, w = 30 + (i * 7) % 25, 34 + (i * 5) % 29
        img = np.full((h, w), level(i), np.uint8)
        ext = ".jpg" if i % 4 == 3 else ".png"
        if i == 4:
            img = np.repeat(img[:, :, None], 3, axis=2)  # stored as colour; decoded as gray
        p = root / f"class{i % 2}" / f"img_{i:02d}{ext}"
        p.parent.mkdir(exist_ok=True)
        assert cv2.imwrite(str(p), img)
        recs.append(Record(p, i % 2, f"pt{i // 2}"))
    return recs


def tcfg(**kw) -> TransformConfig:
    base = {"img_size": SIZE, "in_chans": 1, "mean": (MEAN,), "std": (STD,), "randaug_ops": 0, "reprob": 0.0,
            "rotate_deg": 0.0}
    return TransformConfig(**{**base, **kw})


def raw(x: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    """Normalised pixels back on the 0..255 scale."""
    return (x * std + mean) * 255.0


def file_of(sample: torch.Tensor) -> int:
    """Index of the file a (C, H, W) sample of a constant image came from (by its median level)."""
    v = float(raw(sample).median())
    i = min(range(N), key=lambda j: abs(level(j) - v))
    assert abs(level(i) - v) < 1.6, v
    return i


def take(loader, k: int) -> list[dict]:
    """The next ``k`` batches of a loader, across epochs (as a training loop sees them)."""
    out: list[dict] = []
    while len(out) < k:
        for b in loader:
            out.append(b)
            if len(out) == k:
                break
    return out


def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
                                    for x, y in zip(a, b))


# ---------------------------------------------------------------------------- train

def test_train_batches_labels_and_epochs(tree):
    ld = build_finetune_loader(tree, train=True, batch_size=5, tcfg=tcfg(rotate_deg=10.0), seed=1)
    assert isinstance(ld, DaliFinetuneLoader) and len(ld) == math.ceil(N / 5)
    epochs = []
    for _ in range(2):
        files = []
        batches = list(ld)
        assert [b["image"].shape[0] for b in batches] == [5, 5, 5, 5, 4]  # padded tail trimmed
        for b in batches:
            assert b["image"].shape[1:] == (1, SIZE, SIZE) and b["image"].dtype == torch.float32
            assert b["label"].dtype == torch.int64 and b["label"].shape == (b["image"].shape[0],)
            for x, y in zip(b["image"], b["label"]):
                i = file_of(x)  # dark = class 0, bright = class 1, and the very file: label matches
                assert int(y) == tree[i].label
                files.append(i)
        assert sorted(files) == list(range(N))  # every record exactly once per epoch
        epochs.append(files)
    assert epochs[0] != epochs[1]  # reshuffled each epoch
    # drop_last: the partial batch goes, and the order is still a function of (seed, epoch)
    dl = build_finetune_loader(tree, train=True, batch_size=5, tcfg=tcfg(rotate_deg=10.0), seed=1, drop_last=True)
    assert len(dl) == N // 5
    got = [file_of(x) for b in dl for x in b["image"]]
    assert got == epochs[0][:20]


def test_full_augmentation_and_three_channels(tree):
    """RandAugment + rotation + erasing run, and gray expands to 3 equal channels (per-channel stats)."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    cfg = tcfg(in_chans=3, mean=mean, std=std, randaug_ops=2, randaug_magnitude=9, rotate_deg=10.0, reprob=0.0)
    ld = build_finetune_loader(tree, train=True, batch_size=8, tcfg=cfg, seed=0)
    x = torch.cat([b["image"] for b in ld])
    assert x.shape == (N, 3, SIZE, SIZE) and x.dtype == torch.float32 and torch.isfinite(x).all()
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    px = (x * s + m) * 255.0
    assert (px[:, 0] - px[:, 1]).abs().max() < 0.05 and (px[:, 0] - px[:, 2]).abs().max() < 0.05
    assert changed_samples(px[:, 0]) >= N // 2  # rotation and RandAugment are at work


def changed_samples(px: torch.Tensor) -> int:
    """Samples (of constant images, on 0..255) no longer one constant file level: geometric ops
    leave fill, brightness/invert/solarize move the level."""
    levels = torch.tensor([level(i) for i in range(N)], dtype=torch.float32)
    return sum(float(p.amax() - p.amin()) > 2 or float((levels - p.median()).abs().min()) > 1.6 for p in px)


def test_randaugment_alone(tree):
    aug = build_finetune_loader(tree, train=True, batch_size=12, tcfg=tcfg(randaug_ops=2), seed=6)
    plain = build_finetune_loader(tree, train=True, batch_size=12, tcfg=tcfg(), seed=6)
    assert changed_samples(raw(torch.cat([b["image"] for b in aug]))[:, 0]) >= N // 3
    assert changed_samples(raw(torch.cat([b["image"] for b in plain]))[:, 0]) == 0
    # linear-probe mode: crop + flip only, whatever the config says about the other augmentations
    probe = build_finetune_loader(tree, train=True, mode="probe", batch_size=12, seed=6,
                                  tcfg=tcfg(randaug_ops=2, rotate_deg=10.0, reprob=1.0))
    batches = list(probe)
    assert changed_samples(raw(torch.cat([b["image"] for b in batches]))[:, 0]) == 0
    assert all(int(y) == tree[file_of(x)].label for b in batches for x, y in zip(b["image"], b["label"]))
    # equal statistics: the three channels are identical tensors
    eq = build_finetune_loader(tree[:8], train=True, batch_size=8, tcfg=tcfg(in_chans=3, mean=(MEAN,) * 3,
                                                                             std=(STD,) * 3), seed=0)
    b = next(iter(eq))["image"]
    assert torch.equal(b[:, 0], b[:, 1]) and torch.equal(b[:, 0], b[:, 2])


def test_random_erasing(tree):
    ld = build_finetune_loader(tree, train=True, batch_size=12, tcfg=tcfg(reprob=1.0), seed=2)
    x = torch.cat([b["image"] for b in ld])[:, 0]
    zero = (x == 0).float().mean((1, 2))  # erased to 0 after normalisation; no level maps to 0
    assert (zero > 0.01).all() and (zero < 0.6).all(), zero
    for img in x:  # the erased area is one axis-aligned box
        ys, xs = torch.nonzero(img == 0, as_tuple=True)
        box = (int(ys.max()) - int(ys.min()) + 1) * (int(xs.max()) - int(xs.min()) + 1)
        assert box == len(ys)


# ---------------------------------------------------------------------------- eval

def test_eval_covers_every_record_once_in_order(tree):
    ld = build_finetune_loader(tree, train=False, batch_size=5, tcfg=tcfg(), seed=3)
    assert len(ld) == 5
    p1, p2 = list(ld), list(ld)
    assert [b["image"].shape[0] for b in p1] == [5, 5, 5, 5, 4]
    labels = torch.cat([b["label"] for b in p1])
    assert labels.tolist() == [r.label for r in tree]
    x1 = torch.cat([b["image"] for b in p1])
    assert torch.equal(x1, torch.cat([b["image"] for b in p2]))  # deterministic, and the reader wrapped
    assert [file_of(s) for s in x1] == list(range(N))
    for i in (0, 1, 2, 5):  # PNG files: exact constant -> (v / 255 - mean) / std
        want = (level(i) / 255.0 - MEAN) / STD
        assert torch.allclose(x1[i], torch.full_like(x1[i], want), atol=1e-5), i
    # a resumed eval pass yields the rest of it, the same pixels
    it = iter(ld)
    next(it), next(it)
    st = ld.state_dict()
    ld2 = build_finetune_loader(tree, train=False, batch_size=5, tcfg=tcfg(), seed=3)
    ld2.load_state_dict(st)
    assert same(list(ld2), p1[2:])


def test_eval_matches_torch_transform(tmp_path):
    """Resize-shorter + centre crop: the DALI output agrees with the torch loader's eval transform."""
    rng = np.random.default_rng(0)
    recs = []
    for i, (h, w) in enumerate([(48, 64), (70, 40), (37, 37)]):
        p = tmp_path / f"lesion{i}.png"
        cv2.imwrite(str(p), lesion_image(rng, i % 2, h, w))
        recs.append(Record(p, i % 2, f"g{i}"))
    cfg = tcfg()
    x = next(iter(build_finetune_loader(recs, train=False, batch_size=3, tcfg=cfg)))["image"]
    tf = build_transform(cfg, "eval")
    ref = torch.stack([tf(torch.from_numpy(cv2.imread(str(r.path), cv2.IMREAD_GRAYSCALE))[None]) for r in recs])
    diff = (raw(x) - raw(ref)).abs()  # gray levels; a crop one pixel off gives a mean of ~10
    assert diff.mean() < 1.0 and diff.max() < 3.0, (diff.mean(), diff.max())


# ---------------------------------------------------------------------------- resume

@pytest.mark.parametrize("balanced", [False, True])
def test_resume_is_exact_across_epochs(tree, balanced):
    """State after 3 / 5 (the epoch's end) / 7 batches -> a new loader yields exactly the batches
    the uninterrupted loader yields next, with full augmentation (RandAugment, rotation, erasing)."""
    cfg = tcfg(randaug_ops=2, rotate_deg=10.0, reprob=0.5)
    labels = [r.label for r in tree]
    w = class_balanced_weights(labels, 2)[np.array(labels)] if balanced else None

    def make():
        return build_finetune_loader(tree, train=True, batch_size=5, tcfg=cfg, seed=4, sample_weights=w,
                                     drop_last=True)

    ref = make()
    assert len(ref) == 4
    want = take(ref, 10)  # epochs 0, 1 and half of 2
    for k in (3, 4, 6):
        ld = make()
        assert same(take(ld, k), want[:k])
        state = ld.state_dict()
        new = make()
        new.load_state_dict(state)
        assert same(take(new, 3), want[k:k + 3]), k
        assert new.state_dict()["epoch"] == (k + 3) // 4


def test_state_mismatch_is_refused(tree):
    ld = build_finetune_loader(tree, train=True, batch_size=5, tcfg=tcfg(), seed=0)
    other = build_finetune_loader(tree, train=True, batch_size=6, tcfg=tcfg(), seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        other.load_state_dict(ld.state_dict())
    with pytest.raises(ValueError, match="not dali_finetune"):
        ld.load_state_dict({"epoch": 0, "batches_done": 0, "seed": 0})  # a torch loader's state


# ---------------------------------------------------------------------------- balanced sampling

def test_balanced_sampling_evens_classes(tree):
    recs = [r for i, r in enumerate(tree) if r.label == 0 or i in (1, 3, 5)]  # 12 : 3
    labels = [r.label for r in recs]
    w = class_balanced_weights(labels, 2)[np.array(labels)]
    ld = build_finetune_loader(recs, train=True, batch_size=5, tcfg=tcfg(), seed=5, sample_weights=w)
    draws = []
    for _ in range(4):
        ep = [int(v) for b in ld for v in b["label"]]
        assert len(ep) == len(recs)
        draws.append(ep)
    frac = np.mean([v for ep in draws for v in ep])
    assert 0.35 < frac < 0.65, frac  # minority ~ half the draws instead of 20 %
    assert len({tuple(ep) for ep in draws}) == 4  # drawn afresh each epoch
    plain = build_finetune_loader(recs, train=True, batch_size=5, tcfg=tcfg(), seed=5)
    assert sorted(int(v) for b in plain for v in b["label"]) == sorted(labels)
    with pytest.raises(ValueError, match="sample_weights"):
        build_finetune_loader(recs, train=True, batch_size=5, tcfg=tcfg(), sample_weights=w[:-1])


# ---------------------------------------------------------------------------- errors

def test_unreadable_files_are_named(tree, tmp_path):
    txt = tmp_path / "notes.png"
    txt.write_text("not an image")
    with pytest.raises(ValueError, match="notes.png"):
        build_finetune_loader([tree[0], Record(txt, 1, "x")], train=False, batch_size=2, tcfg=tcfg())
    with pytest.raises(FileNotFoundError, match="missing.png"):
        build_finetune_loader([Record(tmp_path / "missing.png", 0, "x")], train=False, batch_size=2, tcfg=tcfg())
    with pytest.raises(ValueError, match="--loader torch"):
        build_finetune_loader([Record(None, 0, "x", image=np.zeros((8, 8), np.uint8))], train=False,
                              batch_size=2, tcfg=tcfg())
    trunc = tmp_path / "trunc.png"  # a valid PNG header, then nothing
    trunc.write_bytes(tree[0].path.read_bytes()[:40])
    assert image_format(trunc) == "png"
    ld = build_finetune_loader([tree[0], tree[2], Record(trunc, 0, "t"), tree[6]], train=False, batch_size=2,
                               tcfg=tcfg())
    with pytest.raises(RuntimeError, match=r"cannot decode \[.*trunc\.png"):
        list(ld)
    with pytest.raises(ValueError, match="mode"):
        DaliFinetuneLoader(tree, FinetuneOptions(img_size=SIZE, mode="test"))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            build_finetune_loader(tree, train=False, batch_size=2, tcfg=tcfg(), device="gpu")


# ---------------------------------------------------------------------------- the runner

def test_runner_with_dali_loader(tmp_path):
    """finetune.runner with loader="dali": a tiny ViT, one epoch, class-balanced sampling; every
    test image is scored exactly once."""
    from finetune import runner as FT

    export = make_export(tmp_path / "export", img_size=32, patch_size=8, in_chans=1, depth=1)
    rng = np.random.default_rng(1)
    items = []
    for i in range(22):
        p = tmp_path / "imgs" / f"{i:02d}.png"
        p.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(p), lesion_image(rng, int(i % 3 == 0), 40, 44))
        items.append((p, int(i % 3 == 0), f"pt{i}"))
    r = FT.finetune(items[:15], items[15:], init=str(export), loader="dali", epochs=1, warmup_epochs=0,
                    batch_size=4, workers=1, val_fraction=0.0, balanced="sampler", progress=False)
    assert r["n_test"] == 7 and np.array(r["confusion_matrix"]).sum() == 7
    assert r["config"]["loader"] == "dali" and np.isfinite(r["test_loss"])
