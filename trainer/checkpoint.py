"""DeepSpeed checkpoints with per-rank loader state, a ``latest`` pointer written only after every
rank finished saving (atomic rename), the last K kept, and resume on a different world size.

One tag dir, ``<output_dir>/checkpoints/stepNNNNNNNN/``:

- DeepSpeed's files: ``mp_rank_00_model_states.pt`` (module + client state, written by rank 0
  only) and one ``*_optim_states.pt`` per rank under ZeRO;
- ``loader_rank{r}.json``: rank r's own loader state. DeepSpeed saves the client state from rank 0
  alone and every rank loads that one file, so a loader state inside it would give every rank
  rank 0's stream;
- ``train_state.json`` (rank 0): step, epoch, world size, batch, ZeRO stage: read before the
  engine exists, to know whether the world size changed;
- ``mae.safetensors`` + ``mae_config.json``: the full fp32 weights (the optimizer's fp32 master
  copy, gathered across ranks under ZeRO) so export and inspection never unpickle DeepSpeed's files;
- ``universal/``: DeepSpeed's universal checkpoint of this tag, made by rank 0 the first time the
  run resumes on a different world size (``deepspeed.checkpoint.ds_to_universal``) and loaded with
  ``{"checkpoint": {"load_universal": true}}``: model and optimizer state re-partitioned for the
  new world.

Every rank reads and writes the same directory: multi-node runs need a shared filesystem.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer import distributed

log = logging.getLogger("trainer")

TRAIN_STATE = "train_state.json"
UNIVERSAL = "universal"
LATEST = "latest"  # a file naming the newest complete tag


def _write_atomic(path: Path, text: str) -> None:
    """A temporary file renamed into place: a reader (or a resumed run after SIGKILL) sees the old
    file or the new one, never half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json(path: Path, obj: dict) -> None:
    _write_atomic(path, json.dumps(obj))


def read_latest(root: str | Path) -> str | None:
    """The tag that ``root/latest`` names, or None where there is no pointer. The one reader of the
    pointer (pretraining, fine-tuning, ``trainer.weights``); each caller checks that the tag dir
    holds what it needs."""
    f = Path(root) / LATEST
    return f.read_text().strip() if f.is_file() else None


def move_latest(root: str | Path, tag: str) -> None:
    """Points ``root/latest`` at ``tag`` atomically. Call it only after every rank finished writing
    the tag (a barrier before): the pointer always names a complete checkpoint."""
    _write_atomic(Path(root) / LATEST, tag)


@dataclass
class ResumePlan:
    """What ``CheckpointManager.load`` will do; made on every rank before the engine exists."""

    tag_dir: Path
    train_state: dict  # train_state.json of the tag ({} for checkpoints older than it)
    world_size: int  # of the run being resumed
    universal: bool  # the world size changed and ZeRO partitions must be re-cut

    @property
    def world_changed(self) -> bool:
        return self.train_state.get("world_size", self.world_size) != self.world_size

    def ds_config(self, ds: dict) -> dict:
        """The DeepSpeed config with universal loading switched on when needed."""
        if self.universal:
            ds.setdefault("checkpoint", {})["load_universal"] = True
        return ds


class CheckpointManager:
    def __init__(self, root: Path, keep_last: int = 2):
        self.root = Path(root)
        self.keep_last = keep_last
        self._plan: ResumePlan | None = None

    def latest_tag(self) -> str | None:
        tag = read_latest(self.root)
        return tag if tag and (self.root / tag).is_dir() else None

    def latest(self) -> Path | None:
        tag = self.latest_tag()
        return self.root / tag if tag else None

    # ------------------------------------------------------------------ save
    def save(self, engine, tag: str, client_state: dict, model) -> Path:
        """Collective: every rank calls it with its own ``client_state`` ({epoch, step,
        loader_state, config}); its ``loader_state`` goes to ``loader_rank{r}.json``, rank 0's
        whole client state into DeepSpeed's file."""
        rank = distributed.rank()
        tag_dir = self.root / tag
        train_state = {"step": client_state["step"], "epoch": client_state["epoch"],
                       "world_size": distributed.world_size(),
                       "micro_batch": engine.train_micro_batch_size_per_gpu(),
                       "zero_stage": engine.zero_optimization_stage(),
                       "loader": client_state["loader_state"].get("kind")}
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
        from deepspeed.checkpoint.constants import (UNIVERSAL_CHECKPOINT_INFO, UNIVERSAL_CHECKPOINT_VERSION_KEY,
                                                    UNIVERSAL_CHECKPOINT_VERSION_VALUE)

        uc_info = {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}
        client_state = {**client_state, UNIVERSAL_CHECKPOINT_INFO: uc_info}  # ds_to_universal needs the key
        engine.save_checkpoint(str(self.root), tag=tag, client_state=client_state, save_latest=False)
        tag_dir.mkdir(parents=True, exist_ok=True)  # a node that did not write DeepSpeed files yet
        _write_json(tag_dir / f"loader_rank{rank}.json", client_state["loader_state"])
        sd = full_state_dict(engine)
        if rank == 0:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in sd.items()}, str(tag_dir / "mae.safetensors"))
            (tag_dir / "mae_config.json").write_text(json.dumps(model.config_dict(), indent=1))
            _write_json(tag_dir / TRAIN_STATE, train_state)
        distributed.barrier()  # every rank's DeepSpeed files and loader state are on disk
        if rank == 0:
            move_latest(self.root, tag)  # the pointer moves only after a complete save
            self._prune(tag)
        distributed.barrier()
        log.info("checkpoint saved: %s", tag_dir)
        return tag_dir

    # ------------------------------------------------------------------ resume
    def plan_resume(self, world_size: int) -> ResumePlan | None:
        """Collective, before ``deepspeed.initialize``: the latest tag, and on a world-size change
        its universal checkpoint (converted once by rank 0, the other ranks wait)."""
        tag = self.latest_tag()
        if tag is None:
            return None
        tag_dir = self.root / tag
        ts_path = tag_dir / TRAIN_STATE
        train_state = json.loads(ts_path.read_text()) if ts_path.exists() else {}
        plan = ResumePlan(tag_dir, train_state, world_size, universal=False)
        self._plan = plan
        if not plan.world_changed:
            return plan
        # without ZeRO partitions (stage 0, fp32) the optimizer state is whole in the model file
        plan.universal = any(tag_dir.glob("*_optim_states.pt"))
        if plan.universal and distributed.rank() == 0 and not (tag_dir / UNIVERSAL).is_dir():
            to_universal(tag_dir)
        distributed.barrier()
        log.info("resuming %s (world size %d) on world size %d: %s", tag_dir, train_state["world_size"], world_size,
                 "DeepSpeed universal checkpoint" if plan.universal else "unpartitioned optimizer state")
        return plan

    def load(self, engine) -> dict:
        """Loads model/optimizer/scheduler into ``engine`` as planned by ``plan_resume``; returns
        the client state with ``loader_state`` replaced by this rank's own. On a world-size change
        every rank gets rank 0's loader state (the loaders map it to the new layout)."""
        plan, rank = self._plan, distributed.rank()
        if plan is None:
            raise RuntimeError("CheckpointManager.load: call plan_resume(world_size) before deepspeed.initialize "
                               "(a world-size change needs the DeepSpeed config to load a universal checkpoint)")
        if plan.universal:
            _, client = engine.load_checkpoint(str(plan.tag_dir), tag=UNIVERSAL)
        else:
            _, client = engine.load_checkpoint(str(self.root), tag=plan.tag_dir.name)
        if client is None:
            raise RuntimeError(f"checkpoint {plan.tag_dir} could not be loaded")
        replay_cpu_adam_bias_correction(engine)
        own = plan.tag_dir / f"loader_rank{0 if plan.world_changed else rank}.json"
        if own.exists():
            loader_state = json.loads(own.read_text())
        elif plan.world_size == 1 and "loader_state" in client:
            loader_state = client["loader_state"]  # checkpoints from before per-rank loader files
        else:
            raise FileNotFoundError(f"{own} is missing: the checkpoint has no loader state for rank {rank}")
        return {**client, "loader_state": loader_state}

    def _prune(self, current: str) -> None:
        tags = sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name.startswith("step"))
        for t in tags[:-self.keep_last] if self.keep_last > 0 else []:
            if t != current:
                shutil.rmtree(self.root / t, ignore_errors=True)


def to_universal(tag_dir: Path) -> Path:
    """DeepSpeed's universal checkpoint of ``tag_dir`` in ``tag_dir/universal``, converted
    (``deepspeed.checkpoint.ds_to_universal``, sequentially: no worker pool forked from a training
    process) into a temporary folder renamed when complete, so a killed conversion is redone,
    never half-used. The converter's chatter goes to ``universal/convert.log``."""
    import argparse
    import contextlib
    import io

    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    out, tmp = tag_dir / UNIVERSAL, tag_dir / f".{UNIVERSAL}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    args = argparse.Namespace(input_folder=str(tag_dir), output_folder=str(tmp), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True)
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            ds_to_universal(args)
    except Exception as e:
        raise RuntimeError(f"{tag_dir}: conversion to a DeepSpeed universal checkpoint failed: "
                           f"{type(e).__name__}: {e}\n{chatter.getvalue()[-3000:]}") from e
    (tmp / "convert.log").write_text(chatter.getvalue())
    os.replace(tmp, out)
    return out


def replay_cpu_adam_bias_correction(engine) -> None:
    """DeepSpeedCPUAdam keeps beta^t as a running product (t -> t+1: one multiply) but computes
    it with pow() when the step jumps, as on the first step after a resume; in float32 the two
    differ in the last bit at some t (0.95^7, 0.9^4, ...), and the resumed run would drift from
    the uninterrupted one. Replaying the product up to the restored step (empty tensors: no
    parameter is touched) keeps resume bitwise. Other optimizers compute beta^t from t."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    opt = engine.optimizer
    while opt is not None and not isinstance(opt, DeepSpeedCPUAdam):
        opt = getattr(opt, "optimizer", None)
    steps = [int(st["step"]) for st in (opt.state.values() if opt is not None else []) if "step" in st]
    if not steps:
        return
    g, none = opt.param_groups[0], torch.empty(0)
    for t in range(1, max(steps) + 1):
        opt.ds_opt_adam.adam_update(opt.opt_id, t, g["lr"], *g["betas"], g["eps"], g["weight_decay"],
                                    g["bias_correction"], none, none, none, none)


def full_state_dict(engine) -> dict[str, torch.Tensor]:
    """Full (unsharded) float32 weights on CPU, the same on every rank. Collective: every rank
    calls it. Trainable parameters come from the optimizer's fp32 master copy where DeepSpeed keeps
    one (ZeRO 1-3, bf16), gathered across ranks; the rest (frozen position embeddings, stage 0)
    from the module, gathered under ZeRO-3."""
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    sd: dict[str, torch.Tensor] = {}
    for name, p in engine.module.named_parameters():
        full = safe_get_full_fp32_param(p) if p.requires_grad else None
        if full is None:
            if hasattr(p, "ds_id"):  # ZeRO-3 partitioned, no optimizer state (frozen)
                with deepspeed.zero.GatheredParameters([p]):
                    full = p.data.clone()
            else:
                full = p.data
        sd[name] = full.detach().float().cpu()
    persistent = set(engine.module.state_dict())
    for name, b in engine.module.named_buffers():
        if name in persistent:
            sd[name] = b.detach().float().cpu()
    return sd


def fingerprint(sd: dict[str, torch.Tensor]) -> float:
    """One number for a set of weights (float64 sum of every tensor)."""
    return float(sum(v.detach().double().sum() for v in sd.values()))


def rank_fingerprint(engine) -> float:
    """This rank's own copy of the weights as one number: ranks that stayed in sync report the
    same one. Collective under ZeRO-3, where no rank holds a copy and the gathered fp32 weights
    are used."""
    if engine.zero_optimization_stage() == 3:
        return fingerprint(full_state_dict(engine))
    with torch.no_grad():
        return fingerprint(dict(engine.module.named_parameters()))
