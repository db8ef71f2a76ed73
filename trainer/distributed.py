"""The rank helpers every part uses (:func:`rank`, :func:`world_size`, :func:`barrier`: no-ops
without a process group), and what every rank must agree on before the first step, so that no
rank leaves the loop while the others wait in a collective (a hang, not an error).

The loaders already give every rank the same batches per epoch (design §2); the agreement here
is the guard for any loader dropped in through the batch contract: the run is sized from the
smallest rank's epoch, and a disagreement is logged with every rank's count.
"""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist

log = logging.getLogger("trainer")


def rank() -> int:
    """This process's rank; 0 without a process group (a plain one-process run)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Ranks in the process group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    """Wait until every rank arrives (returns at once without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def agree_steps_per_epoch(n: int, device: torch.device) -> int:
    """Collective: the minimum over ranks of ``n`` (this rank's batches per epoch). Every rank then
    sizes ``--epochs`` runs from the same number and leaves the loop at the same step."""
    if world_size() == 1:
        return n
    counts = [torch.zeros((), dtype=torch.int64, device=device) for _ in range(world_size())]
    dist.all_gather(counts, torch.tensor(n, dtype=torch.int64, device=device))
    counts = [int(c) for c in counts]
    if len(set(counts)) > 1:
        log.warning("ranks disagree on batches per epoch %s: every rank runs %d steps per epoch", counts, min(counts))
    return min(counts)
