"""Non-finite losses are decided the same way on every rank (trainer/nonfinite.py): a NaN injected
on rank 1 only (world size 2) skips that step on both ranks, which stay in sync; K NaNs in a row
abort every rank with the same message. The NaN comes from the documented test hook
``USF_MAE_INJECT_NONFINITE`` (RANK:ATTEMPT[:COUNT])."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT
from trainer.nonfinite import INJECT_ENV, injected_attempts

PRETRAIN = str(ROOT / "trainer" / "pretrain.py")
ARGS = ["--deepspeed_config", str(ROOT / "launch" / "ds.json"), "--model", "mae_vit_demo_patch8", "--img-size", "32",
        "--batch-size", "2", "--log-every", "1", "--blr", "1e-3", "--warmup-steps", "1", "--no-tensorboard",
        "--no-recon-every-epoch", "--max-nonfinite", "3"]


def _run_world2(shards: Path, out: Path, steps: int, inject: str) -> list[subprocess.CompletedProcess]:
    """Two ranks as plain processes (the variables torchrun sets), one thread each."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for r in range(2):
        env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1", "RANK": str(r), "LOCAL_RANK": str(r),
               "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               INJECT_ENV: inject}
        procs.append(subprocess.Popen([sys.executable, PRETRAIN, *ARGS, "--data", str(shards), "--output-dir", str(out),
                                       "--max-steps", str(steps)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, start_new_session=True))
    done = []
    for p in procs:
        try:
            stdout, _ = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                os.killpg(q.pid, 9)
            raise AssertionError("a rank hung after a non-finite loss on rank 1 (collectives out of step)")
        done.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, ""))
    return done


def test_inject_spec_parses():
    assert injected_attempts(1, "1:2") == {2}
    assert injected_attempts(1, "0:5,1:2:3") == {2, 3, 4}
    assert injected_attempts(0, "1:2") == set()
    with pytest.raises(ValueError, match=INJECT_ENV):
        injected_attempts(0, "rank1")


def test_nan_on_rank1_skips_the_step_on_both_ranks(demo_shards, tmp_path):
    out = tmp_path / "skip"
    runs = _run_world2(demo_shards, out, steps=4, inject="1:1")
    for r, p in enumerate(runs):
        assert p.returncode == 0, f"rank {r}:\n{p.stdout[-4000:]}"
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4]  # the skipped attempt is not a step
    assert [r["skipped_nonfinite"] for r in recs] == [0, 1, 1, 1]
    assert all(r["loss"] == r["loss"] for r in recs)  # the NaN never reached the logged mean
    fin = [json.loads((out / f"final_rank{r}.json").read_text()) for r in (0, 1)]
    assert fin[0] == fin[1]  # same step count, same weights on both ranks
    assert "step skipped on every rank" in runs[0].stdout  # rank 0 had a finite loss and skipped too


def test_nan_in_a_row_on_rank1_aborts_every_rank_with_one_message(demo_shards, tmp_path):
    runs = _run_world2(demo_shards, tmp_path / "abort", steps=6, inject="1:1:3")
    for r, p in enumerate(runs):
        assert p.returncode != 0, f"rank {r} did not abort:\n{p.stdout[-3000:]}"
        assert "3 non-finite losses/gradients in a row at step 1 (agreed on all 2 ranks)" in p.stdout, p.stdout[-3000:]
