"""Pretraining at world size N as users run it (gloo on CPU; ranks as plain processes the way
torchrun starts them, or two ``torchrun --nnodes 2`` launchers as two nodes on one machine):

- every rank runs the same number of steps on uneven shards with ``--epochs`` (world 2 and 3,
  more torch-loader workers than shards per rank);
- SIGKILL + ``--resume auto`` at world size 2 continues exactly (DALI loader, two-node launch):
  each rank restores its own loader state;
- the torch loader resumes exactly at world size 2, and on fewer and more ranks (2 -> 1 -> 3)
  through DeepSpeed's universal checkpoint, continuing from the global sample position: the same
  global batches, so the same losses within float32 reduction-order noise.

Every run is under a hard timeout that kills its processes and fails the test (never a hang).
One uninterrupted reference run per loader is shared by the assertions (module fixtures).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT

PRETRAIN = str(ROOT / "trainer" / "pretrain.py")
TIMEOUT = 300  # seconds for one run of all its ranks; a hang fails the test instead of CI
COMMON = ["--deepspeed_config", str(ROOT / "launch" / "ds.json"), "--model", "mae_vit_demo_patch8",
          "--img-size", "32", "--no-tensorboard", "--no-recon-every-epoch", "--precision", "fp32",
          "--log-every", "1", "--blr", "1e-3", "--warmup-steps", "2", "--keep-last", "10",
          "--peak-tflops", "1"]  # MFU is not under test here: skip the per-process peak matmul measurement


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    return {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
            "MASTER_ADDR": "127.0.0.1", **extra}


def _popen(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    # own session: a timeout or SIGKILL takes the launcher and everything it started
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def spawn(args: list[str], world: int, out: Path) -> list[subprocess.Popen]:
    """``world`` ranks as plain processes with the variables torchrun would set."""
    port = _port()
    return [_popen([sys.executable, PRETRAIN, *COMMON, *args, "--output-dir", str(out)],
                   _env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world), MASTER_PORT=str(port)),
                   out.parent / f"{out.name}.rank{r}.log") for r in range(world)]


def two_nodes(args: list[str], out: Path) -> list[subprocess.Popen]:
    """Two nodes on one machine: ``launch/two_nodes_local.sh`` (two torchrun launchers, one
    process each, static rendezvous on localhost), as users run it."""
    env = _env(PYTHON=sys.executable, MASTER_PORT=str(_port()))
    data = args[args.index("--data") + 1]
    return [_popen(["bash", str(ROOT / "launch" / "two_nodes_local.sh"), data, str(out), *COMMON, *args], env,
                   out.parent / f"{out.name}.nodes.log")]


def kill(procs: list[subprocess.Popen]) -> None:
    """SIGKILL to the launchers and every process under them: torchrun starts its workers in
    sessions of their own, and a worker outliving its launcher would go on training."""
    import psutil

    tree = []
    for p in procs:
        try:
            tree += [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for q in tree:
        try:
            q.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(tree, timeout=30)
    for p in procs:
        p.wait()


def finish(procs: list[subprocess.Popen], out: Path, timeout: float = TIMEOUT) -> None:
    """Waits for every process; on a timeout kills them all and fails with the logs' tails."""
    deadline = time.time() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        kill(procs)
        pytest.fail(f"{out.name}: still running after {timeout} s (a hang?)\n{_tails(out)}")
    bad = [p.returncode for p in procs if p.returncode != 0]
    assert not bad, f"{out.name}: exit codes {[p.returncode for p in procs]}\n{_tails(out)}"


def _tails(out: Path) -> str:
    return "\n".join(f"--- {f.name}\n{f.read_text()[-2500:]}" for f in sorted(out.parent.glob(f"{out.name}.*.log")))


def losses(run: Path) -> dict[int, float]:
    """step -> global loss; records of a resumed run overwrite the killed run's."""
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def finals(run: Path, world: int) -> list[dict]:
    return [json.loads((run / f"final_rank{r}.json").read_text()) for r in range(world)]


def train_samples(shards: Path) -> int:
    from sharder.manifest import Manifest

    return Manifest.load(shards).num_samples("train")


def resume_copy(src: Path, tag: str, dst: Path) -> Path:
    """A new output dir whose only checkpoint is ``src``'s ``tag`` (a job restarted from it)."""
    (dst / "checkpoints").mkdir(parents=True)
    shutil.copytree(src / "checkpoints" / tag, dst / "checkpoints" / tag)
    (dst / "checkpoints" / "latest").write_text(tag)
    return dst


# ------------------------------------------------------------------------------------- DALI
DALI = ["--loader", "dali", "--workers", "1", "--batch-size", "4", "--epochs", "2", "--save-every", "4"]


@pytest.fixture(scope="module")
def dali_ref(demo_shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist_dali") / "ref"
    finish(spawn([*DALI, "--data", str(demo_shards)], 2, out), out)
    return out


def test_dali_two_ranks_equal_steps_and_exact_resume_after_sigkill(dali_ref, demo_shards):
    """Uneven shards (12 samples each, the last 8), 2 ranks x batch 4, 2 epochs: every rank runs
    2 x (samples // 2 // 4) steps. A two-node run SIGKILLed mid-run and resumed logs the
    reference's global loss at every later step and ends with its weights, on both ranks."""
    total = 2 * (train_samples(demo_shards) // 2 // 4)
    ref = finals(dali_ref, 2)
    assert [f["step"] for f in ref] == [total, total] and ref[0]["param_checksum"] == ref[1]["param_checksum"]
    ck = dali_ref / "checkpoints" / "step00000004"
    states = [json.loads((ck / f"loader_rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["rank"] for s in states] == [0, 1] and states[0]["dali_checkpoint"] != states[1]["dali_checkpoint"]

    out = dali_ref.parent / "killed"
    args = [*DALI, "--data", str(demo_shards)]
    procs = two_nodes(args, out)
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and not ((out / "metrics.jsonl").exists() and max(losses(out), default=0) >= 6):
        assert all(p.poll() is None for p in procs), _tails(out)
        time.sleep(0.05)
    kill(procs)
    tag = (out / "checkpoints" / "latest").read_text()
    assert tag in {f"step{s:08d}" for s in range(4, total, 4)}, tag
    assert not (out / "final_rank0.json").exists(), "the run ended before it was killed"
    before = len((out / "metrics.jsonl").read_text().splitlines())
    finish(two_nodes([*args, "--resume", "auto"], out), out)
    log = (out.parent / f"{out.name}.nodes.log").read_text()
    assert f"resumed from {out / 'checkpoints' / tag} at step {int(tag[4:])}" in log
    after = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()[before:]]
    expect = losses(dali_ref)
    assert [(r["step"], r["loss"]) for r in after] == [(s, expect[s]) for s in range(int(tag[4:]) + 1, total + 1)]
    assert finals(out, 2) == ref


# ------------------------------------------------------------------------------------ torch
TORCH = ["--loader", "torch", "--epochs", "2", "--save-every", "3"]


@pytest.fixture(scope="module")
def torch_ref(demo_shards, tmp_path_factory) -> Path:
    """2 ranks x batch 6 x 2 workers: global batch 12, samples // 12 steps per epoch, 2 epochs."""
    out = tmp_path_factory.mktemp("dist_torch") / "ref"
    finish(spawn([*TORCH, "--workers", "2", "--batch-size", "6", "--data", str(demo_shards)], 2, out), out)
    return out


def test_torch_two_ranks_resume_exactly(torch_ref, demo_shards):
    total = 2 * (train_samples(demo_shards) // 12)
    ref = finals(torch_ref, 2)
    assert [f["step"] for f in ref] == [total, total] and ref[0]["param_checksum"] == ref[1]["param_checksum"]
    out = resume_copy(torch_ref, "step00000006", torch_ref.parent / "same_world")
    finish(spawn([*TORCH, "--workers", "2", "--batch-size", "6", "--data", str(demo_shards), "--resume", "auto"],
                 2, out), out)
    expect = losses(torch_ref)
    assert losses(out) == {s: v for s, v in expect.items() if s > 6}
    assert finals(out, 2) == ref


def test_torch_resume_on_fewer_then_more_ranks(torch_ref, demo_shards):
    """2 ranks -> 1 rank (batch 12) from step 3 -> 3 ranks (batch 4, 3 workers each: 9 readers of
    7 shards) from step 6: model and optimizer through DeepSpeed's universal checkpoint, data from
    the global sample position. Same global batches, so the reference's losses (float32, only the
    reduction order differs) and every rank at the last step."""
    expect, total = losses(torch_ref), 2 * (train_samples(demo_shards) // 12)
    one = resume_copy(torch_ref, "step00000003", torch_ref.parent / "to_one")
    finish(spawn([*TORCH, "--workers", "2", "--batch-size", "12", "--data", str(demo_shards), "--resume", "auto"],
                 1, one), one)
    assert (one / "checkpoints" / "step00000003" / "universal" / "zero").is_dir()
    three = resume_copy(one, "step00000006", torch_ref.parent / "to_three")
    finish(spawn([*TORCH, "--workers", "3", "--batch-size", "4", "--data", str(demo_shards), "--resume", "auto"],
                 3, three), three)
    got = {**losses(one), **losses(three)}
    assert sorted(losses(one)) == list(range(4, total + 1)) and sorted(losses(three)) == list(range(7, total + 1))
    for s in range(4, total + 1):
        assert got[s] == pytest.approx(expect[s], rel=1e-4), (s, got, expect)
    f3 = finals(three, 3)
    assert [f["step"] for f in f3] == [total] * 3 and len({f["param_checksum"] for f in f3}) == 1
    assert f3[0]["param_checksum"] == pytest.approx(finals(torch_ref, 2)[0]["param_checksum"], rel=1e-6)
