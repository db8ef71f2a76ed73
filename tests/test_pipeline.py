"""Pretraining loaders (DALI on CPU and the PyTorch baseline): the batch contract, exact resume
in a fresh process (also across an epoch boundary), and failures that are errors, not hangs."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from dali_pipes import PretrainOptions, build_pretrain_loader
from dali_pipes.shards import ShardSetError
from helpers import ROOT, run_py

KINDS = ["dali", "torch"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chans", [1, 3])
def test_batch_contract(demo_shards, kind, chans):
    opts = PretrainOptions(batch_size=8, num_threads=2, device="cpu", in_chans=chans, shuffle_buffer=32)
    ld = build_pretrain_loader(demo_shards, opts, kind=kind)
    assert len(ld) >= 3
    batches = []
    for i, b in enumerate(ld):
        batches.append(b["image"])
        if i == 2:
            break
    x = torch.cat(batches)
    assert x.shape == (24, chans, 224, 224) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    # normalised with the manifest's pixel stats: roughly zero-mean, unit-scale, never 0..255
    assert -1.5 < x.mean().item() < 1.5 and 0.3 < x.std().item() < 3.0
    assert x.min() < -0.5 and x.max() > 1.0
    if chans == 3:
        assert torch.equal(x[:, 0], x[:, 2])
    # augmentation: two batches are not the same crops of the same images
    assert not torch.equal(batches[0], batches[1])


@pytest.mark.parametrize("kind", KINDS)
def test_resume_in_a_fresh_process_is_exact(demo_shards, tmp_path, kind):
    probe = str(ROOT / "tests" / "loader_probe.py")
    base = ["--kind", kind, "--data", str(demo_shards)]
    n = json.loads(run_py([probe, *base, "--take", "1"]).stdout)["len"]
    skip, take = n - 2, 5  # the recorded window crosses into the next epoch
    ref = json.loads(run_py([probe, *base, "--take", str(skip + take)]).stdout)["batches"][skip:]
    state = tmp_path / "state.json"
    first = json.loads(run_py([probe, *base, "--skip", str(skip), "--take", str(take),
                               "--state-out", str(state)]).stdout)["batches"]
    resumed = json.loads(run_py([probe, *base, "--state-in", str(state), "--take", str(take)]).stdout)["batches"]
    assert first == ref  # saving state does not perturb the stream
    assert resumed == ref  # a fresh process continues exactly
    assert ref[0]["epoch"] == 0 and ref[-1]["epoch"] >= 1
    # across the epoch boundary every sample of epoch 0 was seen exactly once per rank pass
    keys = [k for b in json.loads(run_py([probe, *base, "--take", str(n)]).stdout)["batches"] for k in b["keys"]]
    assert len(keys) == len(set(keys))


def test_ranks_split_the_data(demo_shards):
    opts = PretrainOptions(img_size=32, batch_size=4, num_threads=1, device="cpu", shuffle_buffer=8)
    seen = []
    for rank in range(2):
        ld = build_pretrain_loader(demo_shards, opts, rank=rank, world_size=2, kind="dali", return_keys=True)
        seen.append({k for b in ld for k in b["keys"]})
    assert seen[0] and seen[1] and not (seen[0] & seen[1])


@pytest.mark.parametrize("kind", KINDS)
def test_too_few_shards_is_an_error_at_start(demo_shards, kind):
    opts = PretrainOptions(batch_size=4, device="cpu")
    with pytest.raises(ShardSetError, match="rank"):
        build_pretrain_loader(demo_shards, opts, rank=0, world_size=500, kind=kind)


def test_truncated_shard_is_named(demo_shards, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(demo_shards, bad)
    tar = sorted(bad.glob("train-*.tar"))[1]
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    with pytest.raises(ShardSetError, match=tar.name):
        build_pretrain_loader(bad, PretrainOptions(batch_size=4, device="cpu"), kind="dali")


def test_gpu_without_gpu_says_what_to_change(demo_shards):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    ld = build_pretrain_loader(demo_shards, PretrainOptions(batch_size=4, device="cpu"), kind="dali")
    ld.opts.device = "gpu"
    ld._pipe = None
    with pytest.raises(RuntimeError, match="device='cpu'"):
        next(iter(ld))


def test_missing_member_is_named_or_skipped_and_counted(demo_shards, tmp_path, caplog):
    from sharder.shards import iter_shard, write_shard

    bad = tmp_path / "bad"
    shutil.copytree(demo_shards, bad)
    tar = sorted(bad.glob("train-*.tar"))[0]
    samples = list(iter_shard(tar))
    key, mem = samples[2]
    del mem["json"]
    write_shard(tar, iter(samples))
    for kind in KINDS:
        with pytest.raises(ShardSetError, match=f"{tar.name}:{key}"):
            build_pretrain_loader(bad, PretrainOptions(batch_size=4, device="cpu"), kind=kind)
    opts = PretrainOptions(batch_size=4, img_size=32, device="cpu", skip_corrupt=True, shuffle_buffer=8)
    ld = build_pretrain_loader(bad, opts, kind="dali", return_keys=True)
    with caplog.at_level("WARNING"):
        n = sum(1 for _ in ld)
    assert n == len(ld) and "skipped 1 incomplete" in caplog.text and key in caplog.text


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("world", [2, 3])
def test_every_rank_has_the_same_batches(demo_shards, kind, world):
    """Uneven shards (12 samples each, the last fewer) and, for the torch loader, more workers than shards
    per rank (world 3 x 3 workers = 9 readers of 7 shards): every rank yields len(loader) batches,
    the same number, and no sample is seen on two ranks in the epoch."""
    opts = PretrainOptions(img_size=32, batch_size=4, num_threads=3, device="cpu", shuffle_buffer=8)
    lens, keys = [], []
    for rank in range(world):
        ld = build_pretrain_loader(demo_shards, opts, rank=rank, world_size=world, kind=kind, return_keys=True)
        got = [k for b in ld for k in b["keys"]]
        lens.append((len(ld), len(got) // 4, ld.epoch))
        keys += got
    from sharder.manifest import Manifest

    n = Manifest.load(demo_shards).num_samples("train") // world // 4
    assert n >= 2 and lens == [(n, n, 1)] * world
    assert len(keys) == len(set(keys)) == n * 4 * world


def test_torch_loader_continues_on_another_world_size(demo_shards):
    """The torch loader's state is a global sample position: 2 ranks x 6 for two steps, then
    3 ranks x 4 from that state, yield exactly the global batches of 1 rank x 12."""
    def loaders(world, batch):
        opts = PretrainOptions(img_size=32, batch_size=batch, num_threads=1, device="cpu")
        return [build_pretrain_loader(demo_shards, opts, r, world, kind="torch", return_keys=True)
                for r in range(world)]

    def steps(lds, n=None):
        its = [iter(ld) for ld in lds]
        out = []
        for bs in zip(*its):
            out.append((sum((b["keys"] for b in bs), []), torch.cat([b["image"] for b in bs])))
            if len(out) == n:
                break
        return out

    ref = steps(loaders(1, 12))
    two = loaders(2, 6)
    first = steps(two, 2)
    state = two[0].state_dict()
    assert state == two[1].state_dict() and state["position"] == 24
    three = loaders(3, 4)
    for ld in three:
        ld.load_state_dict(state)
    rest = steps(three)
    assert len(ref) >= 3 and len(first) + len(rest) == len(ref)
    for (k, x), (rk, rx) in zip(first + rest, ref):
        assert k == rk and torch.equal(x, rx)


def test_dali_state_on_another_world_size_keeps_the_epoch_position(demo_shards, caplog):
    """A DALI checkpoint belongs to its (rank, world size); restored elsewhere the loader continues
    the epoch from its global sample position with reseeded readers: the epoch still ends after
    the samples it had left, so the step schedule holds."""
    opts = PretrainOptions(img_size=32, batch_size=4, num_threads=1, device="cpu", shuffle_buffer=8)
    two = [build_pretrain_loader(demo_shards, opts, r, 2, kind="dali") for r in range(2)]
    for ld in two:
        it = iter(ld)
        for _ in range(3):
            next(it)
    state = two[0].state_dict()
    assert (state["rank"], state["world_size"], state["batch_in_epoch"]) == (0, 2, 3)
    one = build_pretrain_loader(demo_shards, PretrainOptions(img_size=32, batch_size=8, num_threads=1, device="cpu",
                                                             shuffle_buffer=8), kind="dali")
    with caplog.at_level("WARNING"):
        one.load_state_dict(state)
    assert "reseeded" in caplog.text
    assert sum(1 for _ in one) == len(one) - 3 and one.epoch == 1  # 3 x 8 samples of the epoch were consumed
