"""Process environment that must be set before DeepSpeed is imported."""
from __future__ import annotations

import os
import sys
from pathlib import Path


def setup_env() -> None:
    """CPU machines: DeepSpeed's CPU accelerator (gloo) unless told otherwise; JIT-built ops are
    cached inside the active virtualenv so they compile once per venv, not per run."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if not has_cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    # single-process runs (no launcher): a one-rank process group on localhost
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
