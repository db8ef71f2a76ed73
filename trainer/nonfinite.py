"""Non-finite losses and gradients, decided the same way on every rank.

A step whose loss or gradients are NaN/inf on *any* rank is skipped on *every* rank (no optimizer
update, no lr-schedule step, the same batch count consumed), counted, and after ``max_in_row``
skips in a row every rank raises :class:`NonFiniteLossError` with the same message.

How, without a host sync of our own per step: with ZeRO 1/2/3 and with DeepSpeed's bf16
optimizer, DeepSpeed already all-reduces the gradients and computes the *global* gradient norm
for clipping; a NaN/inf anywhere makes that norm non-finite on every rank, and DeepSpeed then skips
the step everywhere (``engine.was_step_applied()`` is False, ``engine.skipped_steps`` counts it).
We read that host-side flag after ``engine.step()``. Only where DeepSpeed does not check (ZeRO
stage 0 in fp32: the client optimizer steps unguarded) do we add one all-reduced flag on the loss
before backward, with one host read per step (free on CPU; logged as such).

Test hook: ``USF_MAE_INJECT_NONFINITE="RANK:ATTEMPT[:COUNT][,RANK:ATTEMPT[:COUNT]...]"`` makes
rank RANK's loss NaN on COUNT (default 1) consecutive step attempts starting at attempt ATTEMPT
(0-based, counting skipped attempts too). Used by tests/test_nonfinite.py; never set it in a real run.
"""
from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger("trainer")
INJECT_ENV = "USF_MAE_INJECT_NONFINITE"


class NonFiniteLossError(RuntimeError):
    pass


def injected_attempts(rank: int, spec: str | None = None) -> set[int]:
    """Attempts at which this rank's loss is made NaN (the test hook, module doc)."""
    spec = os.environ.get(INJECT_ENV, "") if spec is None else spec
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        try:
            r, a, *n = (int(x) for x in part.split(":"))
        except ValueError:
            raise ValueError(f"{INJECT_ENV}={spec!r}: expected RANK:ATTEMPT[:COUNT], comma-separated") from None
        if r == rank:
            out.update(range(a, a + (n[0] if n else 1)))
    return out


def deepspeed_skips_nonfinite(engine) -> bool:
    """Whether this engine's optimizer skips a step with a non-finite global gradient norm
    (DeepSpeed 0.19: ZeRO 1/2 in fp32 whenever it computes the norm, and in bf16 with
    ``bf16.check_grad_overflow`` (default on); ZeRO 3 and the bf16 optimizer always)."""
    opt = engine.optimizer
    if not hasattr(opt, "overflow"):
        return False  # the client optimizer itself (ZeRO 0 in fp32): no check
    name = type(opt).__name__
    if name in ("BF16_Optimizer", "DeepSpeedZeroOptimizer_Stage3"):
        return True
    if getattr(opt, "check_grad_overflow", False):
        return True
    return bool(getattr(opt, "compute_grad_norm", False)) and getattr(opt, "dtype", None) != torch.bfloat16


class NonFiniteGuard:
    """Per-step bookkeeping (see module doc). Usage in the loop::

        loss = guard.inject(loss)
        if guard.skip_before_backward(loss):   # only where DeepSpeed does not check
            continue
        engine.backward(loss); engine.step()
        if not guard.after_step(engine.was_step_applied(), step):
            continue                            # skipped on every rank
    """

    def __init__(self, engine, max_in_row: int, rank: int, world: int):
        self.ds_checks = deepspeed_skips_nonfinite(engine)
        self.max_in_row = max_in_row
        self.world = world
        self.inject_at = injected_attempts(rank)
        self.attempt = 0
        self.in_row = 0
        self.skipped = 0

    def describe(self) -> str:
        how = ("DeepSpeed's global grad-norm check (no extra sync)" if self.ds_checks else
               "all-reduced loss flag + one host read per step (DeepSpeed does not check with this config)")
        return f"non-finite guard: {how}; abort after {self.max_in_row} in a row"

    def inject(self, loss: torch.Tensor) -> torch.Tensor:
        """The test hook: NaN loss on the configured attempts of this rank."""
        if self.attempt in self.inject_at:
            log.warning("test hook %s: NaN loss injected at attempt %d", INJECT_ENV, self.attempt)
            loss = loss * float("nan")
        return loss

    def skip_before_backward(self, loss: torch.Tensor, step: int) -> bool:
        """Where DeepSpeed does not check: agree across ranks on the loss before backward."""
        if self.ds_checks:
            return False
        bad = (~torch.isfinite(loss.detach())).float()
        if self.world > 1:
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if bad.item():
            self.after_step(False, step)
            return True
        return False

    def after_step(self, applied: bool, step: int) -> bool:
        """Counts the attempt; returns ``applied``; raises after ``max_in_row`` skips in a row."""
        self.attempt += 1
        if applied:
            self.in_row = 0
            return True
        self.in_row += 1
        self.skipped += 1
        log.warning("non-finite loss or gradients at step %d on some rank: step skipped on every rank "
                    "(%d in a row, %d in all)", step, self.in_row, self.skipped)
        if self.in_row >= self.max_in_row:
            raise NonFiniteLossError(
                f"{self.in_row} non-finite losses/gradients in a row at step {step} (agreed on all "
                f"{self.world} ranks): lower the lr (--blr), check the data (usf-shard verify), or "
                f"resume from an earlier checkpoint")
        return False
