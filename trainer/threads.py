"""CPU threads per rank: how many torch intra-op threads and loader threads each rank runs, and a
governor that gives cores back while other processes use them.

Why: on a small CPU box every thread that has no core of its own costs far more than its share.
torch's OpenMP threads spin at each barrier while a sibling is descheduled, so two compute threads
beside one busy process on 2 cores ran the demo model at 0.3x of idle, where one thread keeps
~0.6x (2-core EPYC, ``benchmarks/throughput.py train`` contention figure). And N ranks on one
machine must split its cores, not each take all of them.

Plan (:func:`plan_threads`, logged and saved in the run config): cores = this process's CPU
affinity (and cgroup quota) / ranks on this machine (``LOCAL_WORLD_SIZE`` from torchrun,
``LOCAL_SIZE`` from the DeepSpeed launcher). torch threads = ``--threads`` if given, else
``OMP_NUM_THREADS`` if set, else the cores per rank; loader threads (DALI ``num_threads`` /
DataLoader workers) = ``--workers`` if given, else the cores per rank on CPU (DALI's threads sleep
between batches) and one less on GPU (the Python thread feeding the GPU keeps a core).

Governor (:class:`ThreadGovernor`, CPU training only, when the thread count was not pinned):
every ``interval_s`` it reads the CPU time the machine's other processes used on our cores
(``/proc/stat`` minus our own process time) and sets torch's threads to the cores left
(rounded, at least 1, at most the plan); a change needs two readings in a row. Thread counts
The first decision comes after the first step (the window from start-up to there, if it lasted
``initial_s``): a machine already busy starts the loop at fewer threads, which matters most (two
threads beside a busy process ran the proof's pretraining at 3 img/s, one thread at 80). Later
changes need ``warmup_steps`` steps first, so a run of a few steps never changes mid-way. Thread
counts change the floating-point reduction order, so the governor stays off in runs shorter than
``MIN_STEPS`` (tests and debugging runs, where a rerun or a resume must reproduce the floats
whatever else the machine is doing; a resume test failed on a loaded machine when the two runs
started at different thread counts). Longer runs that must be bitwise reproducible across
processes pin ``--threads`` (or ``OMP_NUM_THREADS``).
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

log = logging.getLogger("trainer")
MIN_STEPS = 100  # shorter runs keep the planned thread count (reproducible floats)


@dataclass
class ThreadPlan:
    cores: int  # cores this process may use (affinity, cgroup quota)
    local_world: int  # ranks on this machine
    cores_per_rank: int
    torch_threads: int
    loader_threads: int
    pinned: bool  # torch threads fixed by --threads or OMP_NUM_THREADS (no governor)
    source: str  # where torch_threads came from

    def to_dict(self) -> dict:
        return asdict(self)


def available_cores() -> int:
    """CPUs this process may run on: affinity mask, capped by a cgroup v2 CPU quota if any."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def local_world_size() -> int:
    for var in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE"):
        v = os.environ.get(var)
        if v and v.isdigit() and int(v) > 0:
            return int(v)
    return 1


def plan_threads(threads: int | None, workers: int | None, device: torch.device) -> ThreadPlan:
    """Threads for this rank; ``threads``/``workers`` (command line) override, see module doc."""
    cores, lw = available_cores(), local_world_size()
    per_rank = max(1, cores // lw)
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if threads:
        n, source, pinned = threads, "--threads", True
    elif env.isdigit() and int(env) > 0:
        n, source, pinned = int(env), "OMP_NUM_THREADS", True
    else:
        n, source, pinned = per_rank, f"{cores} cores / {lw} local rank(s)", False
    loader = workers if workers else (per_rank if device.type == "cpu" else max(1, per_rank - 1))
    return ThreadPlan(cores=cores, local_world=lw, cores_per_rank=per_rank, torch_threads=n,
                      loader_threads=loader, pinned=pinned, source=source)


def apply_plan(plan: ThreadPlan) -> None:
    torch.set_num_threads(plan.torch_threads)


def _cpu_jiffies(cpus: set[int]) -> int | None:
    """Busy jiffies (everything but idle and iowait) summed over ``cpus``; None without /proc."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = 0
    for line in lines:
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *vals = line.split()
            if int(name[3:]) in cpus:
                v = [int(x) for x in vals]
                busy += sum(v[:8]) - v[3] - v[4]  # user nice system idle iowait irq softirq steal
    return busy


class ThreadGovernor:
    """Lowers torch's intra-op threads while other processes occupy our cores, raises them back
    when they leave (module doc). ``tick()`` is called once per step and costs a clock read;
    a reading of /proc/stat happens every ``interval_s``."""

    def __init__(self, plan: ThreadPlan, enabled: bool, interval_s: float = 2.0, warmup_steps: int = 50,
                 initial_s: float = 0.5):
        self.max = plan.torch_threads
        self.current = plan.torch_threads
        self.enabled = enabled and not plan.pinned and self.max > 1 and Path("/proc/stat").exists()
        self.interval = interval_s
        self.warmup = warmup_steps
        self.initial_s = initial_s
        self.steps = 0
        try:
            self.cpus = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            self.cpus = set(range(os.cpu_count() or 1))
        self.cores = min(len(self.cpus), plan.cores)
        self.tck = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.changes = 0
        self.others = 0.0  # cores other processes used in the last interval
        self._pending: int | None = None
        self._mark()

    def limit_to_long_runs(self, total_steps: int) -> None:
        """Off for runs shorter than ``MIN_STEPS`` (module doc)."""
        if total_steps < MIN_STEPS and self.enabled:
            self.enabled = False
            log.info("threads: governor off (%d steps < %d: the thread count stays fixed)", total_steps, MIN_STEPS)

    def _mark(self) -> None:
        self.t_wall, self.t_proc, self.t_busy = time.monotonic(), time.process_time(), _cpu_jiffies(self.cpus)

    def target(self, others: float) -> int:
        """Threads to run when other processes use ``others`` cores of ours."""
        return max(1, min(self.max, round(self.cores - others)))

    def _read(self) -> float | None:
        """Cores the other processes used since the last mark (and a new mark)."""
        wall, proc, busy = time.monotonic() - self.t_wall, time.process_time() - self.t_proc, self.t_busy
        self._mark()
        if busy is None or self.t_busy is None or wall <= 0:
            return None
        self.others = max(0.0, (self.t_busy - busy) / self.tck - proc) / wall
        return self.others

    def _set(self, want: int) -> None:
        log.info("threads: torch intra-op %d -> %d (other processes use %.1f of %d cores)",
                 self.current, want, self.others, self.cores)
        torch.set_num_threads(want)
        self.current, self._pending = want, None
        self.changes += 1

    def tick(self) -> None:
        if not self.enabled:
            return
        self.steps += 1
        if self.steps == 1:  # the first decision: start-up + first step as the window
            if time.monotonic() - self.t_wall >= self.initial_s and self._read() is not None:
                if self.target(self.others) != self.current:
                    self._set(self.target(self.others))
            self._mark()
            return
        if self.steps <= self.warmup:
            if self.steps == self.warmup:
                self._mark()
            return
        if time.monotonic() - self.t_wall < self.interval or self._read() is None:
            return
        want = self.target(self.others)
        if want == self.current:
            self._pending = None
        elif self._pending == want:  # two readings in a row agree
            self._set(want)
        else:
            self._pending = want
