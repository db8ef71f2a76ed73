"""MAE pretraining entry point.

    deepspeed trainer/pretrain.py --deepspeed_config launch/ds.json --data SHARDS --model NAME \
        --output-dir DIR [--epochs E | --max-steps N] [--resume auto] [--init MAE.pth]

Also runs under ``torchrun`` or as a plain single process. DeepSpeed owns the distributed parts
(ZeRO, gradient all-reduce, bf16, clipping, the lr schedule, checkpoints); this file is one
readable loop: load -> forward -> backward -> step -> log/save.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `deepspeed trainer/pretrain.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.env import setup_env  # noqa: E402

setup_env()

import torch  # noqa: E402

from trainer.config import TrainConfig, parse_args, to_dict  # noqa: E402
from trainer.flops import mfu, peak_tflops, train_flops_per_image  # noqa: E402
from trainer.kernels import (attention_kernel, make_optimizer, tune_ds_config_for_cpu,  # noqa: E402
                             use_apex_layernorm, use_sdpa)
from trainer.model import MaskedAutoencoderViT, config_for  # noqa: E402
from trainer.param_groups import weight_decay_groups  # noqa: E402
from trainer.nonfinite import NonFiniteGuard, NonFiniteLossError  # noqa: E402,F401  (re-exported)
from trainer.precision import resolve_precision  # noqa: E402
from trainer.threads import ThreadGovernor, apply_plan, plan_threads  # noqa: E402

log = logging.getLogger("trainer")


def build_ds_config(cfg: TrainConfig, world: int, total_steps: int) -> tuple[dict, float]:
    """Loads the DeepSpeed JSON and fills in what depends on the run; returns (config, lr)."""
    ds = json.loads(Path(cfg.deepspeed_config).read_text())
    if cfg.batch_size:
        ds["train_micro_batch_size_per_gpu"] = cfg.batch_size
    ds.pop("train_batch_size", None)
    ds["bf16"] = {"enabled": cfg.precision == "bf16"}
    ds.pop("fp16", None)
    if cfg.zero_stage is not None:
        ds.setdefault("zero_optimization", {})["stage"] = cfg.zero_stage
    eff = ds["train_micro_batch_size_per_gpu"] * ds.get("gradient_accumulation_steps", 1) * world
    lr = cfg.lr if cfg.lr is not None else cfg.blr * eff / 256
    sch = ds.get("scheduler", {}).get("params", {})
    if sch:
        sch["total_num_steps"] = max(total_steps, 1)
        warm = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, int(0.05 * total_steps))
        sch["warmup_num_steps"] = min(warm, max(total_steps - 1, 0))
    if cfg.tensorboard:
        try:
            import tensorboard  # noqa: F401

            ds["tensorboard"] = {"enabled": True, "output_path": str(Path(cfg.output_dir) / "tb"),
                                 "job_name": "pretrain"}
        except ImportError:
            pass
    return ds, lr


def load_mae_init(model: MaskedAutoencoderViT, path: str, mean=None, std=None):
    """``--init``: any weights ``trainer.weights`` reads (the USF-MAE release, facebookresearch/mae
    checkpoints such as the ImageNet MAE USF-MAE started from, timm ViTs, our checkpoints and
    exports). With the data's ``mean``/``std`` the weights are converted to that normalisation
    (3 -> 1 channel exactly for gray images); without, RGB filters are summed as they are."""
    from trainer.weights import init_mae

    return init_mae(model, path, mean, std)


def main(argv=None) -> int:
    cfg = parse_args(argv)
    return train(cfg)


def train(cfg: TrainConfig) -> int:
    import deepspeed

    from dali_pipes import PretrainOptions, build_pretrain_loader
    from trainer.checkpoint import CheckpointManager, rank_fingerprint
    from trainer.distributed import agree_steps_per_epoch
    from trainer.metrics_log import MetricsLogger
    from trainer.viz import save_recon_grid

    cpu = not torch.cuda.is_available()
    deepspeed.init_distributed(dist_backend="gloo" if cpu else "nccl")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cpu") if cpu else torch.device("cuda", local_rank)
    if not cpu:
        torch.cuda.set_device(device)
    out = Path(cfg.output_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank{rank}] %(message)s", force=True)
    torch.manual_seed(cfg.seed)
    # precision and threads fit this machine (trainer/precision.py, trainer/threads.py); the
    # resolved values go into cfg (saved with the run), the request and the reasons beside them
    precision, precision_why = resolve_precision(cfg.precision, device)
    threads = plan_threads(cfg.threads, cfg.workers, device)
    apply_plan(threads)
    governor = ThreadGovernor(threads, enabled=cpu)  # its first reading spans the start-up below
    requested = {"precision": cfg.precision, "threads": cfg.threads, "workers": cfg.workers}
    cfg.precision, cfg.workers = precision, threads.loader_threads

    # ---------------------------------------------------------------- data
    ds_json = json.loads(Path(cfg.deepspeed_config).read_text())
    micro = cfg.batch_size or ds_json["train_micro_batch_size_per_gpu"]
    opts = PretrainOptions(img_size=cfg.img_size, in_chans=cfg.in_chans, batch_size=micro,
                           num_threads=cfg.workers, seed=cfg.seed,
                           device="cpu" if cpu else cfg.data_device, device_id=None if cpu else local_rank)
    loader = build_pretrain_loader(cfg.data, opts, rank, world, kind=cfg.loader)
    steps_per_epoch = agree_steps_per_epoch(len(loader), device)  # equal on every rank: no rank leaves early
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    # at most ~10 reconstruction grids per run (small demo sets have hundreds of short epochs)
    recon_every = max(1, -(-total_steps // steps_per_epoch) // 10)

    # ---------------------------------------------------------------- model + engine
    sdpa = use_sdpa(cfg.attention, cfg.fused, device, precision)  # on CPU: SDPA in fp32, eager in bf16
    mcfg = config_for(cfg.model, img_size=cfg.img_size, in_chans=cfg.in_chans, mask_ratio=cfg.mask_ratio,
                      norm_pix_loss=cfg.norm_pix_loss, fused_attn=sdpa,
                      grad_checkpointing=cfg.grad_checkpointing)
    model = MaskedAutoencoderViT(mcfg)
    if cfg.init:
        load_mae_init(model, cfg.init, loader.mean, loader.std)
    apex_ln = cfg.fused and use_apex_layernorm(model)
    ds_config, lr = build_ds_config(cfg, world, total_steps)
    if cpu:
        tune_ds_config_for_cpu(ds_config)
    if cfg.resume not in (None, "auto", "none"):
        raise SystemExit(f"--resume takes 'auto'; got {cfg.resume!r}")
    ckpt = CheckpointManager(out / "checkpoints", keep_last=cfg.keep_last)
    # before the engine exists: a world-size change needs DeepSpeed's universal checkpoint loading
    plan = ckpt.plan_resume(world) if cfg.resume == "auto" else None
    if plan is not None:
        ds_config = plan.ds_config(ds_config)
    op = ds_config.pop("optimizer", {}).get("params", {})
    wd = cfg.weight_decay if cfg.weight_decay is not None else op.get("weight_decay", 0.05)
    optimizer, opt_kernel = make_optimizer(weight_decay_groups(model, wd), lr=lr, betas=tuple(op.get("betas", (0.9, 0.95))),
                                           eps=op.get("eps", 1e-8), weight_decay=wd, fused=cfg.fused)
    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config,
                                                           model_parameters=None)
    fwd = torch.compile(engine.module) if cfg.compile else engine
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    flops_img = train_flops_per_image(mcfg)
    peak, peak_src = peak_tflops(device, dtype, cfg.peak_tflops)
    zero = ds_config.get("zero_optimization", {}).get("stage", 0)
    log.info("model %s: %.1fM params, %.2f GFLOPs/img (fwd+bwd), world %d, micro-batch %d, lr %.3g, ZeRO %d, %s",
             cfg.model, sum(p.numel() for p in model.parameters()) / 1e6, flops_img / 1e9, world, micro, lr,
             zero, cfg.precision)
    log.info("kernels: optimizer %s | attention %s | layernorm %s | loader %s", opt_kernel,
             attention_kernel(sdpa) + f" ({cfg.attention})", "apex FusedLayerNorm" if apex_ln else "torch LayerNorm", cfg.loader)
    log.info("MFU peak: %.1f TFLOP/s per device (%s)", peak, peak_src)
    log.info("precision %s (%s) | threads: torch %d (%s), loader %d, %d cores / %d local rank(s)", precision,
             precision_why, threads.torch_threads, threads.source, threads.loader_threads, threads.cores,
             threads.local_world)
    governor.limit_to_long_runs(total_steps)
    guard = NonFiniteGuard(engine, cfg.max_nonfinite, rank, world)
    log.info(guard.describe())

    step = 0
    if plan is not None:
        client = ckpt.load(engine)  # this rank's own loader state
        step = client["step"]
        loader.load_state_dict(client["loader_state"])
        log.info("resumed from %s at step %d (epoch %d)", ckpt.latest(), step, client["epoch"])
    if rank == 0:
        (out / "config.json").write_text(json.dumps({"train": to_dict(cfg), "model": model.config_dict(),
                                                      "deepspeed": ds_config, "lr": lr, "requested": requested,
                                                      "precision": {"used": precision, "reason": precision_why},
                                                      "threads": threads.to_dict()}, indent=1))
    metrics = MetricsLogger(out / "metrics.jsonl", rank == 0, engine.monitor if cfg.tensorboard else None)

    # ---------------------------------------------------------------- loop
    gen = torch.Generator(device=device)
    loss_acc = torch.zeros((), device=device)
    window = {"n": 0, "t0": time.perf_counter(), "data": 0.0, "compute": 0.0}
    recon_batch = None
    engine.train()

    def client_state():
        return {"epoch": loader.epoch, "step": step, "loader_state": loader.state_dict(),
                "config": to_dict(cfg)}

    while step < total_steps:
        epoch = loader.epoch
        t_data = time.perf_counter()
        for batch in loader:
            x = batch["image"].to(device, non_blocking=True)
            if x.dtype != dtype:
                x = x.to(dtype)
            if recon_batch is None:
                recon_batch = x[:8].detach().float().cpu()
            t_comp = time.perf_counter()
            window["data"] += t_comp - t_data
            # masking noise for the whole global batch from a generator keyed by (seed, step);
            # this rank takes its rows. Resumed runs draw the same masks without saved RNG
            # state, and world size 1 x batch 2B masks exactly like world size 2 x batch B.
            gen.manual_seed(cfg.seed * 1_000_003 + step)
            noise = torch.rand(world * x.shape[0], mcfg.num_patches, device=device, generator=gen)
            noise = noise[rank * x.shape[0]:(rank + 1) * x.shape[0]]
            loss, _, _ = fwd(x, noise=noise)
            loss = guard.inject(loss)
            # a NaN/inf on any rank skips this step on every rank (trainer/nonfinite.py): DeepSpeed's
            # global grad-norm check decides, so no host sync of ours in the GPU hot loop
            if guard.skip_before_backward(loss, step):
                t_data = time.perf_counter()
                continue
            engine.backward(loss)
            engine.step()
            governor.tick()
            if not guard.after_step(engine.was_step_applied(), step):
                t_data = time.perf_counter()
                continue
            loss_acc += loss.detach().float()
            step += 1
            window["n"] += 1
            if step % cfg.log_every == 0 or step == total_steps:
                if not cpu:
                    torch.cuda.synchronize()
                now = time.perf_counter()
                window["compute"] += now - t_comp
                dt = now - window["t0"]
                ips = window["n"] * micro * world / dt
                tflops = ips * flops_img / world / 1e12
                mfu_now, peak = mfu(tflops, peak)  # a peak measured low on a busy CPU is raised: MFU <= 1
                if world > 1:  # the logged loss is the global mean (one all-reduce per log line)
                    torch.distributed.all_reduce(loss_acc)
                    loss_acc /= world
                rec = {"step": step, "epoch": epoch, "loss": (loss_acc / window["n"]).item(),
                       "lr": scheduler.get_last_lr()[0] if scheduler else lr,
                       "grad_norm": _grad_norm(engine), "images_per_s": ips,
                       "data_s": window["data"], "compute_s": window["compute"],
                       "tflops": tflops, "mfu": mfu_now, "peak_tflops": peak,
                       "skipped_nonfinite": guard.skipped, "torch_threads": governor.current,
                       "peak_mem_gb": (torch.cuda.max_memory_allocated(device) / 2**30) if not cpu else _rss_gb()}
                metrics.write(rec)
                loss_acc.zero_()
                window.update(n=0, t0=time.perf_counter(), data=0.0, compute=0.0)
            else:
                window["compute"] += time.perf_counter() - t_comp
            if cfg.save_every and step % cfg.save_every == 0:
                ckpt.save(engine, f"step{step:08d}", client_state(), model)
            if step >= total_steps:
                break
            t_data = time.perf_counter()
        last = step >= total_steps
        if (loader.epoch > epoch or last) and (epoch % recon_every == 0 or last) and cfg.recon_every_epoch \
                and rank == 0 and recon_batch is not None:
            path = save_recon_grid(engine.module, recon_batch.to(device), out / f"recon_epoch{epoch:03d}.png",
                                   mean=loader.mean, std=loader.std)
            log.info("reconstruction grid: %s", path)
    if ckpt.latest_tag() != f"step{step:08d}":
        ckpt.save(engine, f"step{step:08d}", client_state(), model)
    # a per-rank fingerprint of the weights: ranks that stayed in sync write the same number
    (out / f"final_rank{rank}.json").write_text(json.dumps({"step": step, "param_checksum": rank_fingerprint(engine)}))
    log.info("done: %d steps, %d skipped non-finite; checkpoint %s", step, guard.skipped, ckpt.latest())
    metrics.close()
    return 0


def _grad_norm(engine) -> float | None:
    g = engine.get_global_grad_norm()
    if g is None:
        return None
    return float(g.item() if torch.is_tensor(g) else g)


def _rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


if __name__ == "__main__":
    sys.exit(main())
