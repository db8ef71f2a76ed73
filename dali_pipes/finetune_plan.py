"""The fine-tune sample plan both fine-tune loaders follow (``dali_pipes.finetune`` on DALI,
``dali_pipes.finetune_torch`` on torch), so they read the same records in the same order on every
rank: which records an epoch holds (:func:`global_order`), how many steps it has
(:func:`train_steps`), and each rank's share of a training epoch (:func:`train_plan`) or of an
evaluation pass (:func:`eval_plan`)."""
from __future__ import annotations

import numpy as np


def global_order(n: int, *, seed: int, epoch: int, shuffle: bool, weights: np.ndarray | None = None) -> np.ndarray:
    """Record indices of one epoch over all ranks, a function of (seed, epoch) only: ``n`` draws
    with replacement in proportion to ``weights`` (class-balanced sampling), a permutation
    (``shuffle``), or ``0..n-1``."""
    if weights is None and not shuffle:
        return np.arange(n)
    rng = np.random.default_rng([seed & 0xFFFFFFFF, epoch, 0x5EED])
    if weights is not None:
        return rng.choice(n, size=n, replace=True, p=weights)
    return rng.permutation(n)


def train_steps(n: int, batch_size: int, world_size: int = 1, drop_last: bool = False) -> int:
    """Steps per epoch, the same on every rank: global batches of ``batch_size x world_size``,
    the last partial one dropped (``drop_last``) or kept."""
    g = batch_size * world_size
    return n // g if drop_last else -(-n // g)


def train_plan(order: np.ndarray, batch_size: int, rank: int = 0, world_size: int = 1,
               drop_last: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """This rank's share of a training epoch: (record indices, their positions in the global order).

    Global batch k is ``order[k*G:(k+1)*G]`` with ``G = batch_size * world_size``, and rank r
    takes its r-th ``batch_size`` slice of it. So W ranks at batch b see exactly the global
    batches one rank sees at batch W*b (DDP averages the per-rank mean gradients into the global
    mean), and every rank runs :func:`train_steps` steps: never a rank waiting in an all-reduce
    another rank will not enter. A partial last global batch (no ``drop_last``) is completed by
    wrapping to the start of the order when W > 1, as ``DistributedSampler`` pads, so no rank
    gets an empty or short batch; one rank keeps a short last batch. Positions (0.. in the global
    order, padding continuing past n) seed each sample's augmentation, which therefore does not
    depend on the rank count either."""
    n = len(order)
    steps = train_steps(n, batch_size, world_size, drop_last)
    if world_size == 1:
        pos = np.arange(min(n, steps * batch_size))
    else:
        pos = np.arange(steps * batch_size * world_size).reshape(steps, world_size, batch_size)[:, rank].reshape(-1)
    return np.asarray(order)[pos % max(n, 1)], pos


def eval_plan(n: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """This rank's records of an evaluation pass: a contiguous chunk, the chunks of ranks 0..W-1
    concatenated being ``0..n-1`` — every record exactly once, no padding duplicates (sizes may
    differ by one; a rank may get none). Evaluation runs no collective per batch, so uneven
    counts cannot hang."""
    return np.array_split(np.arange(n), world_size)[rank]


def check_rank(rank: int, world_size: int) -> None:
    """An error unless ``0 <= rank < world_size``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of world size {world_size}: need 0 <= rank < world_size")
