"""The loader contract (design §2) every loader in ``dali_pipes`` implements, and the pieces they
share: epoch counting, the 1 -> 3 channel expand, and the checks on a restored state.

Implementations: pretraining — :class:`~dali_pipes.pretrain.DaliPretrainLoader`,
:class:`~dali_pipes.torch_loader.TorchPretrainLoader`, :class:`~dali_pipes.fixed.FixedBatchLoader`
(built by ``dali_pipes.build_pretrain_loader``); fine-tuning —
:class:`~dali_pipes.finetune.DaliFinetuneLoader`, :class:`~dali_pipes.finetune_torch.TorchFinetuneLoader`
(built by ``dali_pipes.finetune_torch.build_finetune_loader``).

Epochs: ``iter(loader)`` yields the rest of the current epoch, ``len(loader)`` batches when it
starts at batch 0, then ``epoch`` goes up by one and ``batch_in_epoch`` back to 0 (a fine-tune
eval loader keeps its epoch: its order never changes). ``state_dict()`` taken between two batches
and given to ``load_state_dict()`` of a fresh loader built with the same arguments makes it yield
exactly the batches the first one would have yielded next, across epoch boundaries too.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, TypeVar, runtime_checkable

if TYPE_CHECKING:  # annotations only: ``import dali_pipes`` stays light (no torch)
    import torch

B = TypeVar("B")


class PretrainBatch(TypedDict, total=False):
    """What a pretraining loader yields (trainer/pretrain.py reads ``image``).

    image: Tensor[B, C, img_size, img_size] normalised with the manifest's pixel stats; float32 on
        CPU, bf16 on GPU (DALI); C = ``in_chans`` (1, or 3 as an expanded view of the gray channel).
    keys: list[str] of B sample ids (``source:axis:frame``), only with ``return_keys``.
    """

    image: torch.Tensor
    keys: list[str]


class FinetuneBatch(TypedDict):
    """What a fine-tune loader yields (finetune/ reads all three).

    image: Tensor[B, C, img_size, img_size] normalised with the encoder's pixel stats; float32 on
        CPU (DALI on GPU: ``gpu_dtype``).
    label: LongTensor[B] class indices.
    index: LongTensor[B] record indices (puts predictions gathered from several ranks back in
        record order). B is the batch size except in a short last batch.
    """

    image: torch.Tensor
    label: torch.Tensor
    index: torch.Tensor


@runtime_checkable
class Loader(Protocol):
    """A restartable source of batches (module doc): iteration, ``len``, ``epoch``, state."""

    epoch: int  # epochs completed (the epoch the next batch belongs to)

    def __iter__(self) -> Iterator[Any]:
        """The rest of the current epoch: :class:`PretrainBatch` or :class:`FinetuneBatch` dicts."""

    def __len__(self) -> int:
        """Batches per (whole) epoch on this rank; the same on every rank of a training loader."""

    def state_dict(self) -> dict:
        """The position after the last yielded batch, JSON-serialisable."""

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``; a state this loader cannot continue raises :class:`LoaderStateError`."""


class LoaderStateError(ValueError):
    """A loader state from another kind of loader, or from another run layout (seed, dataset,
    ranks, batch) than this loader can continue."""


class EpochCounter:
    """``epoch`` and ``batch_in_epoch`` kept the same way by every loader: :meth:`_counted` wraps
    the generator of one epoch's remaining batches, counting each batch before it is handed out
    (a ``state_dict`` taken after receiving a batch includes it) and moving to the next epoch
    when the generator is exhausted."""

    epoch: int = 0
    batch_in_epoch: int = 0

    def _counted(self, batches: Iterable[B], next_epoch: bool = True) -> Iterator[B]:
        for batch in batches:
            self.batch_in_epoch += 1
            yield batch
        if next_epoch:
            self.epoch += 1
        self.batch_in_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Move to the start of ``epoch`` (the fine-tune runner calls it before each training
        epoch). Asking for the current epoch keeps the position, so a loader restored mid-epoch
        continues where it stopped."""
        if epoch != self.epoch:
            self.epoch, self.batch_in_epoch = int(epoch), 0
            self._restart()

    def _restart(self) -> None:
        """Hook: drop whatever holds the old position (a running pipeline)."""


def expand_channels(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Gray ``[..., 1, H, W]`` -> ``[..., in_chans, H, W]`` by repeating the channel (a view, no
    copy): models initialised from RGB weights take 3 identical channels."""
    if in_chans == 1:
        return x
    return x.expand(*x.shape[:-3], in_chans, *x.shape[-2:])


def check_state(state: Mapping, kind: str, **expected: Any) -> None:
    """Refuse ``state`` unless it comes from a ``kind`` loader whose ``expected`` fields (seed,
    dataset size, rank, world size, batch size: what the position means) have this loader's
    values. A field the state lacks (written before it was saved) is taken as this loader's."""
    if state.get("kind") != kind:
        raise LoaderStateError(f"loader state is from a {state.get('kind')!r} loader, not {kind}")
    theirs = {k: state.get(k, v) for k, v in expected.items()}
    differ = {k for k, v in expected.items() if theirs[k] != v}
    if differ:
        if differ & {"rank", "world_size"}:
            differ |= {"rank", "world_size"} & set(expected)  # "rank R of W" names both
        raise LoaderStateError(f"loader state was saved with {_layout(theirs, differ)} but this loader has "
                               f"{_layout(expected, differ)}: resume with the data and settings the run "
                               f"started with")


def _layout(fields: Mapping[str, Any], keys: set[str]) -> str:
    """``rank 1 of 2, batch_size 8``: the ``keys`` of ``fields`` (rank and world size as one phrase)."""
    fields = {k: v for k, v in fields.items() if k in keys}
    parts = [f"rank {fields['rank']} of {fields['world_size']}"] if {"rank", "world_size"} <= set(fields) else []
    parts += [f"{k} {v}" for k, v in fields.items() if k not in ("rank", "world_size") or not parts]
    return ", ".join(parts)


__all__ = ["EpochCounter", "FinetuneBatch", "Loader", "LoaderStateError", "PretrainBatch", "check_state",
           "expand_channels"]
