"""MAE pretraining entry point.

    deepspeed trainer/pretrain.py --deepspeed_config launch/ds.json --data SHARDS --model NAME \
        --output-dir DIR [--epochs E | --max-steps N] [--resume auto] [--init MAE.pth]

Also runs under ``torchrun`` or as a plain single process. DeepSpeed owns the distributed parts
(ZeRO, gradient all-reduce, bf16, clipping, the lr schedule, checkpoints; ``trainer/engine.py``);
:meth:`Trainer.fit` is one readable loop: load -> forward -> backward -> step -> log/save, each step
a named method. What a checkpoint holds beyond DeepSpeed's files is :meth:`Trainer.client_state`:
the step and this rank's loader position (masks are keyed by the step: no RNG state to save).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # `deepspeed trainer/pretrain.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.env import setup_env  # noqa: E402

setup_env()

import torch  # noqa: E402

from runconfig import save_yaml  # noqa: E402
from trainer.checkpoint import CheckpointManager, rank_fingerprint  # noqa: E402
from trainer.config import TrainConfig, parse_args, to_dict  # noqa: E402
from trainer.engine import build_ds_config, build_engine, micro_batch, read_ds_json  # noqa: E402
from trainer.flops import mfu, peak_tflops, train_flops_per_image  # noqa: E402
from trainer.kernels import attention_kernel, use_apex_layernorm, use_sdpa  # noqa: E402
from trainer.metrics_log import MetricsLogger  # noqa: E402
from trainer.model import MaskedAutoencoderViT, config_for  # noqa: E402
from trainer.nonfinite import NonFiniteGuard  # noqa: E402
from trainer.precision import resolve_precision  # noqa: E402
from trainer.recon import save_recon_grid  # noqa: E402
from trainer.threads import ThreadGovernor, apply_plan, plan_threads  # noqa: E402
from trainer.weights import init_mae  # noqa: E402

log = logging.getLogger("trainer")


@dataclass
class Window:
    """What happened between two log lines: steps, wall time since ``t0``, and how much of it was
    spent waiting for data vs computing."""

    n: int = 0
    t0: float = field(default_factory=time.perf_counter)
    data: float = 0.0
    compute: float = 0.0


class Trainer:
    """One pretraining run: the engine, the loader and the bookkeeping around them. ``setup()``
    builds everything in a fixed order (the seeded model init and the collectives depend on it);
    ``fit()`` runs the loop."""

    def __init__(self, cfg: TrainConfig):
        if cfg.resume not in (None, "auto", "none"):
            raise SystemExit(f"--resume takes 'auto'; got {cfg.resume!r}")
        self.cfg = cfg
        self.step = 0  # optimizer steps applied (skipped non-finite steps do not count)
        self.recon_batch: torch.Tensor | None = None  # the first batch's first 8 images, for the grids

    # ================================================================ the loop
    def fit(self) -> int:
        self.setup()
        while self.step < self.total_steps:
            epoch = self.loader.epoch
            t_data = time.perf_counter()
            for batch in self.loader:
                x = self.to_device(batch)
                t_comp = time.perf_counter()
                self.window.data += t_comp - t_data
                if self.train_step(x):  # False: skipped on every rank (non-finite somewhere)
                    self.log_step(epoch, t_comp)
                    if self.cfg.save_every and self.step % self.cfg.save_every == 0:
                        self.save()
                    if self.step >= self.total_steps:
                        break
                t_data = time.perf_counter()
            self.recon_grid(epoch)
        self.finish()
        return 0

    def to_device(self, batch: dict) -> torch.Tensor:
        """The batch contract's ``image`` [B, C, H, W] (normalised) on the device in the run's dtype."""
        x = batch["image"].to(self.device, non_blocking=True)
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        if self.recon_batch is None:
            self.recon_batch = x[:8].detach().float().cpu()
        return x

    def mask_noise(self, rows: int) -> torch.Tensor:
        """Masking noise [rows, N] for this rank: the whole global batch is drawn from a generator
        keyed by (seed, step) and this rank takes its rows. Resumed runs draw the same masks
        without saved RNG state, and world size 1 x batch 2B masks exactly like 2 x batch B."""
        self.gen.manual_seed(self.cfg.seed * 1_000_003 + self.step)
        noise = torch.rand(self.world * rows, self.mcfg.num_patches, device=self.device, generator=self.gen)
        return noise[self.rank * rows:(self.rank + 1) * rows]

    def train_step(self, x: torch.Tensor) -> bool:
        """forward -> backward -> optimizer step on x [B, C, H, W]; False if some rank had a
        non-finite loss or gradient and every rank skipped the step (trainer/nonfinite.py:
        DeepSpeed's global grad-norm check decides, no host sync of ours in the GPU hot loop)."""
        loss, _, _ = self.fwd(x, noise=self.mask_noise(x.shape[0]))
        loss = self.guard.inject(loss)
        if self.guard.skip_before_backward(loss, self.step):
            return False
        self.engine.backward(loss)
        self.engine.step()
        self.governor.tick()
        if not self.guard.after_step(self.engine.was_step_applied(), self.step):
            return False
        self.loss_acc += loss.detach().float()
        self.step += 1
        self.window.n += 1
        return True

    def log_step(self, epoch: int, t_comp: float) -> None:
        """Every ``--log-every`` steps and at the last: one metrics.jsonl record and console line
        over the window since the previous one; otherwise only the step's compute time is counted."""
        w, cfg = self.window, self.cfg
        if self.step % cfg.log_every and self.step != self.total_steps:
            w.compute += time.perf_counter() - t_comp
            return
        if not self.cpu:
            torch.cuda.synchronize()
        now = time.perf_counter()
        w.compute += now - t_comp
        ips = w.n * self.micro * self.world / (now - w.t0)
        tflops = ips * self.flops_img / self.world / 1e12
        mfu_now, self.peak = mfu(tflops, self.peak)  # a peak measured low on a busy CPU is raised: MFU <= 1
        if self.world > 1:  # the logged loss is the global mean (one all-reduce per log line)
            torch.distributed.all_reduce(self.loss_acc)
            self.loss_acc /= self.world
        self.metrics.write({
            "step": self.step, "epoch": epoch, "loss": (self.loss_acc / w.n).item(),
            "lr": self.scheduler.get_last_lr()[0] if self.scheduler else self.lr,
            "grad_norm": _grad_norm(self.engine), "images_per_s": ips,
            "data_s": w.data, "compute_s": w.compute,
            "tflops": tflops, "mfu": mfu_now, "peak_tflops": self.peak,
            "skipped_nonfinite": self.guard.skipped, "torch_threads": self.governor.current,
            "peak_mem_gb": _rss_gb() if self.cpu else torch.cuda.max_memory_allocated(self.device) / 2**30})
        self.loss_acc.zero_()
        self.window = Window()

    def recon_grid(self, epoch: int) -> None:
        """After an epoch (every ``recon_every``-th, at most ~10 per run) and at the end: rank 0
        draws original | masked | reconstruction of the run's first batch."""
        last = self.step >= self.total_steps
        if (self.loader.epoch > epoch or last) and (epoch % self.recon_every == 0 or last) \
                and self.cfg.recon_every_epoch and self.rank == 0 and self.recon_batch is not None:
            path = self.out / f"recon_epoch{epoch:03d}.png"
            save_recon_grid(self.engine.module, self.recon_batch.to(self.device), path,
                            mean=self.loader.mean, std=self.loader.std)
            log.info("reconstruction grid: %s", path)

    # ================================================================ checkpoints
    def client_state(self) -> dict:
        """What this rank adds to DeepSpeed's checkpoint (trainer/checkpoint.py stores it)."""
        return {"epoch": self.loader.epoch, "step": self.step, "loader_state": self.loader.state_dict(),
                "config": to_dict(self.cfg)}

    def save(self) -> None:
        """Collective: every rank writes its part of ``checkpoints/stepNNNNNNNN``."""
        self.ckpt.save(self.engine, f"step{self.step:08d}", self.client_state(), self.model)

    def resume(self) -> None:
        """``--resume auto`` with a checkpoint: engine, step and this rank's loader position."""
        client = self.ckpt.load(self.engine)  # this rank's own loader state
        self.step = client["step"]
        self.loader.load_state_dict(client["loader_state"])
        log.info("resumed from %s at step %d (epoch %d)", self.ckpt.latest(), self.step, client["epoch"])

    def finish(self) -> None:
        """The final checkpoint (unless the last save was at this step) and a per-rank fingerprint
        of the weights: ranks that stayed in sync write the same number."""
        if self.ckpt.latest_tag() != f"step{self.step:08d}":
            self.save()
        (self.out / f"final_rank{self.rank}.json").write_text(
            json.dumps({"step": self.step, "param_checksum": rank_fingerprint(self.engine)}))
        log.info("done: %d steps, %d skipped non-finite; checkpoint %s", self.step, self.guard.skipped,
                 self.ckpt.latest())
        self.metrics.close()

    # ================================================================ setup
    def setup(self) -> None:
        """Process group -> threads/precision -> loader -> model -> engine -> resume -> run config.
        The DeepSpeed JSON is read once, here."""
        self.init_process()
        self.fit_machine()
        ds_json = read_ds_json(self.cfg.deepspeed_config)
        self.build_loader(micro_batch(self.cfg, ds_json))
        self.build_model()
        self.build_engine(ds_json)
        if self.plan is not None:
            self.resume()
        self.write_run_config()
        self.metrics = MetricsLogger(self.out / "metrics.jsonl", self.rank == 0,
                                     self.engine.monitor if self.cfg.tensorboard else None)
        self.gen = torch.Generator(device=self.device)  # masking noise (mask_noise)
        self.loss_acc = torch.zeros((), device=self.device)  # summed over the log window
        self.window = Window()
        self.engine.train()

    def init_process(self) -> None:
        """Process group (gloo on CPU, NCCL on GPU), this rank's device, logging, the seed."""
        import deepspeed

        self.cpu = not torch.cuda.is_available()
        deepspeed.init_distributed(dist_backend="gloo" if self.cpu else "nccl")
        self.rank, self.world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.device = torch.device("cpu") if self.cpu else torch.device("cuda", local_rank)
        if not self.cpu:
            torch.cuda.set_device(self.device)
        self.out = Path(self.cfg.output_dir)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        logging.basicConfig(level=logging.INFO if self.rank == 0 else logging.WARNING,
                            format=f"%(asctime)s [rank{self.rank}] %(message)s", force=True)
        torch.manual_seed(self.cfg.seed)

    def fit_machine(self) -> None:
        """Precision and threads for this machine (trainer/precision.py, trainer/threads.py): the
        resolved values go into cfg (saved with the run), the request and the reasons beside them."""
        cfg = self.cfg
        self.precision, self.precision_why = resolve_precision(cfg.precision, self.device)
        self.threads = plan_threads(cfg.threads, cfg.workers, self.device)
        apply_plan(self.threads)
        self.governor = ThreadGovernor(self.threads, enabled=self.cpu)  # its first reading spans the start-up
        self.requested = {"precision": cfg.precision, "threads": cfg.threads, "workers": cfg.workers}
        cfg.precision, cfg.workers = self.precision, self.threads.loader_threads
        self.dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32

    def build_loader(self, micro: int) -> None:
        """This rank's loader, and the run's length in steps (agreed by every rank)."""
        from dali_pipes import PretrainOptions, build_pretrain_loader
        from trainer.distributed import agree_steps_per_epoch

        cfg, cpu = self.cfg, self.cpu
        self.micro = micro
        opts = PretrainOptions(img_size=cfg.img_size, in_chans=cfg.in_chans, batch_size=micro,
                               num_threads=cfg.workers, seed=cfg.seed, device="cpu" if cpu else cfg.data_device,
                               device_id=None if cpu else self.device.index)
        self.loader = build_pretrain_loader(cfg.data, opts, self.rank, self.world, kind=cfg.loader)
        steps_per_epoch = agree_steps_per_epoch(len(self.loader), self.device)  # no rank leaves early
        self.total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
        # at most ~10 reconstruction grids per run (small demo sets have hundreds of short epochs)
        self.recon_every = max(1, -(-self.total_steps // steps_per_epoch) // 10)

    def build_model(self) -> None:
        """The MAE (seeded init; ``--init`` weights converted to the shards' normalisation)."""
        cfg = self.cfg
        self.sdpa = use_sdpa(cfg.attention, cfg.fused, self.device, self.precision)  # CPU: SDPA in fp32 only
        self.mcfg = config_for(cfg.model, img_size=cfg.img_size, in_chans=cfg.in_chans, mask_ratio=cfg.mask_ratio,
                               norm_pix_loss=cfg.norm_pix_loss, fused_attn=self.sdpa,
                               grad_checkpointing=cfg.grad_checkpointing)
        self.model = MaskedAutoencoderViT(self.mcfg)
        if cfg.init:
            init_mae(self.model, cfg.init, self.loader.mean, self.loader.std)
        self.apex_ln = cfg.fused and use_apex_layernorm(self.model)

    def build_engine(self, ds_json: dict) -> None:
        """DeepSpeed config for this run, the resume plan (collective, before the engine: a
        world-size change loads DeepSpeed's universal checkpoint), the engine, the MFU peak."""
        cfg = self.cfg
        self.ds_config, self.lr = build_ds_config(cfg, ds_json, self.world, self.total_steps)
        self.ckpt = CheckpointManager(self.out / "checkpoints", keep_last=cfg.keep_last)
        self.plan = self.ckpt.plan_resume(self.world) if cfg.resume == "auto" else None
        if self.plan is not None:
            self.ds_config = self.plan.ds_config(self.ds_config)
        self.engine, self.scheduler, opt_kernel = build_engine(self.model, self.ds_config, self.lr, self.device,
                                                               cfg.fused, cfg.weight_decay)
        self.fwd = torch.compile(self.engine.module) if cfg.compile else self.engine
        self.flops_img = train_flops_per_image(self.mcfg)
        self.peak, peak_src = peak_tflops(self.device, self.dtype, cfg.peak_tflops)
        zero = self.ds_config.get("zero_optimization", {}).get("stage", 0)
        log.info("model %s: %.1fM params, %.2f GFLOPs/img (fwd+bwd), world %d, micro-batch %d, lr %.3g, ZeRO %d, %s",
                 cfg.model, sum(p.numel() for p in self.model.parameters()) / 1e6, self.flops_img / 1e9, self.world,
                 self.micro, self.lr, zero, cfg.precision)
        log.info("kernels: optimizer %s | attention %s | layernorm %s | loader %s", opt_kernel,
                 attention_kernel(self.sdpa) + f" ({cfg.attention})",
                 "apex FusedLayerNorm" if self.apex_ln else "torch LayerNorm", cfg.loader)
        log.info("MFU peak: %.1f TFLOP/s per device (%s)", self.peak, peak_src)
        t = self.threads
        log.info("precision %s (%s) | threads: torch %d (%s), loader %d, %d cores / %d local rank(s)", self.precision,
                 self.precision_why, t.torch_threads, t.source, t.loader_threads, t.cores, t.local_world)
        self.governor.limit_to_long_runs(self.total_steps)
        self.guard = NonFiniteGuard(self.engine, cfg.max_nonfinite, self.rank, self.world)
        log.info(self.guard.describe())

    def write_run_config(self) -> None:
        """``config.json`` (rank 0): the resolved config, model, DeepSpeed config, lr, what was
        requested, and why precision and threads are what they are; ``config.yaml``: the resolved
        TrainConfig alone, which ``--config config.yaml`` replays."""
        if self.rank == 0:
            save_yaml(self.cfg, self.out / "config.yaml")
            (self.out / "config.json").write_text(json.dumps({
                "train": to_dict(self.cfg), "model": self.model.config_dict(), "deepspeed": self.ds_config,
                "lr": self.lr, "requested": self.requested,
                "precision": {"used": self.precision, "reason": self.precision_why},
                "threads": self.threads.to_dict()}, indent=1))


def _grad_norm(engine) -> float | None:
    g = engine.get_global_grad_norm()
    if g is None:
        return None
    return float(g.item() if torch.is_tensor(g) else g)


def _rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv=None) -> int:
    return Trainer(parse_args(argv)).fit()


if __name__ == "__main__":
    sys.exit(main())
