"""Checkpoints of a fine-tune run, for ``--resume``.

Layout under ``RUN_DIR/checkpoints/``::

    eEEEE_sSSSSSS/            after E finished epochs and S steps into epoch E+1 (S = 0: at an epoch end)
        model.safetensors     the model (unwrapped from DDP; identical on every rank)       rank 0
        optimizer.pt          AdamW state (identical on every rank under DDP)               rank 0
        state.json            epoch, step, log records, best-so-far, config fingerprint     rank 0
        rank{R}.pt            what differs per rank: RNG states, loader position, the
                              partial epoch's loss sum                                       every rank
    best_eEEEE.safetensors    weights of the best validation epoch so far (named by epoch, so a
                              checkpoint never points at a later epoch's file)
    latest                    name of the newest complete checkpoint

``latest`` moves only after every rank finished writing (barriers on both sides), so a run
killed mid-save resumes from the previous checkpoint. When the run has finished,
:meth:`FinetuneCheckpoints.finish` drops the optimizer and per-rank files of the final checkpoint
(and its weights when the best epoch's are kept) and marks it complete: what stays (the weights
that are scored + state) re-scores the test set on ``--resume`` without training, with any
number of ranks. Everything is read back with safetensors,
``json`` or ``torch.load(weights_only=True)`` (design §3: nothing is unpickled).
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from finetune.dist import DistContext
from trainer.checkpoint import move_latest, read_latest


def rng_state() -> dict:
    """Python, numpy, torch CPU (and this process's CUDA device) RNG states as tensors/ints only,
    so ``torch.load(weights_only=True)`` reads them back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    st = {"python": random.getstate(), "torch": torch.get_rng_state(),
          "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                    "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def set_rng_state(st: dict) -> None:
    random.setstate(_tuples(st["python"]))
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def _tuples(x):
    """random.setstate wants tuples where a save/load round trip may have produced lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def checkpoint_tag(epoch: int, step: int) -> str:
    return f"e{epoch:04d}_s{step:06d}"


class FinetuneCheckpoints:
    """Save / find / load the checkpoints of one run directory (all ranks call save and load)."""

    def __init__(self, root: str | Path, ctx: DistContext, keep_last: int = 1):
        self.root, self.ctx, self.keep_last = Path(root), ctx, max(1, int(keep_last))

    # -- finding
    def latest(self) -> Path | None:
        tag = read_latest(self.root)
        if tag is None:
            return None
        path = self.root / tag
        if not (path / "state.json").is_file():
            raise FileNotFoundError(f"{self.root / 'latest'} names {tag}, which has no state.json")
        return path

    def find(self, resume: str | None) -> Path | None:
        """``auto``: the latest checkpoint, or None for a fresh start; otherwise a checkpoint dir."""
        if not resume or resume == "none":
            return None
        if resume == "auto":
            return self.latest()
        path = Path(resume).expanduser()
        if not (path / "state.json").is_file():
            raise FileNotFoundError(f"--resume {path}: not a fine-tune checkpoint (no state.json)")
        return path

    # -- saving
    def save(self, epoch: int, step: int, *, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict,
             rank_state: dict, best_weights: dict[str, torch.Tensor] | None) -> Path:
        """Write checkpoint (epoch, step). ``state`` is rank 0's JSON state (must hold
        ``best_epoch``); ``rank_state`` this rank's; ``best_weights`` the best epoch's weights
        (written once per best epoch). Returns after ``latest`` names it, on every rank."""
        ctx, tag = self.ctx, checkpoint_tag(epoch, step)
        path = self.root / tag
        if ctx.is_main:
            if path.exists():  # a save of this tag interrupted earlier
                shutil.rmtree(path)
            path.mkdir(parents=True)
        ctx.barrier()
        torch.save(rank_state, path / f"rank{ctx.rank}.pt")
        if ctx.is_main:
            save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
                      str(path / "model.safetensors"))
            torch.save(optimizer.state_dict(), path / "optimizer.pt")
            best_file = None
            if best_weights is not None and state.get("best_epoch") is not None:
                best_file = f"best_e{int(state['best_epoch']):04d}.safetensors"
                if not (self.root / best_file).is_file():
                    tmp = self.root / (best_file + ".tmp")
                    save_file({k: v.contiguous() for k, v in best_weights.items()}, str(tmp))
                    os.replace(tmp, self.root / best_file)
            full = {**state, "epoch": epoch, "step": step, "world_size": ctx.world_size, "best_file": best_file}
            (path / "state.json").write_text(json.dumps(full, indent=1))
        ctx.barrier()  # every rank's file is on disk before latest moves
        if ctx.is_main:
            move_latest(self.root, tag)
            self._prune()
        ctx.barrier()
        return path

    def _prune(self) -> None:
        tags = sorted(p for p in self.root.glob("e*_s*") if p.is_dir())
        keep = tags[-self.keep_last:]
        for p in tags[:-self.keep_last]:
            shutil.rmtree(p, ignore_errors=True)
        used = set()
        for p in keep:
            try:
                used.add(json.loads((p / "state.json").read_text()).get("best_file"))
            except (OSError, json.JSONDecodeError):
                continue
        for f in self.root.glob("best_e*.safetensors"):
            if f.name not in used:
                f.unlink(missing_ok=True)

    def finish(self, path: Path) -> None:
        """Mark the final checkpoint complete and drop what only further training would need (and
        the last-epoch weights when the best epoch's are kept: those are the ones scored)."""
        self.ctx.barrier()
        if self.ctx.is_main:
            state = json.loads((path / "state.json").read_text())
            (path / "state.json").write_text(json.dumps({**state, "complete": True}, indent=1))
            drop = [path / "optimizer.pt", *path.glob("rank*.pt")]
            if state.get("best_file"):
                drop.append(path / "model.safetensors")
            for f in drop:
                f.unlink(missing_ok=True)
        self.ctx.barrier()

    # -- loading
    def load(self, path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, fingerprint: dict
             ) -> tuple[dict, dict | None, dict[str, torch.Tensor] | None]:
        """Restore model and optimizer from checkpoint ``path``; returns (state, this rank's state,
        best weights or None). The caller restores the loader and RNG from the rank state (None
        for a complete run: nothing left to train). Refuses a checkpoint of another
        configuration, or of another world size unless complete, naming what differs."""
        state = json.loads((path / "state.json").read_text())
        complete = bool(state.get("complete"))
        if state.get("world_size") != self.ctx.world_size and not complete:
            raise ValueError(f"{path}: saved by {state.get('world_size')} rank(s), this run has {self.ctx.world_size}; "
                             "resume with the same number of ranks (loader positions and RNG streams are per rank)")
        saved = state.get("fingerprint", {})
        ignore = {"world_size"} if complete else set()
        diff = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k) and k not in ignore)
        if diff:
            what = ", ".join(f"{k}: {saved.get(k)!r} -> {fingerprint.get(k)!r}" for k in diff[:6])
            raise ValueError(f"{path}: saved with another configuration ({what}); resume with the same settings "
                             "or start a fresh output dir")
        if not (complete and state.get("best_file")):  # else the best weights are all there is to score
            model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
        rank_state = None
        if not complete:
            rank_file = path / f"rank{self.ctx.rank}.pt"
            if not rank_file.is_file():
                raise FileNotFoundError(f"{rank_file}: missing (checkpoint incomplete)")
            optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
            rank_state = torch.load(rank_file, map_location="cpu", weights_only=True)
        best = load_file(str(path.parent / state["best_file"])) if state.get("best_file") else None
        return state, rank_state, best
