"""Throughput of every stage, each beside its baseline from the same run (design §4).

    python benchmarks/throughput.py [shard] [loader] [train] [--quick] [--json PATH] [--device cpu|cuda]

shard  : `usf-shard build` frames/s vs just decoding the same inputs (decode_bound); ms per frame
         of each extract step (decode, curate, pHash, encode, hash + stats); peak RSS at two
         corpus sizes (x0.5, x4); 1 vs 2 workers.
loader : DALI pretrain pipeline vs the PyTorch pipeline a user would write (webdataset's own decode,
         shuffle and batching + torchvision v2 RandomResizedCrop/flip/normalise in a WebLoader, same
         workers) vs DALI decode-only (the bound), equal threads; the project's own PyTorch loader
         (exact resume) beside them; plus the DALI cost ladder (crop decode, + resize). A shard set
         with fewer shards than reader threads sizes the PyTorch workers to the shards (and says so).
train  : MAE step as trainer/pretrain.py runs it (DeepSpeed engine, its kernels, precision auto)
         vs the same model eager (torch AdamW foreach, per-step .item(), eager attention) and vs
         facebookresearch/mae's plain loop (benchmarks/reference_mae.py), same process, alternating
         rounds; MFU against a peak in the precision used (never > 1). On CPU also the contention
         figure: demo pretraining img/s with one busy process beside it, as a ratio to idle.
With no data given, a phantom corpus is generated and built in a temp dir.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import importlib.util
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.env import setup_env  # noqa: E402

setup_env()

import torch  # noqa: E402


# ------------------------------------------------------------------ shard
def _inputs(raw: Path) -> Iterator[tuple[Path, str]]:
    """(path, format) of every readable input of a quick-mode corpus, in the build's order."""
    from sharder.config import quick_datasets
    from sharder.readers import detect_format

    for spec in quick_datasets([raw]):
        for p in sorted(Path(spec.root).rglob("*")):
            fmt = detect_format(p) if p.is_file() else None
            if fmt is not None:
                yield p, fmt


def _decode_bound(raw: Path) -> tuple[int, float]:
    """Frames/s of reading + decoding every input, nothing else (the sharder's upper bound)."""
    from sharder.frames import InputRejected, ReaderOptions
    from sharder.readers import iter_frames

    n, t = 0, time.perf_counter()
    for p, fmt in _inputs(raw):
        try:
            for _ in iter_frames(p, fmt, ReaderOptions()):
                n += 1
        except InputRejected:
            pass
    return n, time.perf_counter() - t


_GATE_FRAMES = 12  # frames the text-gate cost is measured on (~0.1-0.4 s each on one core)


def _stage_costs(raw: Path) -> dict[str, float]:
    """Where a build's per-frame time goes, one core: ms per written frame of each stage of the
    build's own per-frame step (sharder/frame_step.py: read + decode, crop + curate, pHash,
    encode, pixel hash + statistics), on the same inputs, with the build's single-threaded
    OpenCV and its curation defaults (the text gate is measured apart, below)."""
    from sharder.build import one_cv2_thread
    from sharder.curate import CurateOptions
    from sharder.frame_step import STAGES, FrameStep, Sample, StageClock
    from sharder.frames import InputRejected, ReaderOptions

    clock = StageClock()
    n = 0
    gated: list = []
    with one_cv2_thread():  # as in the build's workers
        for p, fmt in _inputs(raw):
            step = FrameStep(fmt, CurateOptions(), codec="jpg", jpeg_quality=95, clock=clock)
            try:
                for smp in step.samples(p, ReaderOptions()):
                    if not isinstance(smp, Sample):
                        continue  # dropped by curation
                    n += 1
                    if len(gated) < _GATE_FRAMES:
                        gated.append(smp.cur.image)
            except InputRejected:
                pass
    acc = {k: clock.seconds[k] for k in STAGES}
    out = {k: 1000.0 * v / max(n, 1) for k, v in acc.items()}
    # text gate (sharder/textgate.py): ms per CHECKED frame, on the first curated frames (a
    # build checks every still and first/middle/last/every 16th/box-changed frame of a cine)
    if importlib.util.find_spec("rapidocr_onnxruntime") is not None and gated:
        from sharder.textgate import detector

        det = detector()
        det.detect(gated[0])  # session warm-up, paid once per worker
        t = time.perf_counter()
        for img in gated:
            det.detect(img)
        out["text_gate"] = 1000.0 * (time.perf_counter() - t) / len(gated)
    return out


_BUILD_CHILD = """
import json, resource, sys, time
from sharder.build import build
from sharder.config import BuildConfig, quick_datasets
t = time.perf_counter()
m = build(BuildConfig(datasets=quick_datasets([sys.argv[1]]), text_policy="off"), sys.argv[2], workers=int(sys.argv[3]), progress=False)
secs = time.perf_counter() - t
print(json.dumps({"totals": m["totals"], "secs": secs}))
"""


def _build_in_child(raw: Path, out: Path, workers: int) -> tuple[dict, float, float]:
    """Runs a build in a fresh interpreter (the sharder's own memory, not this process's torch);
    returns (totals, seconds of the build itself, peak RSS MiB summed over the build process and
    its workers, sampled every 20 ms with psutil; ru_maxrss would report this parent's peak, which
    Linux carries across fork+exec)."""
    import subprocess

    import psutil

    proc = subprocess.Popen([sys.executable, "-c", _BUILD_CHILD, str(raw), str(out), str(workers)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, sum(p.memory_info().rss for p in [ps, *ps.children(recursive=True)]))
        except psutil.Error:
            pass
        time.sleep(0.02)
    out_text = proc.stdout.read()
    if proc.returncode != 0:
        raise RuntimeError(f"build failed in the benchmark child (exit {proc.returncode})")
    r = json.loads(out_text.strip().splitlines()[-1])
    return r["totals"], r["secs"], peak / 2**20


def bench_shard(tmp: Path, quick: bool) -> list[dict]:
    from phantom import write_demo_corpus

    res = []
    scales = (0.5,) if quick else (0.5, 4.0)  # RSS must stay flat over 8x the frames
    for scale in scales:
        raw = tmp / f"raw_{scale}"
        write_demo_corpus(raw, seed=0, scale=scale)
        # best of 2: the first pass also pays one-time imports (pydicom handlers, PyAV, nibabel)
        # and cold file caches, which the build's figure does not include either (it runs second)
        n_dec, t_dec = min((_decode_bound(raw) for _ in range(2)), key=lambda r: r[1])
        dec = n_dec / t_dec
        res.append({"section": "shard", "name": "decode_bound", "unit": "frames/s", "value": dec,
                    "baseline": None, "ratio": None, "scale": scale, "frames": n_dec})
        if scale == scales[0]:
            costs = _stage_costs(raw)
            for k, ms in costs.items():
                res.append({"section": "shard", "name": f"ms_per_frame:{k}", "unit": "ms/frame", "value": ms,
                            "baseline": None, "ratio": None, "scale": scale,
                            "share_of_decode": ms / costs["decode"]})
        one = None
        for workers in (1, 2):
            totals, secs, rss = _build_in_child(raw, tmp / f"shards_{scale}_{workers}", workers)
            fps = totals["frames"] / secs
            one = one or fps
            res.append({"section": "shard", "name": "build" if workers == 1 else "build_2workers",
                        "unit": "frames/s", "value": fps, "baseline": "decode_bound", "ratio": fps / dec,
                        "workers": workers, "scale": scale, "frames": totals["frames"],
                        "peak_rss_mib": rss, "scaling_vs_1_worker": fps / one,
                        # the phantom burns labels into its images on purpose: the build runs with
                        # text_policy off; the gate's own cost is the ms_per_frame:text_gate row
                        "text_policy": "off"})
    return res


# ------------------------------------------------------------------ loader
def _time_loader(it, batches: int, warmup: int) -> float:
    n = 0
    t = None
    for i, b in enumerate(it):
        if i == warmup:
            t = time.perf_counter()
        if i >= warmup:
            n += b.shape[0] if torch.is_tensor(b) else b["image"].shape[0]
        if i + 1 >= warmup + batches:
            break
    return n / (time.perf_counter() - t)


def _dali_stage(shards, opts, upto: str):
    """One rung of the DALI pipeline's cost ladder, same reader, threads and batch:
    ``decode`` (read + full decode: the bound), ``crop_decode`` (read + decode of the random crop
    only: what the pipeline decodes), ``crop_resize`` (+ resize to img_size). The full pipeline
    adds flip + normalise + CHW on top of the last."""
    import numpy as np
    from nvidia.dali import fn, pipeline_def, types

    from dali_pipes.shards import shard_set

    ss = shard_set(shards, "train", 1)
    gpu = opts.device == "gpu"
    dev = "mixed" if gpu else "cpu"

    @pipeline_def
    def pipe():
        jpeg = fn.readers.webdataset(paths=[str(p) for p in ss.paths], index_paths=[str(p) for p in ss.index_paths],
                                     ext=["jpg"], random_shuffle=True, initial_fill=opts.shuffle_buffer, seed=0)
        if upto == "decode":
            return fn.decoders.image(jpeg, device=dev, output_type=types.GRAY)
        img = fn.decoders.image_random_crop(jpeg, device=dev, output_type=types.GRAY, random_area=list(opts.scale),
                                            random_aspect_ratio=list(opts.ratio), num_attempts=10)
        if upto == "crop_decode":
            return img
        return fn.resize(img, size=[opts.img_size, opts.img_size], antialias=True)

    p = pipe(batch_size=opts.batch_size, num_threads=opts.num_threads, device_id=0 if gpu else None, seed=0)
    p.build()

    def gen():
        while True:
            (out,) = p.run()
            yield {"image": np.empty((len(out), 1))}
    return gen()


def _wds_loader(shards: Path, opts, workers: int):
    """The PyTorch pipeline a user would write, the baseline: webdataset's own shard reading,
    shuffle buffer, decoding (PIL, gray) and batching, with torchvision v2 RandomResizedCrop (the
    DALI pipeline's scale/ratio, bilinear + antialias), horizontal flip, to float and normalise
    (the manifest's pixel stats), in ``workers`` DataLoader processes (``wds.WebLoader``)."""
    import webdataset as wds
    from torchvision.transforms import v2

    from sharder.manifest import Manifest

    man = Manifest.load(shards)
    urls = [str(p) for p in man.shards("train")]
    st = man.data["pixel_stats"]
    tf = v2.Compose([v2.RandomResizedCrop(opts.img_size, scale=opts.scale, ratio=opts.ratio, antialias=True),
                     v2.RandomHorizontalFlip(opts.hflip), v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize([st["mean"]], [st["std"]])])
    ds = (wds.WebDataset(urls, shardshuffle=len(urls), empty_check=False)
          .shuffle(opts.shuffle_buffer).decode("pill").to_tuple("jpg").map_tuple(tf)
          .batched(opts.batch_size, partial=False)
          .repeat())  # each worker passes over its shards again and again (epochs)
    loader = wds.WebLoader(ds, batch_size=None, num_workers=workers)
    return (imgs for (imgs,) in loader)


def bench_loader(shards: Path, quick: bool, device: str) -> list[dict]:
    from dali_pipes import PretrainOptions, build_pretrain_loader
    from sharder.manifest import Manifest
    from trainer.threads import plan_threads

    threads = plan_threads(None, None, torch.device(device)).loader_threads
    bs = 32 if device == "cpu" else 256
    batches = 8 if quick else 30
    n_shards = len(Manifest.load(shards).shards("train"))
    # readers that own whole shards (DataLoader workers) cannot outnumber the shards
    readers = min(threads, n_shards)
    if readers < threads:
        print(f"loader: {shards} has {n_shards} train shard(s) for {threads} reader threads: the PyTorch "
              f"loaders run {readers} worker(s) (one shard each at least); DALI keeps {threads} threads")
    opts = PretrainOptions(batch_size=bs, num_threads=threads, device="gpu" if device == "cuda" else "cpu",
                           device_id=0 if device == "cuda" else None, shuffle_buffer=256)

    def endless(kind, o):
        ld = build_pretrain_loader(shards, o, kind=kind)
        while True:
            yield from ld

    dali = _time_loader(endless("dali", opts), batches, 2)
    tl = _time_loader(_wds_loader(shards, opts, readers), batches, 2)
    project = _time_loader(endless("torch", replace(opts, num_threads=readers)), batches, 2)
    ladder = {k: _time_loader(_dali_stage(shards, opts, k), batches, 2) for k in ("decode", "crop_decode", "crop_resize")}
    bound = ladder["decode"]
    common = {"unit": "images/s", "batch_size": bs, "threads": threads, "img_size": opts.img_size, "shards": n_shards}
    return [
        {"section": "loader", "name": "dali", "value": dali, "baseline": "torch", "ratio": dali / tl,
         "fraction_of_decode_bound": dali / bound, **common},
        {"section": "loader", "name": "torch", "value": tl, "baseline": None, "ratio": None, "workers": readers,
         "kernel": "webdataset (decode, shuffle, batch) + WebLoader + torchvision v2", **common},
        # the project's own PyTorch loader (exact resume, rank splits): what the contract costs
        {"section": "loader", "name": "torch_project", "value": project, "baseline": "torch",
         "ratio": project / tl, "workers": readers, "kernel": "dali_pipes.torch_loader", **common},
        {"section": "loader", "name": "dali_decode_only", "value": bound, "baseline": None, "ratio": None, **common},
        # the cost ladder: where the pipeline's time goes between the bound and the full pipeline
        {"section": "loader", "name": "dali_crop_decode", "value": ladder["crop_decode"], "baseline": None,
         "ratio": None, "fraction_of_decode_bound": ladder["crop_decode"] / bound, **common},
        {"section": "loader", "name": "dali_crop_resize", "value": ladder["crop_resize"], "baseline": None,
         "ratio": None, "fraction_of_decode_bound": ladder["crop_resize"] / bound, **common},
    ]


# ------------------------------------------------------------------ train
def _train_steps(kind: str, model_name: str, bs: int, device: torch.device, precision: str):
    """-> (step(), kernel description) for one MAE train step on a fixed batch (data excluded).

    fused    : what trainer/pretrain.py runs, built the same way (launch/ds.json through
               ``trainer.engine``: DeepSpeed engine, ZeRO-1, clipping, the kernels of
               ``trainer.kernels`` with ``--attention auto``, the non-finite check DeepSpeed
               does anyway, no per-step host sync of ours).
    baseline : the same model eager: plain loop, torch AdamW foreach, eager attention, clipping,
               ``.item()`` every step.
    reference: facebookresearch/mae's plain loop (benchmarks/reference_mae.py)."""
    from trainer.config import TrainConfig
    from trainer.kernels import attention_kernel, use_sdpa
    from trainer.model import MaskedAutoencoderViT, config_for
    from trainer.param_groups import weight_decay_groups
    from trainer.precision import torch_dtype

    dtype = torch_dtype(precision)
    if kind == "reference":
        from benchmarks.reference_mae import reference_step

        return reference_step(model_name, bs, device, dtype)
    torch.manual_seed(0)
    sdpa = use_sdpa("auto", kind == "fused", device, precision)
    cfg = config_for(model_name, fused_attn=sdpa)
    model = MaskedAutoencoderViT(cfg).to(device)
    x = torch.randn(bs, cfg.in_chans, cfg.img_size, cfg.img_size, device=device)
    if kind == "fused":
        from trainer.engine import build_ds_config, build_engine, read_ds_json

        tc = TrainConfig(model=model_name, batch_size=bs, precision=precision, tensorboard=False)
        ds, lr = build_ds_config(tc, read_ds_json(tc.deepspeed_config), 1, 1000)
        ds["steps_per_print"] = 10**9
        engine, _, kernel = build_engine(model, ds, lr, device)
        xx, gen = x.to(dtype), torch.Generator(device=device)
        stage = ds.get("zero_optimization", {}).get("stage", 0)

        def step():
            gen.manual_seed(0)  # pretrain.py's per-step masking noise
            noise = torch.rand(bs, cfg.num_patches, device=device, generator=gen)
            loss, _, _ = engine(xx, noise=noise)
            engine.backward(loss)
            engine.step()
            engine.was_step_applied()
            return loss
        return step, f"DeepSpeed ZeRO-{stage} + {kernel}, {attention_kernel(sdpa)}"
    opt = torch.optim.AdamW(weight_decay_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95), foreach=True)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss, _, _ = model(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        opt.step()
        loss.item()  # the per-step host sync of the reference engine
        return loss
    return step, "torch.optim.AdamW(foreach=True), eager attention, .item() per step"


def _step_rates(kinds: list[str], model_name: str, bs: int, steps: int, rounds: int, device: torch.device,
                precision: str) -> dict[str, dict]:
    """images/s of each kind, measured in the same process in alternating rounds (best round
    each: a shared machine's noise hits every kind alike)."""
    from trainer.flops import train_flops_per_image
    from trainer.model import config_for

    fns = {k: _train_steps(k, model_name, bs, device, precision) for k in kinds}
    for step, _ in fns.values():
        for _ in range(2):  # warm-up: oneDNN kernel selection, allocator, DeepSpeed buffers
            step()
    best = dict.fromkeys(kinds, float("inf"))
    for _ in range(rounds):
        for k, (step, _) in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(steps):
                loss = step()
            float(loss.detach())
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[k] = min(best[k], (time.perf_counter() - t) / steps)
    flops = train_flops_per_image(config_for(model_name))
    return {k: {"value": bs / best[k], "step_s": best[k], "kernel": fns[k][1], "tflops": bs / best[k] * flops / 1e12}
            for k in kinds}


_BUSY = "while True: pass"


def _demo_pretrain_rate(shards: Path, out: Path, steps: int, busy: bool) -> float:
    """Median images/s that trainer/pretrain.py logs on the demo settings (launch/demo.env),
    start-up excluded; ``busy``: one process spinning on a core beside it the whole time."""
    import socket
    import statistics
    import subprocess

    from benchmarks.proof_curve import demo_env

    demo = demo_env()
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "trainer" / "pretrain.py"), "--deepspeed_config", str(root / "launch" / "ds.json"),
           "--data", str(shards), "--output-dir", str(out), "--model", demo.get("MODEL", "mae_vit_demo_patch8"),
           "--img-size", demo.get("IMG_SIZE", "64"), "--batch-size", demo.get("BATCH", "16"), "--blr", demo.get("BLR", "8e-3"),
           "--warmup-steps", "10", "--max-steps", str(steps), "--log-every", str(max(1, steps // 8)),
           "--no-tensorboard", "--no-recon-every-epoch"]
    # a process group of its own: not this process's (setup_env's port is bound by the train steps)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        env.update(PYTHONUNBUFFERED="1", MASTER_PORT=str(sk.getsockname()[1]))
    hog = subprocess.Popen([sys.executable, "-c", _BUSY]) if busy else None
    try:
        p = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=1800, env=env)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    if p.returncode != 0:
        raise RuntimeError(f"demo pretraining failed in the contention benchmark:\n{p.stderr[-3000:]}")
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["images_per_s"] for r in recs[2:] or recs)  # first records: start-up, governor settling


def bench_contention(shards: Path, tmp: Path, quick: bool) -> list[dict]:
    """Demo pretraining with one busy process beside it, as a ratio to idle (2 cores: ideal 0.5)."""
    steps = 400 if quick else 1200
    idle = _demo_pretrain_rate(shards, tmp / "contention_idle", steps, busy=False)
    busy = _demo_pretrain_rate(shards, tmp / "contention_busy", steps, busy=True)
    cores = os.cpu_count() or 1
    return [{"section": "train", "name": "contention", "unit": "images/s", "value": busy, "baseline": "idle",
             "ratio": busy / idle, "idle_images_per_s": idle, "ideal_ratio": (cores - 1) / cores,
             "model": "demo (launch/demo.env)", "steps": steps, "kernel": "trainer/pretrain.py, one busy process beside it"}]


def bench_train(quick: bool, device: str, shards: Path | None = None, tmp: Path | None = None) -> list[dict]:
    from trainer.flops import mfu, peak_tflops
    from trainer.precision import resolve_precision, torch_dtype

    dev = torch.device("cuda" if device == "cuda" else "cpu")
    precision, why = resolve_precision("auto", dev)
    print(f"train: precision {precision} ({why})")
    if dev.type == "cuda":
        model, bs, steps, rounds = "mae_vit_base_patch16", 256, 5 if quick else 20, 2
    else:
        model, bs, steps, rounds = ("mae_vit_demo_patch16", 16, 3, 2) if quick else ("mae_vit_small_patch16", 32, 2, 3)
    peak, src = peak_tflops(dev, torch_dtype(precision))
    rates = _step_rates(["fused", "baseline", "reference"], model, bs, steps, rounds, dev, precision)
    common = {"unit": "images/s", "model": model, "batch_size": bs, "dtype": precision, "precision_reason": why,
              "peak_source": src}
    out = []
    for name, base in (("fused", "baseline"), ("baseline", None), ("reference", None)):
        r = rates[name]
        m, p = mfu(r["tflops"], peak)
        out.append({"section": "train", "name": name, **r, "baseline": base,
                    "ratio": r["value"] / rates[base]["value"] if base else None,
                    "ratio_vs_reference": r["value"] / rates["reference"]["value"], "mfu": m, "peak_tflops": p, **common})
    if shards is not None and dev.type == "cpu":
        out += bench_contention(shards, tmp, quick)
    return out


# ------------------------------------------------------------------ main
def _phantom_shards(tmp: Path) -> Path:
    """A small phantom corpus built into shards (64 samples each) for the loader and train sections."""
    from sharder.build import build
    from sharder.config import BuildConfig, quick_datasets
    from phantom import write_demo_corpus

    raw = tmp / "loader_raw"
    write_demo_corpus(raw, seed=1, scale=0.5)
    shards = tmp / "loader_shards"
    build(BuildConfig(datasets=quick_datasets([raw]), shard_max_samples=64, text_policy="off"), shards, progress=False)
    return shards


def machine() -> dict:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version()}


def versions() -> dict:
    v = {"torch": torch.__version__}
    for name, mod in (("dali", "nvidia.dali"), ("deepspeed", "deepspeed"), ("timm", "timm")):
        try:
            v[name] = __import__(mod, fromlist=["__version__"]).__version__
        except Exception:
            v[name] = None
    return v


def table(results: list[dict]) -> str:
    rows = [("section", "name", "value", "unit", "vs", "ratio", "notes")]
    for r in results:
        notes = []
        for k in ("fraction_of_decode_bound", "mfu", "scaling_vs_1_worker", "share_of_decode", "ratio_vs_reference",
                  "ideal_ratio"):
            if r.get(k) is not None:
                notes.append(f"{k}={r[k]:.2f}")
        for k in ("peak_rss_mib", "step_s", "tflops", "idle_images_per_s"):
            if r.get(k) is not None:
                notes.append(f"{k}={r[k]:.3g}")
        for k in ("batch_size", "threads", "img_size", "workers", "scale", "model", "dtype", "kernel"):
            if r.get(k) is not None:
                notes.append(f"{k}={r[k]}")
        rows.append((r["section"], r["name"], f"{r['value']:.3g}" if r["value"] < 100 else f"{r['value']:.0f}", r["unit"], r.get("baseline") or "",
                     f"{r['ratio']:.2f}x" if r.get("ratio") else "", " ".join(notes)))
    w = [max(len(x[i]) for x in rows) for i in range(6)]
    return "\n".join("  ".join(x[i].ljust(w[i]) for i in range(6)) + "  " + x[6] for x in rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sections", nargs="*", default=[], help="shard | loader | train (default: all)")
    p.add_argument("--quick", action="store_true", help="small sizes (the demo and CI)")
    p.add_argument("--json", default="benchmarks/results/latest.json")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shards", help="existing shard dir for the loader section and the contention figure")
    p.add_argument("--note", help="free text saved in the JSON (e.g. 'shared machine, under load')")
    p.add_argument("--contention", action=argparse.BooleanOptionalAction, default=True,
                   help="train on CPU: demo pretraining beside one busy process vs idle (two trainer runs)")
    a = p.parse_args(argv)
    sections = a.sections or ["shard", "loader", "train"]
    bad = sorted(set(sections) - {"shard", "loader", "train"})
    if bad:
        p.error(f"unknown section(s) {bad}: choose from shard, loader, train")
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        if "shard" in sections:
            results += bench_shard(tmp, a.quick)
        shards = Path(a.shards) if a.shards else None
        if shards is None and ("loader" in sections or ("train" in sections and a.contention)):
            shards = _phantom_shards(tmp)
        if "loader" in sections:
            results += bench_loader(shards, a.quick, a.device)
        if "train" in sections:
            results += bench_train(a.quick, a.device, shards if a.contention else None, tmp)
    out = {"machine": machine(), "versions": versions(), "quick": a.quick, "note": a.note, "results": results}
    print(table(results))
    print(f"machine: {out['machine']}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1))
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
