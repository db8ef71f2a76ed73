"""Shared fixtures: one phantom corpus and one shard build per test session (built once, read
by many tests), plus helpers to run the trainer as a subprocess."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))


@pytest.fixture(scope="session")
def demo_raw(tmp_path_factory) -> Path:
    from phantom import write_demo_corpus

    out = tmp_path_factory.mktemp("raw") / "corpus"
    write_demo_corpus(out, seed=0, scale=1.0)
    return out


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory, demo_raw) -> Path:
    """The demo corpus built into small shards (several per split, so rank splits are testable)."""
    from sharder.build import build
    from sharder.config import BuildConfig, quick_datasets

    out = tmp_path_factory.mktemp("shards") / "out"
    # text gate off: the phantom burns typed labels into its scan regions on purpose (the gate's
    # default, reject, is tested on real scanner files in test_real_scanner.py)
    cfg = BuildConfig(datasets=quick_datasets([demo_raw]), shard_max_samples=12, val_fraction=0.1,
                      text_policy="off")
    build(cfg, out, workers=2, progress=False)
    return out
