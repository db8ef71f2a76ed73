"""The loader contract (dali_pipes.loader): every pretraining and fine-tune loader is a ``Loader``,
yields ``len(loader)`` batches per epoch, advances ``epoch`` at the end of one, and continues
exactly from a ``state_dict`` (JSON round trip) in a fresh loader; a foreign state is refused.
The cross-process and cross-world-size resume cases are in test_pipeline.py,
test_dali_finetune.py and test_finetune_ddp.py."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from dali_pipes import PretrainOptions, build_pretrain_loader
from dali_pipes.finetune_torch import TransformConfig, build_finetune_loader
from dali_pipes.loader import Loader, LoaderStateError, check_state, expand_channels
from finetune.tasks import Record


def needs(kind: str) -> None:
    if kind == "dali":
        pytest.importorskip("nvidia.dali")


def contract(make, key: str) -> None:
    """Two batches, a state through JSON, the rest of the epoch from a fresh loader, same batches."""
    ld = make()
    assert isinstance(ld, Loader)
    n = len(ld)
    assert n >= 3 and ld.epoch == 0
    it = iter(ld)
    head = [next(it), next(it)]
    state = json.loads(json.dumps(ld.state_dict()))
    rest = list(it)
    assert len(head) + len(rest) == n and ld.epoch == 1
    again = make()
    again.load_state_dict(state)
    assert again.epoch == 0
    got = list(again)
    assert again.epoch == 1 and len(got) == len(rest)
    for a, b in zip(got, rest):
        assert torch.equal(a["image"], b["image"])
        assert a[key] == b[key] if key == "keys" else torch.equal(a[key], b[key])
    with pytest.raises(LoaderStateError, match="loader state is from a 'other' loader"):
        again.load_state_dict({**state, "kind": "other"})
    for field in ("seed", "samples", "n"):  # another seed or dataset: refused, naming the field
        if field in state and state["kind"] != "torch_finetune":  # that one takes the state's seed
            with pytest.raises(LoaderStateError, match=f"{field} {state[field] + 1} but this loader has"):
                again.load_state_dict({**state, field: state[field] + 1})


@pytest.mark.parametrize("kind", ["dali", "torch", "fixed"])
def test_pretrain_loaders_keep_the_contract(demo_shards, kind):
    needs(kind)
    opts = PretrainOptions(img_size=32, batch_size=4, num_threads=1, device="cpu", shuffle_buffer=8, in_chans=3)
    contract(lambda: build_pretrain_loader(demo_shards, opts, kind=kind, return_keys=True), "keys")


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> list[Record]:
    root = tmp_path_factory.mktemp("loader_contract")
    rng = np.random.default_rng(0)
    recs = []
    for i in range(14):
        p = root / f"img_{i:02d}.png"
        assert cv2.imwrite(str(p), rng.integers(0, 256, (20 + i, 24), dtype=np.uint8))
        recs.append(Record(p, i % 2, f"pt{i}"))
    return recs


@pytest.mark.parametrize("loader", ["dali", "torch"])
def test_finetune_loaders_keep_the_contract(records, loader):
    needs(loader)
    tcfg = TransformConfig(img_size=16, in_chans=1, randaug_ops=0, reprob=0.0)
    contract(lambda: build_finetune_loader(records, train=True, batch_size=4, tcfg=tcfg, seed=5, loader=loader),
             "index")
    ev = build_finetune_loader(records, train=False, batch_size=4, tcfg=tcfg, loader=loader)
    assert isinstance(ev, Loader) and len(list(ev)) == len(ev) == 4 and ev.epoch == 0  # eval keeps its epoch


def test_state_checks_and_channel_expand():
    check_state({"kind": "torch", "samples": 10}, "torch", samples=10)
    check_state({"kind": "torch"}, "torch", samples=10)  # written before the field existed
    with pytest.raises(LoaderStateError, match=r"saved with rank 1 of 2, seed 3 but this loader has rank 0 of 2, seed 4"):
        check_state({"kind": "k", "rank": 1, "world_size": 2, "seed": 3}, "k", rank=0, world_size=2, seed=4)
    x = torch.arange(8.0).reshape(2, 1, 2, 2)
    assert expand_channels(x, 1) is x
    y = expand_channels(x, 3)
    assert y.shape == (2, 3, 2, 2) and torch.equal(y[:, 2], x[:, 0]) and y.data_ptr() == x.data_ptr()
    assert expand_channels(x[0], 3).shape == (3, 2, 2)
