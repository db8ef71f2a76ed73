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

# dense bf16 tensor-core peaks, TFLOP/s (vendor datasheets, no sparsity)
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0,
                   "V100": 125.0, "RTX 4090": 165.0, "A6000": 155.0}


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
    """(peak TFLOP/s, where it came from). GPU: datasheet by name; CPU: a measured large matmul
    in ``dtype`` on this machine (the best this CPU does, so MFU reads as 'share of achievable')."""
    if override:
        return override, "override"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for k, v in GPU_PEAK_TFLOPS.items():
            if k in name:
                return v, f"datasheet {k} bf16 dense"
        return 0.0, f"unknown GPU {name!r}: pass --peak-tflops"
    n = 1024
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t) / 1e12)
    return best, f"measured {n}x{n} {str(dtype).replace('torch.', '')} matmul on CPU"
