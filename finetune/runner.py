"""Fine-tune (or linear-probe) an encoder on a downstream ultrasound task and score it the way
the paper does: the run driver.

    python -m finetune --task busbra --data-root ~/data/BUSBRA --init runs/export \\
        --output-dir runs/ft/busbra [--cv] [--linear-probe] [--model resnet50] ...

writes ``OUTPUT_DIR/results.json`` (accuracy, macro precision/recall/F1, AUC, per-class table,
confusion matrix, the paper's figure), ``results.md``, ``confusion.png``, ``roc.png``,
``config.json`` (the resolved config) and ``log.jsonl`` (one record per epoch). With ``--cv``
each fold/split runs in ``OUTPUT_DIR/<split>/`` and the top level holds the mean ± std.

Recipe (facebookresearch/mae ``main_finetune.py`` / ``engine_finetune.py``): AdamW with
lr = blr x batch / 256, layer-wise lr decay for a pretrained ViT, drop path, per-step linear
warmup then half-cosine decay, label smoothing, optional mixup/cutmix (timm), optional
class-balanced loss or sampling, bf16 autocast on GPU, model selection on a validation split
carved from train by patient group, fixed seeds. The encoder is built with ``global_pool="avg"``
(mean of patch tokens -> ``fc_norm`` -> head) and the head starts at trunc_normal(std=2e-5).

The package: ``models`` (what is trained), ``engine`` (the steps), ``report`` (what is written),
``checkpoint`` (``--resume``), ``dist`` (ranks), ``tasks`` / ``metrics`` (data and scores); this
module wires them into one run. Python use: :func:`run_finetune` (a :class:`FinetuneConfig` ->
the results dict), and :func:`finetune` / :func:`linear_probe` on in-memory
``(image array, label, group)`` records.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import random
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dali_pipes.finetune_torch import TransformConfig, build_finetune_loader, class_balanced_weights, dali_module
from finetune import metrics as M
from finetune.checkpoint import FinetuneCheckpoints, rng_state, set_rng_state
from finetune.config import FT_BLR, PROBE_BLR, FinetuneConfig, config_from_args
from finetune.dist import DistContext, dist_context, shutdown
from finetune.engine import EpochTotals, build_optimizer, evaluate, train_one_epoch, wrap_ddp
from finetune.models import ModelBundle, build_model
from finetune.report import aggregate_runs, json_ready, paper_figures, results_markdown, versions, write_run
from finetune.tasks import TASKS, DatasetFormatError, Record, Split, TaskData, group_split, load_task
from runconfig import save_yaml
from trainer.distributed import rank
from trainer.precision import resolve_precision

log = logging.getLogger("finetune.runner")


def resolve_config(cfg: FinetuneConfig, bundle: ModelBundle | None = None, world_size: int = 1) -> FinetuneConfig:
    """Copy of ``cfg`` with mode-dependent defaults and the model's size/channels filled in.

    ``batch_size`` is per rank (MAE's convention); the default lr scales with the global batch
    ``batch_size x world_size``, so N ranks at batch b train like one rank at batch N*b."""
    c = copy.deepcopy(cfg)
    probe = c.linear_probe
    c.blr = c.blr if c.blr is not None else (PROBE_BLR if probe else FT_BLR)
    c.lr = c.lr if c.lr is not None else c.blr * c.batch_size * world_size / 256
    c.weight_decay = c.weight_decay if c.weight_decay is not None else (0.0 if probe else 0.05)
    c.label_smoothing = c.label_smoothing if c.label_smoothing is not None else (0.0 if probe else 0.1)
    if probe:
        c.mixup = c.cutmix = 0.0  # MAE linprobe: no mixup / cutmix / smoothing
    if c.epochs > 0 and c.warmup_epochs >= c.epochs:  # a short run would never reach its lr
        log.warning("warmup (%s epochs) >= epochs (%s): warming up for %s instead", c.warmup_epochs, c.epochs,
                    c.epochs / 10)
        c.warmup_epochs = c.epochs / 10
    if bundle is not None:
        c.img_size, c.in_chans = bundle.img_size, bundle.in_chans
    return c


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _score(metric: str, m: dict, loss: float) -> float:
    if metric == "loss":
        return -loss
    v = m.get(metric)
    return -math.inf if v is None else float(v)


def _fingerprint(cfg: FinetuneConfig, ctx: DistContext) -> dict:
    """The settings a checkpoint must agree on to be resumed (not paths, progress or I/O knobs)."""
    skip = {"resume", "output_dir", "progress", "workers", "save_every", "save_every_steps", "keep_checkpoints",
            "save_model", "data_root", "device"}
    return {**{k: v for k, v in asdict(cfg).items() if k not in skip}, "world_size": ctx.world_size}


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().to("cpu", copy=True) for n, t in model.state_dict().items()}


def _mixup(cfg: FinetuneConfig, num_classes: int):
    """timm's batch mixup/cutmix (it also smooths the labels), or None when both are off."""
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                 num_classes=num_classes, prob=cfg.mixup_prob, switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode)


@dataclass
class _Best:
    """The epoch selected on validation so far (the last epoch until a validation picks one)."""

    epoch: int  # 0-based
    score: float = -math.inf
    val: dict | None = None  # its headline validation metrics and loss
    state: dict[str, torch.Tensor] | None = None  # its weights, on CPU

    def to_state(self) -> dict:
        """The checkpoint's JSON view (the weights go to their own file)."""
        return {"best_score": None if self.score == -math.inf else self.score,
                "best_epoch": self.epoch if self.state is not None else None, "best_val": self.val}


class _Fit:
    """One train / select / test run on every rank: built in ``__init__`` (model, loaders,
    optimizer, checkpoints), then :meth:`resume`, :meth:`train`, :meth:`test`, in that order (the
    random streams are drawn in that order, which keeps runs and resumed runs identical)."""

    def __init__(self, train: Sequence[Record], val: Sequence[Record], test: Sequence[Record],
                 class_names: list[str], cfg: FinetuneConfig, out_dir: Path | None, meta: dict | None):
        self.t0 = time.time()
        dali_module(cfg.loader)  # fail before any training if the asked-for loader is missing
        self.ctx = ctx = dist_context(cfg.device)
        self.requested_precision = cfg.precision
        precision, self.precision_reason = resolve_precision(cfg.precision, ctx.device)
        if ctx.is_main:
            log.info("precision %s (%s); %d rank(s)%s on %s", precision, self.precision_reason, ctx.world_size,
                     f" ({ctx.backend})" if ctx.distributed else "", ctx.device)
        seed_everything(cfg.seed + ctx.rank)  # rank 0 draws what a one-rank run draws; DDP broadcasts its weights
        self.train_set, self.val_set, self.test_set = train, val, test
        self.class_names, self.k, self.meta = class_names, len(class_names), meta
        self.main_dir = out_dir if ctx.is_main else None  # only rank 0 writes the run's files
        if self.main_dir is not None:
            self.main_dir.mkdir(parents=True, exist_ok=True)
        with ctx.main_first():  # e.g. exporting a checkpoint --init once, then reading it on every rank
            self.bundle = build_model(cfg, self.k, work_dir=out_dir)
        self.cfg = cfg = resolve_config(cfg, self.bundle, world_size=ctx.world_size)
        cfg.precision = precision
        self.model = self.bundle.model.to(ctx.device)
        self._build_loaders()
        ctx.check_same(len(self.train_loader), "training steps per epoch")
        self.optimizer = build_optimizer(self.bundle, cfg, ctx.device)
        self.step_model = wrap_ddp(self.model, cfg, ctx)
        self.mixup_fn = _mixup(cfg, self.k)
        self.best = _Best(epoch=cfg.epochs - 1)
        self.records: list[dict] = []  # log.jsonl
        self.start_epoch, self.start_step, self.totals = 0, 0, EpochTotals()
        self.ckpts = None
        if out_dir is not None and (cfg.save_every > 0 or cfg.save_every_steps > 0 or cfg.resume):
            self.ckpts = FinetuneCheckpoints(out_dir / "checkpoints", ctx, cfg.keep_checkpoints)
        self.fingerprint = _fingerprint(cfg, ctx)
        self.resumed_from: Path | None = None

    def _build_loaders(self) -> None:
        """Train (augmented, or the probe's view; class-balanced sampling if asked), val and test
        loaders over this rank's share, and the class weights of a class-balanced loss."""
        cfg, ctx, b = self.cfg, self.ctx, self.bundle
        tcfg = TransformConfig(img_size=b.img_size, in_chans=b.in_chans, mean=b.mean, std=b.std,
                               crop_min=cfg.crop_min, reprob=cfg.reprob, randaug_ops=cfg.randaug_ops,
                               randaug_magnitude=cfg.randaug_magnitude, aug=cfg.aug, auto_augment=cfg.auto_augment,
                               interpolation=cfg.interpolation, re_mode=cfg.re_mode, re_count=cfg.re_count,
                               hflip=cfg.hflip, rotate_deg=cfg.rotate_deg, crop_pct=cfg.crop_pct)
        labels = [r.label for r in self.train_set]
        cw = class_balanced_weights(labels, self.k)
        sample_w = cw[np.asarray(labels)] if cfg.balanced == "sampler" else None
        self.class_weight = (torch.tensor(cw, dtype=torch.float32, device=ctx.device) if cfg.balanced == "loss"
                             else None)
        common = {"batch_size": cfg.batch_size, "tcfg": tcfg, "loader": cfg.loader, "seed": cfg.seed,
                  "workers": cfg.workers, "device": ctx.device, "rank": ctx.rank, "world_size": ctx.world_size}
        probe_mode = "probe" if cfg.probe_augment else "eval"
        self.global_batch = cfg.batch_size * ctx.world_size
        self.train_loader = build_finetune_loader(self.train_set, train=True,
                                                  mode=probe_mode if cfg.linear_probe else "train",
                                                  sample_weights=sample_w,
                                                  drop_last=len(self.train_set) > self.global_batch, **common)
        self.val_loader = build_finetune_loader(self.val_set, train=False, **common) if self.val_set else None
        self.test_loader = build_finetune_loader(self.test_set, train=False, **common)

    # -- checkpoints
    def resume(self) -> None:
        """Continue from ``cfg.resume`` (model, optimizer, loader position, RNG, log, best epoch);
        then (re)start ``log.jsonl`` with the records so far."""
        cfg, ctx = self.cfg, self.ctx
        self.resumed_from = self.ckpts.find(cfg.resume) if self.ckpts is not None else None
        if self.resumed_from is not None:
            st, rank_st, best_w = self.ckpts.load(self.resumed_from, model=self.model, optimizer=self.optimizer,
                                                  fingerprint=self.fingerprint)
            self.start_epoch, self.start_step = int(st["epoch"]), int(st["step"])
            self.records = list(st["log"])
            self.best = _Best(epoch=cfg.epochs - 1 if st["best_epoch"] is None else st["best_epoch"],
                              score=-math.inf if st["best_score"] is None else st["best_score"],
                              val=st["best_val"], state=best_w)
            if rank_st is not None:  # None: a finished run, only re-scored
                self.train_loader.load_state_dict(rank_st["loader"])
                self.totals = EpochTotals(float(rank_st["loss_sum"]), int(rank_st["seen"]))
                set_rng_state(rank_st["rng"])  # last: nothing after it draws before training continues
            if ctx.is_main:
                log.info("resumed from %s (epoch %d, step %d)", self.resumed_from, self.start_epoch, self.start_step)
        if self.main_dir is not None:  # a fresh run starts a fresh log; a resumed one its saved records
            (self.main_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def _save(self, epoch_done: int, step: int, tot: EpochTotals) -> Path:
        state = {"fingerprint": self.fingerprint, "log": self.records, **self.best.to_state()}
        rank_state = {"rng": rng_state(), "loader": self.train_loader.state_dict(), "loss_sum": tot.loss_sum,
                      "seen": tot.seen}
        return self.ckpts.save(epoch_done, step, model=self.model, optimizer=self.optimizer, state=state,
                               rank_state=rank_state, best_weights=self.best.state)

    def _after_step(self, step: int, tot: EpochTotals, epoch: int) -> None:
        """Mid-epoch checkpoint every ``save_every_steps`` steps (the epoch's end saves its own)."""
        cfg = self.cfg
        if self.ckpts is not None and cfg.save_every_steps > 0 and step % cfg.save_every_steps == 0 \
                and step < len(self.train_loader):
            self._save(epoch, step, tot)

    def _after_epoch(self, epoch: int) -> None:
        cfg = self.cfg
        if self.ckpts is not None and (epoch + 1 == cfg.epochs
                                       or (cfg.save_every > 0 and (epoch + 1) % cfg.save_every == 0)):
            final = self._save(epoch + 1, 0, EpochTotals())
            if epoch + 1 == cfg.epochs:
                self.ckpts.finish(final)

    # -- training
    def train(self) -> None:
        """The remaining epochs: train, validate (select the best epoch), log, checkpoint."""
        cfg, ctx = self.cfg, self.ctx
        desc = f"{cfg.task} {self.meta.get('split', '') if self.meta else ''}".strip()
        bar = tqdm(range(self.start_epoch, cfg.epochs), desc=desc, disable=not (cfg.progress and ctx.is_main))
        for epoch in bar:
            stats = train_one_epoch(self.step_model, self.train_loader, self.optimizer, cfg, epoch, ctx.device, self.k,
                                    self.mixup_fn, self.class_weight, start_step=self.start_step, totals=self.totals,
                                    ctx=ctx, after_step=lambda s, t, e=epoch: self._after_step(s, t, e))
            self.start_step, self.totals = 0, EpochTotals()
            rec = {"epoch": epoch + 1, "train_loss": stats["loss"], "lr": stats["lr"], "steps": stats["steps"]}
            if self.val_loader is not None:
                rec = self._validate(epoch, rec)
            self.records.append(rec)
            bar.set_postfix(loss=f"{stats['loss']:.3f}",
                            **({"val_f1": f"{rec['val_f1']:.3f}"} if "val_f1" in rec else {}))
            if self.main_dir is not None:
                with (self.main_dir / "log.jsonl").open("a") as fh:
                    fh.write(json.dumps(rec) + "\n")
            self._after_epoch(epoch)

    def _validate(self, epoch: int, rec: dict) -> dict:
        """Score ``epoch`` on the validation set; rank 0 decides whether it is the best so far and
        every rank gets the decision (and keeps that epoch's weights). Returns ``rec`` with the
        validation metrics."""
        cfg, ctx = self.cfg, self.ctx
        is_best, val_best = False, None
        res = evaluate(self.model, self.val_loader, len(self.val_set), cfg, ctx.device, ctx, self.k, "validation")
        if res is not None:
            vp, vy, vloss = res
            vm = M.classification_metrics(vy, vp, self.class_names)
            rec.update({"val_loss": vloss, **{f"val_{m}": vm[m] for m in M.HEADLINE}})
            score = _score(cfg.select_metric, vm, vloss)
            is_best = score > self.best.score  # strictly better: ties keep the earlier epoch
            val_best = (score, {**{m: vm[m] for m in M.HEADLINE}, "loss": vloss})
        rec, is_best, val_best = ctx.broadcast((rec, is_best, val_best if is_best else None))
        if is_best:
            self.best = _Best(epoch=epoch, score=val_best[0], val=val_best[1], state=_cpu_state(self.model))
        return rec

    # -- scoring
    def test(self) -> dict:
        """Score the selected epoch's weights on the test set; rank 0 builds the results dict and
        writes the run's files, every rank returns it."""
        cfg, ctx = self.cfg, self.ctx
        if self.best.state is not None:
            self.model.load_state_dict(self.best.state)
        res = evaluate(self.model, self.test_loader, len(self.test_set), cfg, ctx.device, ctx, self.k, "test")
        results = None
        if res is not None:
            probs, y, test_loss = res
            results = self._results(M.classification_metrics(y, probs, self.class_names), test_loss)
            if self.main_dir is not None:
                write_run(self.main_dir, results, y, probs, ids=[r.name for r in self.test_set])
                if cfg.save_model:
                    from safetensors.torch import save_file

                    save_file({n: t.contiguous() for n, t in self.model.state_dict().items()},
                              str(self.main_dir / "model_best.safetensors"))
            results["_pred"] = (y, probs)
        return ctx.broadcast(results)  # every rank returns what rank 0 computed

    def _results(self, metrics: dict, test_loss: float) -> dict:
        cfg, ctx, spec = self.cfg, self.ctx, TASKS.get(self.cfg.task)
        return {
            "task": cfg.task, "title": spec.title if spec else cfg.task, **(self.meta or {}),
            "mode": "linear_probe" if cfg.linear_probe else "finetune", "model": self.bundle.name,
            "class_names": list(self.class_names), "n_train": len(self.train_set), "n_val": len(self.val_set),
            "n_test": len(self.test_set), **metrics, "test_loss": test_loss, "best_epoch": self.best.epoch + 1,
            "selected_by": f"val {cfg.select_metric}" if self.val_set else "last epoch", "val": self.best.val,
            "paper": paper_figures(cfg.task), "elapsed_s": round(time.time() - self.t0, 2),
            # (the key "precision" is the metric; cfg.precision below holds the resolved choice too)
            "compute_precision": {"requested": self.requested_precision, "used": cfg.precision,
                                  "reason": self.precision_reason},
            "distributed": {"world_size": ctx.world_size, "backend": ctx.backend, "batch_per_rank": cfg.batch_size,
                            "global_batch": self.global_batch, "steps_per_epoch": len(self.train_loader),
                            "resumed_from": str(self.resumed_from) if self.resumed_from is not None else None},
            "config": asdict(cfg), "encoder": self.bundle.info.get("encoder"), "versions": versions(),
        }


def fit_and_evaluate(train: Sequence[Record], val: Sequence[Record], test: Sequence[Record], class_names: list[str],
                     cfg: FinetuneConfig, out_dir: Path | None = None, meta: dict | None = None) -> dict:
    """Train on ``train``, select the epoch on ``val`` (last epoch if empty), score on ``test``.

    Under torchrun every rank calls this with the same arguments: each trains on its share of
    every global batch (DDP), evaluates its share of val/test, and rank 0 gathers the
    predictions, computes the metrics once and writes the run's files into ``out_dir``. With
    ``cfg.save_every``/``save_every_steps`` checkpoints go to ``out_dir/checkpoints`` and
    ``cfg.resume`` continues from one. Returns the results dict on every rank; the test
    predictions ride along under the private key ``_pred`` ((labels, probs) arrays) for pooling
    and are never written to results.json."""
    run = _Fit(train, val, test, class_names, cfg, out_dir, meta)
    run.resume()
    run.train()
    return run.test()


def _run_splits(data: TaskData, cfg: FinetuneConfig) -> dict:
    out = Path(cfg.output_dir).expanduser() if cfg.output_dir else None
    runs = []
    for split in data.splits:
        train, val = group_split(split.train, cfg.val_fraction, cfg.seed)
        run_dir = None if out is None else (out / split.name if len(data.splits) > 1 else out)
        runs.append(fit_and_evaluate(train, val, split.test, data.class_names, cfg, run_dir,
                                     meta={"split": split.name, "data_root": str(data.root)}))
    result = runs[0] if len(runs) == 1 else aggregate_runs(runs, out)
    if out is not None and rank() == 0:
        resolved = dict(runs[0]["config"])
        (out / "config.json").write_text(json.dumps(resolved, indent=2, default=str))
        save_yaml(cfg, out / "config.yaml")  # the run's FinetuneConfig: `--config config.yaml` replays it
    return result


def run_finetune(cfg: FinetuneConfig) -> dict:
    """Load ``cfg.task`` from ``cfg.data_root``, run the split(s), write the reports to
    ``cfg.output_dir``; returns the results dict (what results.json holds)."""
    if cfg.data_root is None:
        raise ValueError("--data-root is required")
    if cfg.cv and cfg.split is not None:
        raise ValueError("--cv runs every split; do not combine it with --split")
    data = load_task(cfg.task, cfg.data_root, split=cfg.split, cv=cfg.cv, kfold=cfg.folds,
                     test_fraction=cfg.test_fraction, seed=cfg.seed)
    return json_ready(_run_splits(data, cfg))


def _as_records(items: Iterable) -> list[Record]:
    out = []
    for i, it in enumerate(items):
        if isinstance(it, Record):
            out.append(it)
            continue
        img, label, *rest = it
        group = str(rest[0]) if rest else f"item{i}"
        if isinstance(img, (str, Path)):
            out.append(Record(Path(img), int(label), group))
        else:
            out.append(Record(None, int(label), group, image=np.asarray(img)))
    return out


def finetune(train: Iterable, test: Iterable, cfg: FinetuneConfig | None = None, *, val: Iterable | None = None,
             class_names: Sequence[str] | None = None, **overrides) -> dict:
    """Fine-tune on in-memory records and score on ``test`` — no files needed.

    train, test, val: :class:`Record`s or ``(image, label, group)`` tuples, ``image`` an (H, W)
        uint8 array (or (H, W, 3)) or a file path; ``group`` (patient) is optional.
    cfg / overrides: a :class:`FinetuneConfig` and/or its fields (``init``, ``epochs``, ...);
        ``output_dir`` stays None unless given (then the usual reports are written there).
    val: model-selection set; default: ``cfg.val_fraction`` of ``train`` carved out by group.

    Returns the results dict (metrics as in results.json)."""
    cfg = copy.deepcopy(cfg) if cfg is not None else FinetuneConfig(task="memory", workers=0, progress=False)
    for k, v in overrides.items():
        if k not in {f.name for f in fields(FinetuneConfig)}:
            raise TypeError(f"unknown FinetuneConfig field {k!r}")
        setattr(cfg, k, v)
    tr, te = _as_records(train), _as_records(test)
    if val is None:
        tr, va = group_split(tr, cfg.val_fraction, cfg.seed)
    else:
        va = _as_records(val)
    k = 1 + max(r.label for r in [*tr, *va, *te])
    names = list(class_names) if class_names is not None else [str(i) for i in range(max(k, 2))]
    if len(names) < k:
        raise ValueError(f"{len(names)} class names for labels up to {k - 1}")
    data = TaskData(cfg.task, names, Path("."), [Split("memory", tr, te)])
    out = Path(cfg.output_dir).expanduser() if cfg.output_dir else None
    res = fit_and_evaluate(tr, va, te, data.class_names, cfg, out, meta={"split": "memory"})
    if out is not None and rank() == 0:
        (out / "config.json").write_text(json.dumps(res["config"], indent=2, default=str))
    return json_ready(res)


def linear_probe(train: Iterable, test: Iterable, cfg: FinetuneConfig | None = None, **kw) -> dict:
    """:func:`finetune` with the encoder frozen (BatchNorm + linear head trained only)."""
    return finetune(train, test, cfg, linear_probe=True, **kw)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; under ``torchrun --nproc_per_node N -m finetune ...`` every rank
    runs it and rank 0 prints and writes."""
    cfg = config_from_args(argv)
    ctx = dist_context(cfg.device)
    logging.basicConfig(level=logging.INFO if ctx.is_main else logging.WARNING,
                        format=f"%(levelname)s %(name)s{f' [rank {ctx.rank}]' if ctx.distributed else ''}: %(message)s")
    try:
        res = run_finetune(cfg)
    except (DatasetFormatError, FileNotFoundError) as e:  # a data/path problem: the message says it all
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        shutdown()
    if ctx.is_main:
        print(results_markdown(res))
        print(f"\nwrote {Path(cfg.output_dir) / 'results.json'}")
    return 0
