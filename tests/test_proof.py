"""Pretraining learns something useful: on the held-out phantom lesion task, a linear probe on our
MAE-pretrained encoder beats the same architecture at random init by a clear margin.

Small budget, fixed seeds, the real tools end to end: phantom corpus + lesion task ->
``usf-shard build --holdout`` -> ``trainer/pretrain.py`` (subprocess) -> ``trainer.export`` ->
``finetune.proof`` (runner linear probes; patients split into train and test groups).

MARGIN comes from measured runs of exactly this configuration (benchmarks/results/
proof_test_seeds.json: 5 corpus/pretraining seeds x 3 patient splits, with the attention kernel
trainer/pretrain.py picks on CPU). The gain, pretrained minus random-init probe accuracy, was
0.137 +- 0.055 per split (min 0.04, max 0.225); averaged over the three splits tested here
0.137 +- 0.040 (min 0.082; seed 0, the one tested, gives 0.082). An earlier sweep with SDPA
attention gave 0.151 +- 0.041 (min 0.102; seed 0: 0.102), which also shows how far a different
numeric path (another CPU's kernels) moves the fixed-seed result. MARGIN = 0.05 sits below all 10
measured values and ~2.3 standard deviations under their mean, so seed, kernel or thread-count
noise passes, and an encoder that stops learning (gain ~0 +- 0.04) fails it or one of the other
checks (a gain on every split, higher F1 and AUC on every split, a falling loss). Every measured
split had higher F1 and AUC and a positive gain.

Precision and threads are the trainer's defaults (``--precision auto``, threads from the cores):
bf16 with eager attention where the CPU runs bf16 natively, fp32 with SDPA elsewhere. The fp32
path, measured once under AVX2 emulation (``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``,
seed 0, on a loaded 2-core machine): gain +0.158 (per split +0.155, +0.195, +0.125), higher F1
and AUC on every split, loss 0.836 -> 0.493; the same MARGIN holds.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import ROOT, run_py

PRETRAIN = str(ROOT / "trainer" / "pretrain.py")
# the configuration MARGIN was measured for (setup(seed) + probe(seed=0, splits=3) over seeds 0-4)
CORPUS_SCALE = 4.0
TASK = dict(n_patients=300, per_patient=2, small_p=0.0, size_scale=1.6, conspicuity=1.0)
MODEL, IMG_SIZE, STEPS, BATCH, BLR, WARMUP = "mae_vit_demo_patch8", 64, 800, 16, 8e-3, 50
SEED = 0
SPLITS = (0, 1, 2)  # patient splits (= runner seeds) averaged: SEED, SEED + 1, SEED + 2
MARGIN = 0.05


def setup(work: Path, seed: int = SEED) -> dict:
    """Corpus + held-out task -> shards -> pretrain -> export. Returns the paths."""
    from phantom import write_demo_corpus, write_downstream_task

    raw = work / "raw"
    write_demo_corpus(raw, seed=seed, scale=CORPUS_SCALE)
    labels = write_downstream_task(raw / "lesions_holdout", seed=seed + 1, **TASK)
    shards = work / "shards"
    run_py(["-m", "sharder.cli", "-q", "build", str(raw), "--out", str(shards), "--workers", "2",
            "--holdout", "lesions_holdout", "--text-policy", "off"])  # phantom labels are by design
    run = work / "pretrain"
    run_py([PRETRAIN, "--deepspeed_config", str(ROOT / "launch" / "ds.json"), "--data", str(shards),
            "--model", MODEL, "--img-size", str(IMG_SIZE), "--output-dir", str(run), "--max-steps", str(STEPS),
            "--batch-size", str(BATCH), "--blr", str(BLR), "--warmup-steps", str(WARMUP), "--log-every", "100",
            "--seed", str(seed), "--no-tensorboard", "--no-recon-every-epoch"])
    run_py(["-m", "trainer.export", str(run / "checkpoints"), str(work / "export")])
    return {"labels": labels, "shards": shards, "run": run, "export": work / "export"}


def probe(paths: dict, out: Path, seed: int = SEED, splits: int = len(SPLITS), probe_epochs: int = 10) -> list[dict]:
    """Linear probes, random init and pretrained, on ``splits`` patient splits (seeds seed, seed+1, ...)."""
    from finetune.proof import ProofConfig, run_proof

    cfg = ProofConfig(labels=str(paths["labels"]), export=str(paths["export"]), output_dir=str(out),
                      methods="linear_probe", seed=seed, splits=splits, shards=str(paths["shards"]),
                      probe_epochs=probe_epochs)
    return run_proof(cfg, log=lambda *_: None)


@pytest.fixture(scope="module")
def proof_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("proof")
    paths = setup(work)
    return paths, probe(paths, work / "out"), work / "out"


def test_pretrained_linear_probe_beats_random_init(proof_run):
    from finetune.proof import gains, split_gains, table

    paths, rows, _ = proof_run
    msg = "\n" + table(rows)
    assert gains(rows)["linear_probe"] >= MARGIN, msg  # mean over the 3 splits
    assert all(g > 0 for g in split_gains(rows)["linear_probe"]), msg
    by = {r["init"]: r for r in rows}
    for rnd, pre in zip(by["random"]["per_split"], by["pretrained"]["per_split"]):
        assert pre["f1"] > rnd["f1"] and pre["auc"] > rnd["auc"], msg
    # the pretraining run itself learned (a broken loss could still leave a lucky encoder)
    losses = [json.loads(x)["loss"] for x in (paths["run"] / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.8 * losses[0]


def test_proof_json_and_held_out_split(proof_run):
    from finetune.proof import check_held_out, load_task, split_task

    paths, _, out = proof_run
    recs = json.loads((out / "proof.json").read_text())
    assert [(r["method"], r["init"]) for r in recs] == [("linear_probe", "random"), ("linear_probe", "pretrained")]
    for r in recs:
        assert {"method", "init", "accuracy", "f1", "auc"} <= set(r)
        for k in ("accuracy", "f1", "auc"):
            assert 0.0 <= r[k] <= 1.0
            assert r[k] == pytest.approx(sum(s[k] for s in r["per_split"]) / len(SPLITS))
        assert [s["seed"] for s in r["per_split"]] == list(SPLITS)
    # the task never reached pretraining, and its patients never straddle train and test
    n_images = TASK["n_patients"] * TASK["per_patient"]
    assert check_held_out(paths["shards"], "lesions_holdout")["written"] == n_images
    task, names = load_task(paths["labels"], curate=False)
    assert names == ["cyst", "normal", "solid"] and len(task) == n_images
    for sp in SPLITS:
        train, test = split_task(task, 0.3, sp)
        assert not {r.group for r in train} & {r.group for r in test}
        assert {r.label for r in test} == {0, 1, 2}
