"""FLOPs per image and MFU, computed in the open (nanoGPT style).

Counts matmul FLOPs (2 per multiply-add) of one MAE forward pass, then x3 for forward+backward
(backward ~ 2x forward). Norms, softmax, GELU and the loss are ignored (<2% for ViTs).
With T tokens of width D, one transformer block costs
    qkv 6TD^2 + attention scores 2T^2D + attention x V 2T^2D + proj 2TD^2 + MLP 4*r*TD^2
"""
from __future__ import annotations

import time

import torch

from .model import MAEConfig

# dense peaks, TFLOP/s (vendor datasheets, no sparsity): bf16 tensor cores, and plain fp32 (no
# TF32: torch leaves ``allow_tf32`` off for matmuls by default)
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0,
                   "V100": 125.0, "RTX 4090": 165.0, "A6000": 155.0}
GPU_PEAK_TFLOPS_FP32 = {"H200": 67.0, "H100": 67.0, "A100": 19.5, "L40S": 91.6, "A10": 31.2,
                        "V100": 15.7, "RTX 4090": 82.6, "A6000": 38.7}


def block_flops(tokens: int, dim: int, mlp_ratio: float) -> float:
    t, d = tokens, dim
    return 6 * t * d * d + 4 * t * t * d + 2 * t * d * d + 4 * mlp_ratio * t * d * d


def mae_forward_flops(cfg: MAEConfig, mask_ratio: float | None = None) -> float:
    r = cfg.mask_ratio if mask_ratio is None else mask_ratio
    n = cfg.num_patches
    visible = int(n * (1 - r))
    pix = cfg.patch_size**2 * cfg.in_chans
    f = 2 * n * pix * cfg.embed_dim  # patch embedding runs on all patches
    f += cfg.depth * block_flops(1 + visible, cfg.embed_dim, cfg.mlp_ratio)
    f += 2 * (1 + visible) * cfg.embed_dim * cfg.decoder_embed_dim
    f += cfg.decoder_depth * block_flops(1 + n, cfg.decoder_embed_dim, cfg.mlp_ratio)
    f += 2 * n * cfg.decoder_embed_dim * pix
    return float(f)


def train_flops_per_image(cfg: MAEConfig) -> float:
    return 3.0 * mae_forward_flops(cfg)


def peak_tflops(device: torch.device, dtype: torch.dtype, override: float | None = None) -> tuple[float, str]:
    """(peak TFLOP/s in ``dtype``, where it came from). GPU: datasheet by name (bf16 tensor-core
    or plain fp32); CPU: the best rate of square matmuls in ``dtype`` on this machine at the
    current thread count (several sizes, best of repeats: the best this CPU does, so MFU reads as
    'share of achievable'). A CPU under load measures low; :func:`mfu` keeps MFU <= 1 anyway."""
    if override:
        return override, "override"
    name_dt = str(dtype).replace("torch.", "")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        table = GPU_PEAK_TFLOPS if dtype == torch.bfloat16 else GPU_PEAK_TFLOPS_FP32
        for k, v in table.items():
            if k in name:
                return v, f"datasheet {k} {name_dt} dense"
        return 0.0, f"unknown GPU {name!r}: pass --peak-tflops"
    best, sizes = 0.0, []
    for n in (256, 512, 1024, 2048):
        a = torch.randn(n, n, dtype=dtype)
        b = torch.randn(n, n, dtype=dtype)
        t = time.perf_counter()
        a @ b  # warm-up (oneDNN picks and JITs its kernel here)
        if time.perf_counter() - t > 0.25:  # emulated dtype: larger sizes would take seconds
            best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e12)
            sizes.append(n)
            break
        reps = max(1, int(0.05 / max(time.perf_counter() - t, 1e-6)))
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(reps):
                a @ b
            best = max(best, reps * 2 * n**3 / (time.perf_counter() - t) / 1e12)
        sizes.append(n)
    return best, (f"measured {name_dt} matmul on CPU, best of sizes {sizes} at "
                  f"{torch.get_num_threads()} threads")


def mfu(tflops: float, peak: float) -> tuple[float | None, float]:
    """(MFU, peak used). A rate above the peak proves the peak was measured low (a busy CPU):
    the peak is raised to the achieved rate, so MFU never exceeds 1."""
    if not peak:
        return None, peak
    peak = max(peak, tflops)
    return tflops / peak, peak
