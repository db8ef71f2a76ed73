"""DeepSpeed checkpoints with client state, a ``latest`` pointer written only after a complete
save (atomic rename, after every rank finished), and the last K kept.

Each tag also holds ``mae.safetensors`` + ``mae_config.json`` (the full MAE weights in plain
safetensors) so export and inspection never unpickle DeepSpeed's files.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

log = logging.getLogger("trainer")


class CheckpointManager:
    def __init__(self, root: Path, keep_last: int = 2):
        self.root = Path(root)
        self.keep_last = keep_last

    def latest_tag(self) -> str | None:
        f = self.root / "latest"
        if not f.exists():
            return None
        tag = f.read_text().strip()
        return tag if (self.root / tag).is_dir() else None

    def latest(self) -> Path | None:
        tag = self.latest_tag()
        return self.root / tag if tag else None

    def save(self, engine, tag: str, client_state: dict, model) -> Path:
        rank = dist.get_rank() if dist.is_initialized() else 0
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
        engine.save_checkpoint(str(self.root), tag=tag, client_state=client_state, save_latest=False)
        sd = _full_state_dict(engine)
        if rank == 0:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in sd.items()}, str(self.root / tag / "mae.safetensors"))
            (self.root / tag / "mae_config.json").write_text(json.dumps(model.config_dict(), indent=1))
        if dist.is_initialized():
            dist.barrier()
        if rank == 0:
            tmp = self.root / ".latest.tmp"
            tmp.write_text(tag)
            os.replace(tmp, self.root / "latest")  # the pointer moves only after a complete save
            self._prune(tag)
        if dist.is_initialized():
            dist.barrier()
        log.info("checkpoint saved: %s", self.root / tag)
        return self.root / tag

    def load(self, engine) -> dict:
        tag = self.latest_tag()
        _, client = engine.load_checkpoint(str(self.root), tag=tag)
        if client is None:
            raise RuntimeError(f"checkpoint {self.root / tag} could not be loaded")
        return client

    def _prune(self, current: str) -> None:
        tags = sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name.startswith("step"))
        for t in tags[:-self.keep_last] if self.keep_last > 0 else []:
            if t != current:
                shutil.rmtree(self.root / t, ignore_errors=True)


def _full_state_dict(engine) -> dict[str, torch.Tensor]:
    """Full (unsharded) float32 weights on CPU; under ZeRO-3 gathered from all ranks."""
    stage = engine.zero_optimization_stage() if hasattr(engine, "zero_optimization_stage") else 0
    if stage == 3:
        sd = engine._zero3_consolidated_16bit_state_dict() or {}
    else:
        sd = engine.module.state_dict()
    return {k: v.detach().float().cpu() for k, v in sd.items()}
