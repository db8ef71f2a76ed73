"""Does pretraining help, and how much per step? Linear-probe accuracy on the held-out phantom
lesion task against MAE pretraining steps (the `make demo` proof with a larger budget).

    python benchmarks/proof_curve.py [--steps 4000] [--points 600,1200,...]
        [--split-seeds 0,1,2] [--finetune] [--out-dir benchmarks/results] [--work-dir DIR]

One pretraining run of the demo model on the phantom corpus (the task's folder built with
``usf-shard build --holdout`` so it stays out of pretraining) saves a checkpoint at every point;
each checkpoint is exported and linear-probed with the same runner, split and schedule as
``finetune.proof``; step 0 is the same architecture at random init. Several patient splits
(``--split-seeds``) give the spread. ``--finetune`` adds fine-tuning of the last checkpoint and
of random init. Defaults (model, image size, lr, corpus scale, task) come from launch/demo.env.

Writes ``OUT_DIR/proof_curve.json`` and ``OUT_DIR/proof_curve.png``. JSON shape:
``{"machine", "versions", "config", "seconds", "points": [{"step", "init", "loss", "accuracy",
"accuracy_std", "f1", "auc", "per_split": [...]}], "finetune": [...]}`` (accuracy etc. are the
means over splits; ``loss`` is the pretraining loss logged at that step, null at step 0).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def demo_env(path: Path = ROOT / "launch" / "demo.env") -> dict[str, str]:
    """KEY=VALUE lines of launch/demo.env (comments and blank lines skipped, quotes stripped)."""
    env = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if "=" in line:
                k, v = line.split("=", 1)
                env[k.strip()] = v.strip().strip('"').strip("'")
    return env


def _run(args: list[str], log: Path) -> None:
    with log.open("a") as fh:
        p = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if p.returncode:
        raise SystemExit(f"{args[:3]} failed ({p.returncode}); see {log}")


def make_data(work: Path, a) -> tuple[Path, Path]:
    """Phantom corpus + held-out lesion task -> shards. Returns (shards dir, labels.csv)."""
    from phantom import write_demo_corpus, write_downstream_task

    raw = work / "raw"
    if raw.exists():
        shutil.rmtree(raw)
    write_demo_corpus(raw, seed=a.seed, scale=a.scale)
    labels = write_downstream_task(raw / "lesions_holdout", seed=a.seed + 1, n_patients=a.patients,
                                   per_patient=a.per_patient, small_p=a.small_p, size_scale=a.size_scale,
                                   conspicuity=a.conspicuity)
    shards = work / "shards"
    if shards.exists():
        shutil.rmtree(shards)
    _run(["-m", "sharder.cli", "-q", "build", str(raw), "--out", str(shards), "--workers", "2",
          "--holdout", "lesions_holdout", "--text-policy", "off"], work / "build.log")  # phantom labels
    return shards, labels


def pretrain(work: Path, shards: Path, a, save_every: int) -> Path:
    run = work / "pretrain"
    if run.exists():
        shutil.rmtree(run)
    _run([str(ROOT / "trainer" / "pretrain.py"), "--deepspeed_config", str(ROOT / "launch" / "ds.json"),
          "--data", str(shards), "--model", a.model, "--img-size", str(a.img_size), "--output-dir", str(run),
          "--max-steps", str(a.steps), "--batch-size", str(a.batch), "--blr", str(a.blr),
          "--warmup-steps", str(a.warmup), "--log-every", str(save_every), "--save-every", str(save_every),
          "--keep-last", str(a.steps // save_every + 1), "--workers", "2", "--seed", str(a.seed),
          "--no-tensorboard", "--no-recon-every-epoch"], work / "pretrain.log")
    return run


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _std(xs):
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs)) if xs else None


def probe_point(task, export: Path, a, init: str, method: str = "linear_probe") -> dict:
    """Mean/std over patient splits of one encoder's linear probe (or fine-tune) on the task,
    with finetune.proof's settings. ``task`` = (records, class names) from finetune.proof.load_task."""
    from finetune.proof import ProofConfig, run_cell, split_task

    recs, names = task
    per = []
    for s in a.split_seeds:
        cfg = ProofConfig(labels="", export=str(export), output_dir="", seed=s, probe_epochs=a.probe_epochs,
                          finetune_epochs=a.finetune_epochs)
        train, test = split_task(recs, cfg.test_fraction, s)
        per.append(run_cell(train, test, names, cfg, method, init))
    return {"init": init, "method": method, "accuracy": _mean([r["accuracy"] for r in per]),
            "accuracy_std": _std([r["accuracy"] for r in per]), "f1": _mean([r["f1"] for r in per]),
            "auc": _mean([r["auc"] for r in per]), "seconds": round(sum(r["seconds"] for r in per), 1),
            "per_split": [{k: r[k] for k in ("accuracy", "f1", "auc")} for r in per]}


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = res["points"]
    rnd = next(p for p in pts if p["init"] == "random")
    pre = [p for p in pts if p["init"] == "pretrained"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs = [0] + [p["step"] for p in pre]
    ys = [rnd["accuracy"]] + [p["accuracy"] for p in pre]
    es = [rnd["accuracy_std"]] + [p["accuracy_std"] for p in pre]
    ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label="MAE-pretrained, linear probe")
    ax.axhline(rnd["accuracy"], color="gray", ls="--", label="random init, linear probe")
    ax.axhline(1.0 / len(res["config"]["classes"]), color="lightgray", ls=":", label="chance")
    ax.set_xlabel("pretraining steps (batch %d)" % res["config"]["batch"])
    ax.set_ylabel("test accuracy (held-out patients)")
    ax.set_ylim(0, 1)
    ax2 = ax.twinx()
    lx = [p["step"] for p in pre if p["loss"] is not None]
    ax2.plot(lx, [p["loss"] for p in pre if p["loss"] is not None], color="tab:red", alpha=0.5, marker=".",
             label="MAE loss")
    ax2.set_ylabel("MAE reconstruction loss", color="tab:red")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="lower left", fontsize=8)
    c = res["config"]
    ax.set_title(f"held-out phantom lesion task ({c['patients']} patients x {c['per_patient']} views): "
                 f"{c['model']} @ {c['img_size']}px", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    from finetune.proof import ProofConfig

    env = demo_env()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a_ = p.add_argument
    a_("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    a_("--work-dir", default=None, help="keep corpus, shards, checkpoints here (default: a temp dir, removed)")
    a_("--steps", type=int, default=2 * int(env.get("PRETRAIN_STEPS", 2000)), help="default: twice the demo's")
    a_("--points", default=None, help="comma-separated steps to probe (multiples of their gcd); "
       "default: every steps/8")
    a_("--split-seeds", default="0,1,2", help="patient splits (and runner seeds) per point")
    a_("--finetune", action="store_true", help="also fine-tune the last checkpoint and random init")
    a_("--model", default=env.get("MODEL", "mae_vit_demo_patch16"))
    a_("--img-size", type=int, default=int(env.get("IMG_SIZE", 128)))
    a_("--batch", type=int, default=int(env.get("BATCH", 16)))
    a_("--blr", type=float, default=float(env.get("BLR", 8e-3)))
    a_("--warmup", type=int, default=int(env.get("WARMUP", 100)))
    a_("--scale", type=float, default=float(env.get("CORPUS_SCALE", 4)))
    a_("--patients", type=int, default=int(env.get("N_PATIENTS", 150)))
    a_("--per-patient", type=int, default=int(env.get("PER_PATIENT", 4)))
    a_("--small-p", type=float, default=float(env.get("TASK_SMALL_P", 0.3)))
    a_("--size-scale", type=float, default=float(env.get("TASK_SIZE_SCALE", 1.0)))
    a_("--conspicuity", type=float, default=float(env.get("TASK_CONSPICUITY", 0.0)))
    a_("--probe-epochs", type=int, default=ProofConfig.probe_epochs)
    a_("--finetune-epochs", type=int, default=ProofConfig.finetune_epochs)
    a_("--seed", type=int, default=0, help="corpus/pretraining seed (task seed is seed + 1)")
    a = p.parse_args(argv)
    a.split_seeds = [int(s) for s in a.split_seeds.split(",")]
    points = ([int(s) for s in a.points.split(",")] if a.points else
              sorted({max(1, a.steps * k // 8) for k in range(1, 9)}))
    if max(points) != a.steps:
        points.append(a.steps)
    save_every = math.gcd(*points)

    import torch

    from trainer.export import export_from_checkpoint

    t0 = time.time()
    tmp = None
    work = Path(a.work_dir) if a.work_dir else Path(tmp := tempfile.mkdtemp(prefix="proof_curve_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(f"data: phantom corpus x{a.scale} + lesion task ({a.patients} patients) -> shards", flush=True)
        shards, labels = make_data(work, a)
        print(f"pretraining {a.model} @ {a.img_size}px for {a.steps} steps (checkpoint every {save_every})",
              flush=True)
        t = time.time()
        run = pretrain(work, shards, a, save_every)
        pre_s = time.time() - t
        losses = {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
        from finetune.proof import load_task

        task = load_task(labels)  # curated once, as finetune.proof does
        last = export_from_checkpoint(run / "checkpoints" / f"step{points[-1]:08d}", work / "export_last")
        rnd = probe_point(task, last, a, "random")  # the export gives the architecture only
        pts = [{"step": 0, "loss": None, **rnd}]
        print(f"  step {0:6d}  random init   accuracy {rnd['accuracy']:.3f} ± {rnd['accuracy_std']:.3f}", flush=True)
        for s in points:
            exp = export_from_checkpoint(run / "checkpoints" / f"step{s:08d}", work / f"export_{s}")
            r = probe_point(task, exp, a, "pretrained")
            pts.append({"step": s, "loss": losses.get(s), **r})
            print(f"  step {s:6d}  pretrained    accuracy {r['accuracy']:.3f} ± {r['accuracy_std']:.3f}  "
                  f"(MAE loss {losses.get(s, float('nan')):.3f})", flush=True)
        ft = []
        if a.finetune:
            for init in ("random", "pretrained"):
                r = probe_point(task, last, a, init, method="finetune")
                ft.append(r)
                print(f"  fine-tune     {init:12s} accuracy {r['accuracy']:.3f} ± {r['accuracy_std']:.3f}", flush=True)
        names = task[1]
        res = {
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                        "torch_threads": torch.get_num_threads()},
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
            "config": {**{k: v for k, v in vars(a).items() if k not in ("out_dir", "work_dir")},
                       "points": points, "classes": names, "task_images": sum(1 for _ in open(labels)) - 1},
            "seconds": {"total": round(time.time() - t0, 1), "pretrain": round(pre_s, 1)},
            "points": pts, "finetune": ft,
        }
        out = Path(a.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "proof_curve.json").write_text(json.dumps(res, indent=1))
        plot(res, out / "proof_curve.png")
        print(f"wrote {out / 'proof_curve.json'} and {out / 'proof_curve.png'} ({time.time() - t0:.0f}s)")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
