"""Threads per rank (trainer/threads.py): the plan from cores per local rank, overrides, and the
governor's arithmetic (no timing is asserted)."""
from __future__ import annotations

import torch

from trainer import threads
from trainer.threads import ThreadGovernor, plan_threads

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def test_plan_splits_cores_across_local_ranks(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 16)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    p = plan_threads(None, None, CPU)
    assert (p.torch_threads, p.loader_threads, p.pinned) == (4, 4, False)
    assert plan_threads(None, None, CUDA).loader_threads == 3  # the feeding thread keeps a core
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setenv("LOCAL_SIZE", "8")  # the DeepSpeed launcher's spelling
    assert plan_threads(None, None, CPU).torch_threads == 2


def test_overrides_pin_the_thread_count(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    p = plan_threads(None, 5, CPU)
    assert (p.torch_threads, p.loader_threads, p.pinned, p.source) == (3, 5, True, "OMP_NUM_THREADS")
    p = plan_threads(2, None, CPU)
    assert (p.torch_threads, p.source, p.pinned) == (2, "--threads", True)
    assert not ThreadGovernor(p, enabled=True).enabled  # pinned: never changed at run time


def test_governor_gives_back_the_cores_others_use(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_SIZE", raising=False)
    g = ThreadGovernor(plan_threads(None, None, CPU), enabled=True)
    g.cores = 2
    assert g.target(0.0) == 2 and g.target(0.2) == 2
    assert g.target(0.7) == 1  # one busy process beside two spinning threads takes ~0.67 core
    assert g.target(5.0) == 1  # never below one


def test_governor_stays_off_in_short_runs(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    g = ThreadGovernor(plan_threads(None, None, CPU), enabled=True)
    g.limit_to_long_runs(threads.MIN_STEPS - 1)
    assert not g.enabled
    g.tick()  # no-op
    assert g.current == 2
