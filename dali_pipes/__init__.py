"""Data pipelines: DALI (GPU, or CPU with ``device_id=None``) and a PyTorch baseline, for
pretraining (``pretrain``, ``torch_loader``, ``fixed``) and fine-tuning (``finetune``,
``finetune_torch``), every loader behind the one contract of ``loader`` (design §2)."""
from __future__ import annotations

from pathlib import Path

from .loader import Loader
from .options import PretrainOptions


def build_pretrain_loader(data: str | Path, opts: PretrainOptions, rank: int = 0, world_size: int = 1,
                          kind: str = "dali", return_keys: bool = False) -> Loader:
    """``kind`` "dali", "torch" or "fixed" (deterministic debugging batches); all yield
    :class:`~dali_pipes.loader.PretrainBatch` ``{"image": Tensor[B, C, H, W]}``."""
    if kind == "dali":
        from .pretrain import DaliPretrainLoader

        return DaliPretrainLoader(data, opts, rank, world_size, return_keys)
    if kind == "torch":
        from .torch_loader import TorchPretrainLoader

        return TorchPretrainLoader(data, opts, rank, world_size, return_keys)
    if kind == "fixed":
        from .fixed import FixedBatchLoader

        return FixedBatchLoader(data, opts, rank, world_size, return_keys)
    raise ValueError(f"unknown loader {kind!r} (dali | torch | fixed)")


__all__ = ["Loader", "PretrainOptions", "build_pretrain_loader"]
