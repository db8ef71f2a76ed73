"""benchmarks/throughput.py runs every section (quick sizes) and reports each figure beside its
baseline from the same run: the ratios are the ones the README and the issue notes quote.

No speed is asserted (CI machines vary; speed targets live in the benchmark's output), only that
each entry exists, is a positive finite number and that the derived ratios are what they claim.
"""
from __future__ import annotations

import json
import math

import torch

from helpers import ROOT, run_py
from trainer.precision import resolve_precision


def test_throughput_quick_reports_every_stage_beside_its_baseline(tmp_path):
    out = tmp_path / "t.json"
    # --no-contention: the contention figure is two trainer runs of its own (minutes), not CI
    p = run_py([str(ROOT / "benchmarks" / "throughput.py"), "shard", "loader", "train", "--quick",
                "--device", "cpu", "--json", str(out), "--no-contention"], timeout=900)
    res = json.loads(out.read_text())
    assert res["quick"] is True and res["machine"]["cores"] >= 1
    by = {(r["section"], r["name"]): r for r in res["results"]}
    for r in res["results"]:
        assert r["value"] > 0 and math.isfinite(r["value"]), r
    # sharder: build vs decode bound, 1 and 2 workers, peak RSS, per-step costs that add up
    bound = by[("shard", "decode_bound")]["value"]
    for name in ("build", "build_2workers"):
        b = by[("shard", name)]
        assert b["baseline"] == "decode_bound" and math.isclose(b["ratio"], b["value"] / bound)
        assert b["peak_rss_mib"] > 10
        assert b["frames"] == by[("shard", "decode_bound")]["frames"]  # the same inputs, all frames
    assert by[("shard", "build_2workers")]["scaling_vs_1_worker"] == by[("shard", "build_2workers")]["value"] / \
        by[("shard", "build")]["value"]
    steps = ("decode", "curate", "phash", "encode", "hash_stats")
    assert all(("shard", f"ms_per_frame:{k}") in by for k in steps)
    assert by[("shard", "ms_per_frame:decode")]["share_of_decode"] == 1.0
    # loader: DALI vs torch, the bound and the ladder between them, same batch and threads
    dali, torch_, dec = by[("loader", "dali")], by[("loader", "torch")], by[("loader", "dali_decode_only")]
    assert dali["baseline"] == "torch" and math.isclose(dali["ratio"], dali["value"] / torch_["value"])
    assert math.isclose(dali["fraction_of_decode_bound"], dali["value"] / dec["value"])
    for name in ("dali_crop_decode", "dali_crop_resize"):
        assert math.isclose(by[("loader", name)]["fraction_of_decode_bound"], by[("loader", name)]["value"] / dec["value"])
    assert len({(r["batch_size"], r["threads"]) for r in res["results"] if r["section"] == "loader"}) == 1
    # the baseline is the idiomatic webdataset pipeline; the project's own PyTorch loader beside it
    assert "webdataset" in torch_.get("kernel", "")
    proj = by[("loader", "torch_project")]
    assert proj["baseline"] == "torch" and math.isclose(proj["ratio"], proj["value"] / torch_["value"])
    # train: fused vs eager baseline and vs the facebookresearch/mae plain loop, with the kernels
    # and precision that ran and an MFU against a peak in that precision (never above 1)
    fused, base, ref = by[("train", "fused")], by[("train", "baseline")], by[("train", "reference")]
    assert math.isclose(fused["ratio"], fused["value"] / base["value"])
    assert math.isclose(fused["ratio_vs_reference"], fused["value"] / ref["value"])
    assert "Adam" in fused["kernel"] and "DeepSpeed" in fused["kernel"] and "facebookresearch/mae" in ref["kernel"]
    for r in (fused, base, ref):
        assert r["dtype"] == resolve_precision("auto", torch.device("cpu"))[0] and r["precision_reason"]
        assert 0 < r["mfu"] <= 1.0 and r["peak_source"]
    # the printed table carries every row
    for section, name in by:
        assert name in p.stdout
