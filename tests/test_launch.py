"""launch/*.json: every DeepSpeed config warms the lr up linearly, as MAE does (DeepSpeed's
WarmupCosineLR defaults to a log-shaped warmup when ``warmup_type`` is absent)."""
from __future__ import annotations

import json

import pytest
import torch

from helpers import ROOT

CONFIGS = sorted((ROOT / "launch").glob("*.json"))


def test_there_are_configs():
    assert {p.name for p in CONFIGS} >= {"ds.json", "ds_zero2.json", "ds_zero3.json"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_warmup_is_linear(path):
    from deepspeed.runtime.lr_schedules import WarmupCosineLR

    from trainer.config import TrainConfig
    from trainer.engine import build_ds_config, read_ds_json

    if json.loads(path.read_text()).get("scheduler", {}).get("type") != "WarmupCosineLR":
        pytest.skip(f"{path.name}: no WarmupCosineLR")
    total, warm, lr = 100, 10, 1.0e-3
    ds, _ = build_ds_config(TrainConfig(warmup_steps=warm), read_ds_json(path), 1, total)
    params = ds["scheduler"]["params"]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = WarmupCosineLR(opt, **params)
    lrs = []
    for k in range(warm + 1):  # the lr DeepSpeed sets after its k-th scheduler step
        sched.step(k)
        lrs.append(sched.get_last_lr()[0])
    assert lrs[:warm] == pytest.approx([lr * k / warm for k in range(warm)], rel=1e-9, abs=1e-15)
    assert 0.99 * lr < lrs[warm] <= lr  # then the cosine (its first step already decays a little)
