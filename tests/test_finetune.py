"""Fine-tune runner: model loading, recipe pieces, loader, and short end-to-end runs (CPU, tiny
ViT, 32 px) on synthetic BUS-BRA / MMOTU-2D / GIST514-DB trees, plus the comparison suite."""
from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from finetune import runner as FT
from finetune.config import ENCODER, PROBE_BLR, FinetuneConfig, config_from_args
from finetune.engine import build_optimizer, lr_at, smooth_one_hot, soft_cross_entropy, train_one_epoch
from finetune.models import build_model, load_baseline, load_encoder
from finetune.tasks import Record
from dali_pipes.finetune_torch import TransformConfig, build_finetune_loader, class_balanced_weights
from trainer.param_groups import layer_decay_groups, weight_decay_groups

try:
    from finetune_fixtures import lesion_image, make_busbra, make_export, make_gist, make_mmotu
    from finetune_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)
except ImportError:  # tests/ imported as a package
    from tests.finetune_fixtures import lesion_image, make_busbra, make_export, make_gist, make_mmotu
    from tests.finetune_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--epochs", "2", "--warmup-epochs", "1", "--batch-size", "8", "--workers", "0", "--no-progress",
        "--lr", "1e-3"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    return {
        "root": root,
        "export": make_export(root / "export", img_size=32, patch_size=8, in_chans=1, depth=2),
        "busbra": make_busbra(root / "busbra", n_cases=14),
        "mmotu": make_mmotu(root / "mmotu", n_train=16, n_val=8),
        "gist": make_gist(root / "gist", n=20),
    }


def _tiny_vit(**kw):
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, patch_size=8,
                             depth=2, in_chans=1, **kw)


# ---------------------------------------------------------------------------- recipe pieces

def test_layer_decay_groups():
    m = _tiny_vit(global_pool="avg")
    groups = layer_decay_groups(m, weight_decay=0.05, layer_decay=0.65)
    scale_of, wd_of = {}, {}
    for g in groups:
        for p in g["params"]:
            scale_of[id(p)], wd_of[id(p)] = g["lr_scale"], g["weight_decay"]
    named = dict(m.named_parameters())
    assert len(scale_of) == len(named)  # every parameter exactly once
    assert scale_of[id(named["patch_embed.proj.weight"])] == pytest.approx(0.65 ** 3)
    assert scale_of[id(named["cls_token"])] == pytest.approx(0.65 ** 3)
    assert scale_of[id(named["blocks.0.attn.qkv.weight"])] == pytest.approx(0.65 ** 2)
    assert scale_of[id(named["blocks.1.mlp.fc1.weight"])] == pytest.approx(0.65)
    assert scale_of[id(named["head.weight"])] == 1.0
    assert scale_of[id(named["fc_norm.weight"])] == 1.0
    for name in ("pos_embed", "cls_token", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias", "head.bias"):
        assert wd_of[id(named[name])] == 0.0, name
    assert wd_of[id(named["blocks.0.attn.qkv.weight"])] == 0.05
    m.blocks[0].requires_grad_(False)
    n_trainable = sum(len(g["params"]) for g in layer_decay_groups(m, 0.05, 0.65))
    assert n_trainable == sum(p.requires_grad for p in m.parameters())
    plain = weight_decay_groups(timm.create_model("resnet18", pretrained=False, num_classes=2), 0.05)
    assert {g["name"] for g in plain} == {"decay", "no_decay"}
    assert all(p.ndim == 1 for p in next(g for g in plain if g["name"] == "no_decay")["params"])


def test_lr_schedule_warmup_cosine():
    cfg = FinetuneConfig(epochs=10, warmup_epochs=2, lr=1e-3, min_lr=1e-6)
    assert lr_at(0.0, cfg) == 0.0
    assert lr_at(1.0, cfg) == pytest.approx(5e-4)
    assert lr_at(2.0, cfg) == pytest.approx(1e-3)
    assert lr_at(6.0, cfg) == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5)
    assert lr_at(10.0, cfg) == pytest.approx(1e-6)
    r = FT.resolve_config(FinetuneConfig(batch_size=64))
    assert r.lr == pytest.approx(5e-4 * 64 / 256) and r.label_smoothing == 0.1 and r.weight_decay == 0.05
    assert FT.resolve_config(FinetuneConfig(epochs=3, warmup_epochs=5)).warmup_epochs == pytest.approx(0.3)
    p = FT.resolve_config(FinetuneConfig(batch_size=64, linear_probe=True, mixup=0.8))
    assert p.blr == PROBE_BLR and p.weight_decay == 0.0 and p.label_smoothing == 0.0 and p.mixup == 0.0


def test_soft_cross_entropy_matches_torch():
    torch.manual_seed(0)
    logits, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 1, 0])
    t = smooth_one_hot(y, 4, 0.1)
    assert torch.allclose(t.sum(1), torch.ones(6))
    ref = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1)
    assert soft_cross_entropy(logits, t).item() == pytest.approx(ref.item(), rel=1e-5)
    w = torch.tensor([1.0, 2.0, 0.5, 1.0])
    manual = -(w[y] * torch.log_softmax(logits, -1)[torch.arange(6), y]).mean()
    assert soft_cross_entropy(logits, smooth_one_hot(y, 4, 0.0), w).item() == pytest.approx(manual.item(), rel=1e-5)


# ---------------------------------------------------------------------------- model loading

def test_load_encoder_from_export(env, tmp_path):
    from safetensors.torch import load_file

    saved = load_file(str(env["export"] / "model.safetensors"))
    model, enc = load_encoder(env["export"], num_classes=2)
    sd = model.state_dict()
    for k in ("blocks.1.attn.qkv.weight", "patch_embed.proj.weight", "pos_embed", "cls_token"):
        assert torch.equal(sd[k], saved[k]), k
    assert isinstance(model.norm, torch.nn.Identity) and "fc_norm.weight" in sd  # MAE: avg pool + fc_norm
    assert model.head.weight.abs().max() < 1e-4 and torch.all(model.head.bias == 0)
    assert enc["mean"] == 0.3 and enc["img_size"] == 32 and enc["in_chans"] == 1
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 2)
    # another input size resamples pos_embed; RGB input converts the patch conv
    big, enc2 = load_encoder(env["export"], num_classes=2, img_size=48, in_chans=3)
    assert big.pos_embed.shape[1] == 1 + 36 and enc2["in_chans"] == 3
    assert big(torch.zeros(1, 3, 48, 48)).shape == (1, 2)
    gray = torch.rand(1, 1, 32, 32)
    w1, w3 = model.patch_embed.proj, load_encoder(env["export"], num_classes=2, in_chans=3)[0].patch_embed.proj
    assert torch.allclose(w1(gray), w3(gray.expand(1, 3, 32, 32)), atol=1e-5)  # same response to gray
    # a weight the architecture does not have is refused
    bad = tmp_path / "bad_export"
    bad.mkdir()
    (bad / "config.json").write_text((env["export"] / "config.json").read_text())
    save_file({**saved, "decoder_embed.weight": torch.zeros(2, 2)}, str(bad / "model.safetensors"))
    with pytest.raises(ValueError, match="decoder_embed"):
        load_encoder(bad, num_classes=2)
    # random init of the same architecture
    rnd, enc3 = load_encoder("none", num_classes=2, arch=str(env["export"]))
    assert enc3["source"] == "random init" and enc3["depth"] == 2
    assert not torch.equal(rnd.state_dict()["blocks.1.attn.qkv.weight"], saved["blocks.1.attn.qkv.weight"])


def test_checkpoint_dir_goes_through_trainer_export(env, tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoints" / "step_10"
    ckpt.mkdir(parents=True)
    monkeypatch.setitem(sys.modules, "trainer.export", None)  # import fails
    with pytest.raises(RuntimeError, match="export_from_checkpoint is unavailable"):
        load_encoder(ckpt, num_classes=2, work_dir=tmp_path)
    calls = []

    def fake_export(ckpt_dir, out_dir):
        calls.append((ckpt_dir, out_dir))
        return make_export(out_dir, img_size=32, patch_size=8, depth=2)

    monkeypatch.setitem(sys.modules, "trainer.export", types.SimpleNamespace(export_from_checkpoint=fake_export))
    model, enc = load_encoder(ckpt, num_classes=2, work_dir=tmp_path)
    assert calls and calls[0][0] == ckpt and enc["source"] == str(tmp_path / "init_export")
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 2)


def test_baseline_local_checkpoint(tmp_path):
    torch.manual_seed(1)
    src = timm.create_model("resnet18", pretrained=False, num_classes=7)
    torch.save({"state_dict": src.state_dict()}, tmp_path / "r18.pth")
    save_file(src.state_dict(), str(tmp_path / "r18.safetensors"))
    for f in ("r18.pth", "r18.safetensors"):
        m = load_baseline("resnet18", 2, ckpt=tmp_path / f, img_size=32, in_chans=1)
        assert torch.allclose(m.conv1.weight, src.conv1.weight.sum(1, keepdim=True))  # RGB conv -> gray
        assert torch.equal(m.layer4[1].conv2.weight, src.layer4[1].conv2.weight)
        assert m.fc.weight.shape == (2, 512)
    torch.save({"conv_wrong.weight": torch.zeros(1)}, tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="does not match resnet18"):
        load_baseline("resnet18", 2, ckpt=tmp_path / "junk.pth")


def test_linear_probe_freezes_encoder(env):
    cfg = FinetuneConfig(model=ENCODER, init=str(env["export"]), linear_probe=True, epochs=1, warmup_epochs=0,
                            batch_size=4, workers=0, progress=False)
    bundle = build_model(cfg, 2)
    trainable = [n for n, p in bundle.model.named_parameters() if p.requires_grad]
    assert trainable == ["head.1.weight", "head.1.bias"]
    cfg = FT.resolve_config(cfg, bundle)
    before = {n: t.clone() for n, t in bundle.model.state_dict().items()}
    rng = np.random.default_rng(0)
    recs = [Record(None, i % 2, f"g{i}", image=lesion_image(rng, i % 2, 40, 40)) for i in range(8)]
    tcfg = TransformConfig(img_size=32, in_chans=1)
    loader = build_finetune_loader(recs, train=True, mode="probe", batch_size=4, tcfg=tcfg)
    train_one_epoch(bundle.model, loader, build_optimizer(bundle, cfg), cfg, 0, torch.device("cpu"), 2)
    after = bundle.model.state_dict()
    assert torch.equal(after["blocks.0.attn.qkv.weight"], before["blocks.0.attn.qkv.weight"])
    assert torch.equal(after["fc_norm.weight"], before["fc_norm.weight"])
    assert not torch.equal(after["head.1.weight"], before["head.1.weight"])
    assert not torch.equal(after["head.0.running_mean"], before["head.0.running_mean"])  # probe BN trained


# ---------------------------------------------------------------------------- loader

def test_loader_batch_contract_and_resume(env):
    recs = [Record(p, i % 2, f"g{i}") for i, p in enumerate(sorted((env["busbra"]["dir"] / "Images").glob("*.png"))[:10])]
    tcfg = TransformConfig(img_size=32, in_chans=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    ld = build_finetune_loader(recs, train=True, batch_size=4, tcfg=tcfg, seed=3)
    batches = list(ld)
    assert len(ld) == 3 and len(batches) == 3
    b = batches[0]
    assert b["image"].shape == (4, 3, 32, 32) and b["image"].dtype == torch.float32
    assert b["label"].dtype == torch.int64
    assert torch.equal(b["image"][:, 0], b["image"][:, 1])  # gray expanded to 3 channels
    # sample order is a function of (seed, epoch); a resumed epoch yields the remaining batches
    labels = [x["label"].tolist() for x in batches]
    ld.set_epoch(0)
    it = iter(ld)
    next(it)
    state = ld.state_dict()
    ld2 = build_finetune_loader(recs, train=True, batch_size=4, tcfg=tcfg, seed=3)
    ld2.load_state_dict(state)
    assert [x["label"].tolist() for x in ld2] == labels[1:]
    ld.set_epoch(1)
    epoch1 = [v for x in ld for v in x["label"].tolist()]
    assert sorted(epoch1) == sorted(v for b in labels for v in b)  # the same samples, reshuffled
    ev = build_finetune_loader(recs, train=False, batch_size=4, tcfg=tcfg)
    e1, e2 = torch.cat([x["image"] for x in ev]), torch.cat([x["image"] for x in ev])
    assert torch.equal(e1, e2)  # eval is deterministic


def test_balanced_sampler_evens_classes():
    labels = [0] * 45 + [1] * 5
    w = class_balanced_weights(labels, 3)
    assert w[2] == 0 and w[1] == pytest.approx(9 * w[0])
    recs = [Record(None, lab, f"g{i}", image=np.full((8, 8), 100, np.uint8)) for i, lab in enumerate(labels)]
    tcfg = TransformConfig(img_size=8, in_chans=1, randaug_ops=0, reprob=0, rotate_deg=0)
    ld = build_finetune_loader(recs, train=True, batch_size=50, tcfg=tcfg, sample_weights=w[np.array(labels)])
    drawn = []
    for e in range(4):
        ld.set_epoch(e)
        drawn += [int(v) for x in ld for v in x["label"]]
    assert 0.35 < np.mean(drawn) < 0.65  # minority class ~ half the draws instead of 10 %


def test_dali_loader_unavailable_is_clear(monkeypatch):
    monkeypatch.setitem(sys.modules, "dali_pipes.finetune", None)
    with pytest.raises(RuntimeError, match=r"dali_pipes\.finetune.*--loader torch"):
        build_finetune_loader([], train=True, batch_size=2, tcfg=TransformConfig(), loader="dali")


# ---------------------------------------------------------------------------- end to end

def test_cli_busbra_writes_results(env, capsys):
    out = env["root"] / "run_busbra"
    argv = ["--task", "busbra", "--data-root", str(env["busbra"]["dir"].parent), "--init", str(env["export"]),
            "--output-dir", str(out), "--save-model", *FAST]
    rc = FT.main(argv)
    assert rc == 0
    assert config_from_args(["--config", str(out / "config.yaml")]) == config_from_args(argv)  # the run replays
    for f in ("results.json", "results.md", "confusion.png", "roc.png", "config.json", "log.jsonl",
              "model_best.safetensors"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    r = json.loads((out / "results.json").read_text())
    for k in ("accuracy", "precision", "recall", "f1", "auc"):
        assert r[k] is None or 0.0 <= r[k] <= 1.0
    cm = np.array(r["confusion_matrix"])
    test_ids = {i for i, k in env["busbra"]["fold5"].items() if k == 1}
    assert cm.sum() == r["n_test"] == len(test_ids)
    assert r["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert cm.sum(1).tolist() == [sum(env["busbra"]["label"][i] == c for i in test_ids) for c in (0, 1)]
    assert r["split"] == "fold1" and r["paper"]["f1"] == pytest.approx(0.816)
    assert [row["class"] for row in r["per_class"]] == ["benign", "malignant"]
    assert r["n_train"] + r["n_val"] == len(env["busbra"]["ids"]) - len(test_ids) and r["n_val"] > 0
    logs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in logs] == [1, 2] and "val_f1" in logs[0]
    from safetensors.torch import load_file

    assert load_file(str(out / "model_best.safetensors"))["head.weight"].shape == (2, 192)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["lr"] == 1e-3 and cfg["img_size"] == 32 and cfg["in_chans"] == 1
    md = (out / "results.md").read_text()
    assert "| F1 (macro) |" in md and "81.6" in md
    assert "USF-MAE (paper)" in capsys.readouterr().out


def test_gist_cv_aggregates_five_splits(env):
    out = env["root"] / "run_gist_cv"
    cfg = FinetuneConfig(task="gist514", data_root=str(env["gist"]["dir"]), init=str(env["export"]),
                            output_dir=str(out), cv=True, epochs=1, warmup_epochs=0, batch_size=8, workers=0,
                            progress=False, val_fraction=0.0)
    r = FT.run_finetune(cfg)
    assert r["n_folds"] == 5 and [f["split"] for f in r["folds"]] == [f"split{k}" for k in range(5)]
    f1s = [f["f1"] for f in r["folds"]]
    assert r["f1"] == pytest.approx(np.mean(f1s)) and r["std"]["f1"] == pytest.approx(np.std(f1s, ddof=1))
    assert np.array(r["confusion_matrix"]).sum() == 20  # pooled: every image tested once
    for k in range(5):
        sub = json.loads((out / f"split{k}" / "results.json").read_text())
        assert sub["n_test"] == len(env["gist"]["val"][k]) and sub["selected_by"] == "last epoch"
    saved = json.loads((out / "results.json").read_text())
    assert saved["f1"] == pytest.approx(r["f1"]) and "_pred" not in saved
    assert "± " in (out / "results.md").read_text()
    assert (out / "roc.png").is_file() and (out / "confusion.png").is_file()


def test_mmotu_linear_probe_run(env):
    out = env["root"] / "run_mmotu"
    r = FT.run_finetune(FinetuneConfig(task="mmotu2d", data_root=str(env["mmotu"]["dir"].parent),
                                          init=str(env["export"]), output_dir=str(out), linear_probe=True, epochs=1,
                                          warmup_epochs=0, batch_size=8, workers=0, progress=False,
                                          balanced="loss"))
    assert r["mode"] == "linear_probe" and len(r["per_class"]) == 8 and r["n_test"] == 8
    assert len(r["confusion_matrix"]) == 8 and r["paper"]["f1"] == pytest.approx(0.796)
    assert r["auc_classes"] == sorted({lab for _, lab in env["mmotu"]["val"]})


def test_in_memory_finetune_learns(env):
    """The demo path: arrays in, metrics out, no files; a random-init tiny ViT separates discs
    from shadowing blobs after a few epochs (training loss falls, test accuracy above chance)."""
    rng = np.random.default_rng(0)
    data = [(lesion_image(rng, i % 2, 48, 48), i % 2, f"pt{i // 2}") for i in range(96)]
    train, test = data[:72], data[72:]
    cfg = FinetuneConfig(task="memory", init="none", arch=str(env["export"]), epochs=6,
                            warmup_epochs=1, batch_size=16, lr=1e-3, workers=0, progress=False, drop_path=0.0,
                            reprob=0.0, randaug_ops=0, val_fraction=0.0)
    r = FT.finetune(train, test, cfg, class_names=["disc", "blob"])
    assert r["n_train"] == 72 and r["n_test"] == 24 and r["class_names"] == ["disc", "blob"]
    assert r["accuracy"] >= 0.8 and r["auc"] > 0.9, (r["accuracy"], r["auc"])  # chance: 0.5
    lp = FT.linear_probe(train[:16], test[:8], init=str(env["export"]), epochs=1, batch_size=8)
    assert lp["mode"] == "linear_probe" and lp["n_test"] == 8
    again = FT.linear_probe(train[:16], test[:8], init=str(env["export"]), epochs=1, batch_size=8)
    assert again["test_loss"] == lp["test_loss"]  # fixed seeds: the same run twice is identical
    other = FT.linear_probe(train[:16], test[:8], init=str(env["export"]), epochs=1, batch_size=8, seed=1)
    assert other["test_loss"] != lp["test_loss"]


def test_mixup_cutmix_sampler_bf16_path(env, monkeypatch):
    """The optional recipe pieces run together: timm mixup/cutmix (applied to even batches),
    class-balanced sampling, bf16 autocast."""
    from timm.data import Mixup

    calls = []
    orig = Mixup.__call__

    def counting(self, x, target):
        calls.append(x.shape[0])
        out_x, out_t = orig(self, x, target)
        assert out_t.shape == (x.shape[0], 2) and torch.allclose(out_t.sum(1), torch.ones(x.shape[0]))
        return out_x, out_t

    monkeypatch.setattr(Mixup, "__call__", counting)
    rng = np.random.default_rng(4)
    data = [(lesion_image(rng, int(i % 4 == 0), 40, 40), int(i % 4 == 0), f"p{i}") for i in range(20)]
    r = FT.finetune(data[:16], data[16:], init=str(env["export"]), epochs=1, warmup_epochs=0, batch_size=4,
                    mixup=0.8, cutmix=1.0, balanced="sampler", precision="bf16", val_fraction=0.0)
    assert calls and all(n % 2 == 0 for n in calls)
    assert r["config"]["mixup"] == 0.8 and r["config"]["balanced"] == "sampler" and r["n_test"] == 4
    with pytest.raises(ValueError, match="balanced: Input should be 'none', 'loss' or 'sampler'"):
        FT.finetune(data[:16], data[16:], init=str(env["export"]), epochs=1, balanced="weights")


def test_suite_runs_all_tasks(env, tmp_path):
    spec = importlib.util.spec_from_file_location("finetune_suite", ROOT / "benchmarks" / "finetune_suite.py")
    S = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(S)
    out = tmp_path / "suite"
    args = S.parse_args(["--init", str(env["export"]), "--output-dir", str(out), "--quick",
                         "--busbra", str(env["busbra"]["dir"]), "--mmotu2d", str(env["mmotu"]["dir"]),
                         "--gist514", str(env["gist"]["dir"]),
                         "--img-size", "32", "--batch-size", "8", "--workers", "0", "--no-progress"])
    rows, failed = S.run_suite(args)  # the default line-up: our encoder, ResNet-50, ViT-B/16 from scratch
    assert failed == 0
    assert [(r["task"], r["model"], r["status"]) for r in rows] == [
        (t, m, "ok") for t in S.SUITE_TASKS for m in ("encoder", "resnet50", "vit_base_patch16_224")]
    for r in rows:
        assert (out / r["task"] / r["model"] / "results.json").is_file()
        assert r["f1"] is not None
    md = (out / "comparison.md").read_text()
    assert md.count("USF-MAE (paper)") == 3 and "| busbra | USF-MAE (paper) | reported | — | — | — | 81.6 | — |" in md
    cmp_json = json.loads((out / "comparison.json").read_text())
    assert len(cmp_json["rows"]) == 9 and cmp_json["paper"]["percent"]["gist514"]["f1"] == 82.4
    # --precision auto follows trainer.precision's rule for this machine, recorded per run
    from trainer.precision import resolve_precision

    used, why = resolve_precision("auto", torch.device("cpu"))
    assert {(r["compute_precision"], r["compute_precision_reason"]) for r in cmp_json["rows"]} == {(used, why)}
    assert f"precision {used} ({why})" in md
    # no data roots and no --init: everything skipped, nothing failed, exit status 0
    assert S.main(["--output-dir", str(tmp_path / "empty"), "--quick", "--no-progress"]) == 0
    skipped = json.loads((tmp_path / "empty" / "comparison.json").read_text())["rows"]
    assert len(skipped) == 9 and all(r["status"] == "skipped" for r in skipped)
    assert any(r["reason"] == "no --mmotu2d data root" for r in skipped)
