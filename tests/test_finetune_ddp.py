"""The fine-tune runner on several ranks (torch DDP over gloo, CPU) and ``--resume``.

- the rank split of both loaders at world sizes 1-3: the ranks' batches put together are the
  one-rank global batches, equal step counts, eval records exactly once (in process, no ranks);
- ``--resume`` at world size 1: a run killed mid-epoch and resumed ends exactly like the
  uninterrupted run (in process);
- two ranks under torchrun (gloo): each test record predicted exactly once (ids checked),
  metrics equal to a one-rank run with the same global batch, and a 2-rank run killed mid-epoch
  (both ranks exit right after a checkpoint, like a preempted job) and resumed with
  ``torchrun ... -m finetune --resume`` ends with the uninterrupted 2-rank run's metrics,
  predictions and log; a 2-rank linear probe (BatchNorm over the global batch) equals one rank.

Run as a script under torchrun (``tests/test_finetune_ddp.py FULL_DIR KILLED_DIR E S -- ARGS``)
this file makes the 2-rank runs in one launch (process start-up is most of their cost): the
uninterrupted one into FULL_DIR, a linear probe beside it, then the killed one into KILLED_DIR,
whose checkpoint save is wrapped to end the processes once checkpoint (E, S) is complete.
"""
from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dali_pipes.finetune_plan import eval_plan, global_order, train_plan, train_steps
from finetune import runner as FT
from finetune.checkpoint import FinetuneCheckpoints
from finetune.config import config_from_args
from finetune.tasks import Record
from dali_pipes.finetune_torch import TransformConfig, build_finetune_loader, class_balanced_weights

try:
    from finetune_fixtures import lesion_image, make_busbra, make_export
    from finetune_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)
    from helpers import run_py
except ImportError:  # tests/ imported as a package
    from tests.finetune_fixtures import lesion_image, make_busbra, make_export
    from tests.finetune_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)
    from tests.helpers import run_py

# 3 epochs of 2 steps at global batch 8 (4 per rank x 2), fp32 and no drop path so one and two
# ranks compute the same thing; RandAugment/erasing stay on (seeded per sample).
RECIPE = ["--epochs", "3", "--warmup-epochs", "1", "--lr", "1e-3", "--drop-path", "0", "--precision", "fp32",
          "--workers", "0", "--no-progress"]
KILLED = ["--save-every-steps", "1"]  # the killed run checkpoints every step


# ---------------------------------------------------------------------------- rank split (no ranks)

@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("balanced", [False, True])
def test_train_plan_is_the_one_rank_plan_split(world, balanced):
    n, b = 23, 3
    w = class_balanced_weights([i % 3 == 0 for i in range(n)], 2)[np.array([int(i % 3 == 0) for i in range(n)])]
    order = global_order(n, seed=5, epoch=2, shuffle=True, weights=w / w.sum() if balanced else None)
    one, one_pos = train_plan(order, b * world, 0, 1, drop_last=True)
    parts = [train_plan(order, b, r, world, drop_last=True) for r in range(world)]
    steps = train_steps(n, b, world, drop_last=True)
    assert all(len(p[0]) == steps * b for p in parts)  # equal steps on every rank
    glued = np.stack([p[1].reshape(steps, b) for p in parts], axis=1).reshape(-1)
    assert np.array_equal(glued, one_pos) and np.array_equal(order[glued], one)
    # no drop_last and fewer records than one global batch: padded, still equal and non-empty
    tiny = [train_plan(np.arange(5), 4, r, world) for r in range(world)]
    assert all(len(t[0]) == 4 for t in tiny) and set(np.concatenate([t[0] for t in tiny])) == set(range(5))


def test_eval_plan_covers_each_record_once():
    for n in (0, 1, 5, 17):
        for world in (1, 2, 3):
            chunks = [eval_plan(n, r, world) for r in range(world)]
            assert np.array_equal(np.concatenate(chunks), np.arange(n))


def test_torch_loader_ranks_see_the_global_batches(tmp_path):
    """Two rank loaders at batch 3 yield, batch by batch, the halves of the one-rank loader's
    batches of 6 — the same pixels, since augmentation is seeded per sample — and resume."""
    rng = np.random.default_rng(0)
    recs = [Record(None, i % 2, f"g{i}", image=lesion_image(rng, i % 2, 40, 44)) for i in range(17)]
    tcfg = TransformConfig(img_size=32, in_chans=1)
    kw = {"train": True, "tcfg": tcfg, "seed": 7, "drop_last": True}
    one = build_finetune_loader(recs, batch_size=6, **kw)
    ranks = [build_finetune_loader(recs, batch_size=3, rank=r, world_size=2, **kw) for r in range(2)]
    for epoch in (0, 1):
        for ld in (one, *ranks):
            ld.set_epoch(epoch)
        ref = list(one)
        got = [list(ld) for ld in ranks]
        assert len(ref) == len(got[0]) == len(got[1]) == len(ranks[0]) == 17 // 6
        for k, b in enumerate(ref):
            assert torch.equal(torch.cat([got[0][k]["index"], got[1][k]["index"]]), b["index"])
            assert torch.equal(torch.cat([got[0][k]["image"], got[1][k]["image"]]), b["image"])
    # rank 1 resumed after its first batch of epoch 1 continues with the same batches
    ranks[1].set_epoch(1)
    it = iter(ranks[1])
    next(it)
    again = build_finetune_loader(recs, batch_size=3, rank=1, world_size=2, **kw)
    again.load_state_dict(ranks[1].state_dict())
    assert [torch.equal(a["image"], b["image"]) for a, b in zip(again, got[1][1:])] == [True]
    with pytest.raises(ValueError, match="rank 1 of 2"):
        build_finetune_loader(recs, batch_size=3, **kw).load_state_dict(ranks[1].state_dict())
    ev = [build_finetune_loader(recs, train=False, batch_size=4, tcfg=tcfg, rank=r, world_size=3) for r in range(3)]
    assert torch.cat([b["index"] for ld in ev for b in ld]).tolist() == list(range(17))


def test_dali_loader_ranks(tmp_path):
    pytest.importorskip("nvidia.dali")
    import cv2

    recs = []
    for i in range(11):
        p = tmp_path / f"{i}.png"
        cv2.imwrite(str(p), np.full((20, 24), 10 + 20 * i, np.uint8))
        recs.append(Record(p, i % 2, f"g{i}"))
    tcfg = TransformConfig(img_size=16, in_chans=1, randaug_ops=0, reprob=0)
    w = class_balanced_weights([r.label for r in recs], 2)[[r.label for r in recs]]
    kw = {"tcfg": tcfg, "loader": "dali", "seed": 3, "sample_weights": w}
    one = build_finetune_loader(recs, train=True, batch_size=4, drop_last=True, **kw)
    ranks = [build_finetune_loader(recs, train=True, batch_size=2, drop_last=True, rank=r, world_size=2, **kw)
             for r in range(2)]
    ref = [b["index"] for b in one]
    got = [[b["index"] for b in ld] for ld in ranks]
    assert len(got[0]) == len(got[1]) == len(ref) == 2
    assert all(torch.equal(torch.cat([got[0][k], got[1][k]]), ref[k]) for k in range(2))
    ev = [build_finetune_loader(recs, train=False, batch_size=2, rank=r, world_size=3, **kw) for r in range(3)]
    assert torch.cat([b["index"] for ld in ev for b in ld]).tolist() == list(range(11))


# ---------------------------------------------------------------------------- resume, one rank

class _Killed(Exception):
    pass


def test_resume_mid_epoch_one_rank(tmp_path, monkeypatch):
    """Killed right after the checkpoint at epoch 2, step 1, then ``resume="auto"``: the same
    log, metrics and test probabilities as the uninterrupted run (bit for bit)."""
    export = make_export(tmp_path / "export", img_size=32, patch_size=8, depth=2)
    rng = np.random.default_rng(1)
    data = [(lesion_image(rng, i % 2, 40, 40), i % 2, f"p{i // 2}") for i in range(36)]
    kw = {"init": str(export), "epochs": 3, "warmup_epochs": 1, "batch_size": 8, "lr": 1e-3,
          "precision": "fp32", "mixup": 0.4, "val_fraction": 0.2, "save_every_steps": 1}
    full = FT.finetune(data[:28], data[28:], output_dir=str(tmp_path / "full"), **kw)

    real_save = FinetuneCheckpoints.save

    def save_then_die(self, epoch, step, **a):
        out = real_save(self, epoch, step, **a)
        if (epoch, step) == (1, 1):
            raise _Killed
        return out

    monkeypatch.setattr(FinetuneCheckpoints, "save", save_then_die)
    with pytest.raises(_Killed):
        FT.finetune(data[:28], data[28:], output_dir=str(tmp_path / "cut"), **kw)
    monkeypatch.setattr(FinetuneCheckpoints, "save", real_save)
    assert (tmp_path / "cut" / "checkpoints" / "latest").read_text() == "e0001_s000001"
    resumed = FT.finetune(data[:28], data[28:], output_dir=str(tmp_path / "cut"), resume="auto", **kw)
    assert resumed["distributed"]["resumed_from"].endswith("e0001_s000001")
    for k in ("accuracy", "f1", "auc", "test_loss", "best_epoch", "val"):
        assert resumed[k] == full[k], k
    logs = [(tmp_path / d / "log.jsonl").read_text() for d in ("full", "cut")]
    assert logs[0] == logs[1] and len(logs[0].splitlines()) == 3
    ckpts = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir())
    assert ckpts[-2:] == ["e0003_s000000", "latest"] and len([c for c in ckpts if c.startswith("e")]) == 1
    final = tmp_path / "cut" / "checkpoints" / "e0003_s000000"
    assert sorted(f.name for f in final.iterdir()) == ["state.json"]  # complete: only the best weights stay
    assert [f.name for f in final.parent.glob("best_e*.safetensors")] == [f"best_e{full['best_epoch'] - 1:04d}.safetensors"]
    rescored = FT.finetune(data[:28], data[28:], output_dir=str(tmp_path / "cut"), resume="auto", **kw)
    assert rescored["test_loss"] == full["test_loss"] and rescored["best_epoch"] == full["best_epoch"]
    with pytest.raises(ValueError, match="another configuration.*lr"):
        FT.finetune(data[:28], data[28:], output_dir=str(tmp_path / "cut"), resume="auto", **{**kw, "lr": 2e-3})


# ---------------------------------------------------------------------------- two ranks (torchrun)

@pytest.fixture(scope="module")
def busbra(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    data = make_busbra(root / "busbra", n_cases=14)  # 27 images, 5 in test fold 1: uneven over 2 ranks
    export = make_export(root / "export", img_size=32, patch_size=8, depth=2)
    args = ["--task", "busbra", "--data-root", str(data["dir"]), "--init", str(export), *RECIPE]
    return {"root": root, "data": data, "args": args}


def _torchrun(args: list[str], nproc: int = 2, script: list[str] | None = None) -> None:
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    target = script or ["-m", "finetune"]
    run_py(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *target, *args],
           env=env, timeout=300)


def _predictions(run_dir: Path) -> list[dict]:
    with (run_dir / "predictions.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def two_rank_runs(busbra):
    """(uninterrupted run dir, killed run dir): 2 ranks at batch 4, one launch (which also makes
    the 2-rank linear probe in ``two_ranks_probe``)."""
    full, killed = busbra["root"] / "two_ranks", busbra["root"] / "killed"
    _torchrun([str(full), str(killed), "1", "1", "--", *busbra["args"], "--batch-size", "4"], script=[__file__])
    return full, killed


def test_two_ranks_predict_each_test_record_once_and_match_one_rank(busbra, two_rank_runs):
    two_rank_run = two_rank_runs[0]
    r2 = json.loads((two_rank_run / "results.json").read_text())
    assert r2["distributed"] == {**r2["distributed"], "world_size": 2, "backend": "gloo", "global_batch": 8}
    assert r2["compute_precision"]["used"] == "fp32" and r2["config"]["precision"] == "fp32"
    test_ids = sorted(f"{i}.png" for i, k in busbra["data"]["fold5"].items() if k == 1)
    preds = _predictions(two_rank_run)
    assert sorted(p["id"] for p in preds) == test_ids and r2["n_test"] == len(test_ids) == 5
    assert np.array(r2["confusion_matrix"]).sum() == 5
    assert [json.loads(x)["steps"] for x in (two_rank_run / "log.jsonl").read_text().splitlines()] == [2, 2, 2]
    # one rank, batch 8 = the same global batches: the same run up to float summation order
    one = busbra["root"] / "one_rank"
    assert FT.main([*busbra["args"], "--output-dir", str(one), "--batch-size", "8"]) == 0
    r1 = json.loads((one / "results.json").read_text())
    assert r1["distributed"]["global_batch"] == 8 and r1["config"]["lr"] == r2["config"]["lr"]
    assert (r1["best_epoch"], r1["accuracy"], r1["confusion_matrix"]) == (r2["best_epoch"], r2["accuracy"],
                                                                           r2["confusion_matrix"])
    p1 = np.array([[float(v) for k, v in p.items() if k.startswith("p_")] for p in _predictions(one)])
    p2 = np.array([[float(v) for k, v in p.items() if k.startswith("p_")] for p in preds])
    assert np.abs(p1 - p2).max() < 1e-4, np.abs(p1 - p2).max()


def test_two_rank_linear_probe_matches_one_rank(busbra, two_rank_runs):
    """The probe's BatchNorm normalises over the global batch on CPU too (all-reduced statistics),
    so 2 ranks x 4 = 1 rank x 8 for linear probing as well."""
    two = two_rank_runs[0].parent / "two_ranks_probe"
    one = busbra["root"] / "one_rank_probe"
    assert FT.main([*busbra["args"], "--linear-probe", "--output-dir", str(one), "--batch-size", "8"]) == 0
    r1, r2 = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert r2["mode"] == "linear_probe" and r2["distributed"]["world_size"] == 2
    assert (r1["best_epoch"], r1["confusion_matrix"]) == (r2["best_epoch"], r2["confusion_matrix"])
    assert r1["test_loss"] == pytest.approx(r2["test_loss"], abs=1e-4)
    p1, p2 = ([[float(v) for k, v in p.items() if k.startswith("p_")] for p in _predictions(d)] for d in (one, two))
    assert np.abs(np.array(p1) - np.array(p2)).max() < 1e-4


def test_two_ranks_killed_and_resumed(busbra, two_rank_runs):
    two_rank_run, out = two_rank_runs
    assert (out / "checkpoints" / "latest").read_text() == "e0001_s000001"
    assert sorted(f.name for f in (out / "checkpoints" / "e0001_s000001").iterdir()) == [
        "model.safetensors", "optimizer.pt", "rank0.pt", "rank1.pt", "state.json"]
    assert not (out / "results.json").exists()
    _torchrun([*busbra["args"], "--batch-size", "4", *KILLED, "--output-dir", str(out), "--resume"])
    a, b = (json.loads((d / "results.json").read_text()) for d in (two_rank_run, out))
    assert b["distributed"]["resumed_from"].endswith("e0001_s000001")
    for k in ("accuracy", "f1", "auc", "test_loss", "best_epoch", "val", "confusion_matrix"):
        assert a[k] == b[k], k
    assert _predictions(two_rank_run) == _predictions(out)
    assert (two_rank_run / "log.jsonl").read_text() == (out / "log.jsonl").read_text()


# ---------------------------------------------------------------------------- the 2-rank runs

def _two_runs(full: str, killed: str, epoch: int, step: int, argv: list[str]) -> None:
    """Under torchrun: the uninterrupted run, then the same run checkpointing every step and
    ended like a preempted job (no clean-up, no results) on every rank as soon as checkpoint
    (epoch, step) is complete."""
    FT.run_finetune(config_from_args([*argv, "--output-dir", full]))
    FT.run_finetune(config_from_args([*argv, "--linear-probe", "--output-dir", str(Path(full).parent / "two_ranks_probe")]))
    real_save = FinetuneCheckpoints.save

    def save_then_exit(self, e, s, **kw):
        path = real_save(self, e, s, **kw)
        if (e, s) == (epoch, step):
            sys.stdout.flush()
            os._exit(0)
        return path

    FinetuneCheckpoints.save = save_then_exit
    FT.main([*argv, *KILLED, "--output-dir", killed])
    raise SystemExit(f"checkpoint ({epoch}, {step}) was never saved")


if __name__ == "__main__":
    a = sys.argv[1:]
    if len(a) < 5 or a[4] != "--":
        sys.exit("usage: torchrun ... test_finetune_ddp.py FULL_DIR KILLED_DIR EPOCH STEP -- FINETUNE_ARGS")
    _two_runs(a[0], a[1], int(a[2]), int(a[3]), a[5:])
