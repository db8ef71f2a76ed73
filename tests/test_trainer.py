"""The trainer as users run it (subprocesses; DeepSpeed on CPU with gloo): loss falls, logs and
checkpoints, export round trip, 2-rank ZeRO runs that match 1 rank, exact resume after SIGKILL."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import ROOT, run_py

PRETRAIN = str(ROOT / "trainer" / "pretrain.py")
DEEPSPEED = str(Path(sys.executable).parent / "deepspeed")
COMMON = ["--deepspeed_config", str(ROOT / "launch" / "ds.json"), "--model", "mae_vit_demo_patch16",
          "--img-size", "64", "--workers", "1", "--no-tensorboard"]


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def pretrain_run(demo_shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "run"
    run_py([PRETRAIN, *COMMON, "--data", str(demo_shards), "--output-dir", str(out), "--max-steps", "40",
            "--batch-size", "16", "--log-every", "5", "--save-every", "20", "--blr", "1.5e-3",
            "--warmup-steps", "5", "--tensorboard"])
    return out


def test_loss_falls_and_everything_is_logged(pretrain_run):
    recs = metrics(pretrain_run)
    assert [r["step"] for r in recs] == list(range(5, 45, 5))
    assert recs[-1]["loss"] < 0.85 * recs[0]["loss"]
    for r in recs:
        for k in ("loss", "lr", "grad_norm", "images_per_s", "data_s", "compute_s", "tflops", "mfu", "peak_mem_gb"):
            assert r[k] is not None and r[k] == r[k], k
        assert 0 < r["mfu"] < 1.5 and r["images_per_s"] > 0
    cfg = json.loads((pretrain_run / "config.json").read_text())
    assert cfg["train"]["max_steps"] == 40 and cfg["model"]["mask_ratio"] == 0.75
    # --precision auto: bf16 where the CPU runs it natively, fp32 elsewhere (AVX2-only CPUs)
    assert cfg["precision"]["used"] in ("bf16", "fp32") and cfg["precision"]["reason"]
    assert cfg["deepspeed"]["zero_optimization"]["stage"] == 1
    assert cfg["deepspeed"]["bf16"]["enabled"] == (cfg["precision"]["used"] == "bf16")
    ck = pretrain_run / "checkpoints"
    assert (ck / "latest").read_text() == "step00000040"
    assert sorted(p.name for p in ck.iterdir() if p.is_dir()) == ["step00000020", "step00000040"]
    assert list(pretrain_run.glob("recon_epoch*.png"))
    assert list((pretrain_run / "tb").rglob("events.out.tfevents*"))


def test_kernels_are_logged(demo_shards, tmp_path):
    p = run_py([PRETRAIN, *COMMON, "--data", str(demo_shards), "--output-dir", str(tmp_path / "r"),
                "--max-steps", "2", "--batch-size", "4", "--log-every", "1", "--no-recon-every-epoch"])
    log = p.stdout + p.stderr
    assert "optimizer deepspeed.ops.adam.DeepSpeedCPUAdam" in log
    # auto on CPU: SDPA in fp32, the plain matmuls in bf16 (each measured faster there; kernels.py)
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    want = "F.scaled_dot_product_attention" if cfg["precision"]["used"] == "fp32" else "eager softmax(QK^T)V"
    assert f"attention {want}" in log and "(auto)" in log


def test_export_loads_in_plain_timm(pretrain_run, tmp_path):
    """The CLI on a run's checkpoints dir: a timm-native folder (tests/test_export.py checks its
    config and card in detail) whose encoder computes what the MAE's encoder computes."""
    import timm

    from trainer.weights import build_mae

    run_py(["-m", "trainer.export", str(pretrain_run / "checkpoints"), str(tmp_path / "exp")])
    cfg = json.loads((tmp_path / "exp" / "config.json").read_text())
    assert cfg["model_args"]["in_chans"] == 1 and cfg["model_args"]["img_size"] == 64
    assert 0 < cfg["pretrained_cfg"]["mean"][0] < 1 and cfg["pretrained_cfg"]["std"][0] > 0
    enc = timm.create_model(f"local-dir:{tmp_path / 'exp'}", pretrained=True).eval()
    mae = build_mae(pretrain_run / "checkpoints")[0].eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        ours, _, _ = mae.forward_encoder(x, mask_ratio=0.0, noise=torch.arange(16.0).expand(2, -1))
        theirs = enc.forward_features(x)
    assert torch.allclose(ours, theirs, atol=1e-4)


def _launch(args, world, out, port):
    if world == 1:
        return run_py([PRETRAIN, *args, "--output-dir", str(out)])
    return subprocess.run([DEEPSPEED, "--num_gpus", str(world), "--master_port", str(port), PRETRAIN, *args,
                           "--output-dir", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"})


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_two_ranks_match_one_rank(demo_shards, tmp_path, stage):
    """World size 2 x batch 4 vs world size 1 x batch 8 on identical global batches (the fixed
    loader) and identical masks: same losses within bf16 tolerance; both ranks end in sync.
    ZeRO-3 (parameters partitioned: no rank holds the model) checkpoints the gathered fp32
    weights, and they export."""
    args = [*COMMON, "--data", str(demo_shards), "--loader", "fixed", "--max-steps", "4", "--log-every", "1",
            "--zero-stage", str(stage), "--no-recon-every-epoch", "--blr", "1e-3", "--warmup-steps", "1",
            "--peak-tflops", "1"]  # MFU is not under test here: skip the peak matmul measurement
    if stage == 3:  # fp32: the gathered weights are compared, and CPUs without bf16 emulate it ~100x slower
        args += ["--precision", "fp32"]
    one = _launch([*args, "--batch-size", "8"], 1, tmp_path / "w1", 0)
    two = _launch([*args, "--batch-size", "4"], 2, tmp_path / "w2", 29600 + stage)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    del one
    l1 = [r["loss"] for r in metrics(tmp_path / "w1")]
    l2 = [r["loss"] for r in metrics(tmp_path / "w2")]
    assert len(l1) == len(l2) == 4
    for a, b in zip(l1, l2):
        assert abs(a - b) / a < 0.02, (l1, l2)
    c = [json.loads((tmp_path / "w2" / f"final_rank{r}.json").read_text())["param_checksum"] for r in (0, 1)]
    assert c[0] == c[1]
    if stage == 3:
        from safetensors.torch import load_file

        from trainer.model import MaskedAutoencoderViT, config_for

        full = MaskedAutoencoderViT(config_for("mae_vit_demo_patch16", img_size=64)).state_dict()
        sd = {w: load_file(str(tmp_path / w / "checkpoints" / "step00000004" / "mae.safetensors"))
              for w in ("w1", "w2")}
        for w in sd:
            assert {k: v.shape for k, v in sd[w].items()} == {k: v.shape for k, v in full.items()}
            assert all(v.dtype == torch.float32 for v in sd[w].values())
        run_py(["-m", "trainer.export", str(tmp_path / "w2"), str(tmp_path / "export")])
        exported = load_file(str(tmp_path / "export" / "model.safetensors"))
        assert exported and all(k in full for k in exported)
        for k, v in exported.items():  # 2 ranks' gathered weights vs 1 rank's
            assert torch.equal(v, sd["w2"][k]) and torch.allclose(v, sd["w1"][k], rtol=0.02, atol=2e-3), k


def test_resume_after_sigkill_is_bitwise(demo_shards, tmp_path):
    args = [PRETRAIN, *COMMON, "--data", str(demo_shards), "--max-steps", "10", "--batch-size", "8",
            "--log-every", "1", "--save-every", "3", "--no-recon-every-epoch", "--blr", "1e-3", "--warmup-steps", "2"]
    run_py([*args, "--output-dir", str(tmp_path / "ref")])
    ref = {r["step"]: r["loss"] for r in metrics(tmp_path / "ref")}

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, *args, "--output-dir", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        if (out / "metrics.jsonl").exists() and any(r["step"] >= 7 for r in metrics(out)):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "checkpoints" / "latest").read_text() == "step00000006"
    run_py([*args, "--output-dir", str(out), "--resume", "auto"])
    resumed = {}
    for r in metrics(out):  # later records (the resumed run) overwrite the killed run's
        resumed[r["step"]] = r["loss"]
    assert sorted(resumed) == list(range(1, 11))
    assert resumed == ref  # bitwise: same floats at every step


def test_nonfinite_loss_aborts_with_a_clear_message(demo_shards, tmp_path):
    p = run_py([PRETRAIN, *COMMON, "--data", str(demo_shards), "--output-dir", str(tmp_path / "nan"),
                "--max-steps", "6", "--batch-size", "4", "--lr", "1e30", "--max-nonfinite", "2",
                "--no-recon-every-epoch", "--precision", "fp32"], check=False)
    log = p.stdout + p.stderr
    assert p.returncode != 0
    assert "non-finite" in log and "--blr" in log
