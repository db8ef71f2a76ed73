"""Ranks for the fine-tune runner: ``torchrun --nproc_per_node N -m finetune ...``.

Fine-tuning uses plain torch DDP (gloo on CPU, nccl on CUDA), not DeepSpeed: an 86M-parameter
ViT-B and its AdamW state fit every GPU many times over, so ZeRO's sharding only adds
communication, and DDP's bucketed all-reduce overlapped with backward is the fastest honest
choice; it also runs unchanged on CPU (gloo) for the tests.

:func:`dist_context` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``PORT``) and starts the process group once per process (or adopts one the
caller started); a plain ``python -m finetune`` is world size 1 and never touches
``torch.distributed``. The collectives the runner needs are methods of :class:`DistContext`,
each a no-op at world size 1; code without a context asks ``trainer.distributed`` (``rank()``,
``world_size()``, ``barrier()``).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from trainer.distributed import world_size

_OWNED = False  # this module started the process group (and so may end it)


@dataclass
class DistContext:
    """This process's place among the ranks and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None at world size 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. writing a file the others then read), then the rest."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0, in rank order (None on the other ranks)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def check_same(self, value: Any, what: str) -> None:
        """Raise on every rank unless ``value`` is equal on all of them (e.g. steps per epoch:
        unequal step counts would leave a rank waiting in an all-reduce forever)."""
        if not self.distributed:
            return
        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        if any(v != values[0] for v in values):
            raise RuntimeError(f"{what} differs between ranks: {values}")


def pick_device(request: str, local_rank: int = 0) -> torch.device:
    """``auto``: this rank's GPU (``cuda:LOCAL_RANK``) when CUDA is available, else the CPU;
    ``cuda`` means this rank's GPU too; anything else is taken as a torch device string."""
    if request == "auto":
        request = "cuda" if torch.cuda.is_available() else "cpu"
    if request == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(request)


def dist_context(device_request: str = "auto") -> DistContext:
    """The ranks of this process: from an already started process group, from torchrun's
    environment (starting the group: nccl for CUDA devices, gloo otherwise), or world size 1."""
    global _OWNED
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_available() or (world <= 1 and not dist.is_initialized()):
        return DistContext(device=pick_device(device_request, 0))
    device = pick_device(device_request, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        _OWNED = True
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                       device=device, backend=dist.get_backend())


def shutdown() -> None:
    """End the process group if :func:`dist_context` started it (torchrun's processes exit next)."""
    global _OWNED
    if _OWNED and dist.is_initialized():
        dist.destroy_process_group()
    _OWNED = False


class AllReduceBatchNorm1d(torch.nn.BatchNorm1d):
    """BatchNorm1d over (N, C) features whose training statistics are those of all ranks'
    batches together, for process groups where torch's SyncBatchNorm does not run (it is
    CUDA-only; this is for gloo/CPU). The per-rank sums (Σx, Σx², n) are all-reduced through
    ``torch.distributed.nn`` so gradients flow back to every rank's inputs; W ranks at batch b
    then normalise exactly like one rank at batch W*b (up to float summation order). Running
    statistics are updated as ``nn.BatchNorm1d`` does (unbiased variance)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(x)
        if x.dim() != 2:
            raise ValueError(f"AllReduceBatchNorm1d expects (N, C) input, got {tuple(x.shape)}")
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        xf = x.float()
        local = torch.cat([xf.sum(0), (xf * xf).sum(0), xf.new_tensor([x.shape[0]])])
        total = all_reduce(local)
        n = total[-1]
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1.0), alpha=m)
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y.to(x.dtype)


def sync_batchnorm(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` with its BatchNorm layers synchronised across ranks: torch's SyncBatchNorm on
    CUDA, :class:`AllReduceBatchNorm1d` for BatchNorm1d elsewhere (in place; returns the module)."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in list(module.named_children()):
        if type(child) is torch.nn.BatchNorm1d:
            new = AllReduceBatchNorm1d(child.num_features, child.eps, child.momentum, child.affine,
                                       child.track_running_stats).to(device)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(module, name, new)
        else:
            sync_batchnorm(child, device)
    return module
