"""The plain-loop reference for the train benchmark: facebookresearch/mae pretraining as its own
code runs it, data excluded, so ``benchmarks/throughput.py train`` can say how our step compares
with what a user of that repository gets on the same machine.

Model: :class:`trainer.model.MaskedAutoencoderViT`, which is architecturally identical to
facebookresearch/mae ``models_mae.py`` (timm ``PatchEmbed`` + timm ``Block(qkv_bias=True,
norm_layer=LayerNorm(eps=1e-6))``, fixed 2-D sin-cos position embeddings, per-sample masking by
argsort of uniform noise, an 8 x 512 decoder, MSE on the masked patches). One difference in how it
runs: ``models_mae.py`` on a current timm gets timm's default attention, i.e.
``F.scaled_dot_product_attention`` (``timm.layers.use_fused_attn()``), so the reference runs SDPA
whatever our ``--attention auto`` picks.

Loop: ``engine_pretrain.train_one_epoch`` minus data and logging: forward (under autocast when the
run is bf16; MAE's own loop uses fp16 autocast + a loss scaler on CUDA), ``loss.backward()``,
``optimizer.step()``, ``zero_grad``, and ``loss.item()`` + ``math.isfinite`` every step (MAE syncs
the host each step). No gradient clipping (MAE pretraining passes ``clip_grad=None``). Optimizer:
``torch.optim.AdamW`` on MAE's parameter groups (no weight decay on biases and norms; betas 0.9,
0.95) with ``fused=True`` where this torch supports it on the device (CPU: torch >= 2.4), else
``foreach=True``.

    python benchmarks/reference_mae.py --model mae_vit_small_patch16 --batch-size 32 --steps 4
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from runconfig import add_arguments, config, parse  # noqa: E402
from trainer.model import MaskedAutoencoderViT, config_for  # noqa: E402
from trainer.param_groups import weight_decay_groups  # noqa: E402
from trainer.precision import PRECISIONS, resolve_precision, torch_dtype  # noqa: E402


def make_adamw(groups: list[dict], lr: float) -> tuple[torch.optim.Optimizer, str]:
    """torch AdamW, fused where this torch supports it, else foreach; returns (optimizer, kernel)."""
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=True), "torch.optim.AdamW(fused=True)"
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), foreach=True), "torch.optim.AdamW(foreach=True)"


def reference_step(model_name: str, batch_size: int, device: torch.device, dtype: torch.dtype,
                   img_size: int | None = None):
    """-> (step() -> loss tensor, description). One MAE pretraining step per call, on a fixed
    random batch [B, 1, H, W] (data excluded)."""
    torch.manual_seed(0)
    cfg = config_for(model_name, img_size=img_size)
    model = MaskedAutoencoderViT(cfg).to(device)
    model.set_fused_attn(True)  # timm's default in models_mae.py's Block
    opt, kernel = make_adamw(weight_decay_groups(model, 0.05), 1.5e-4 * batch_size / 256)
    x = torch.randn(batch_size, cfg.in_chans, cfg.img_size, cfg.img_size, device=device)
    bf16 = dtype == torch.bfloat16

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _, _ = model(x, mask_ratio=cfg.mask_ratio)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise RuntimeError(f"reference loop: loss is {loss_value}")
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step, f"facebookresearch/mae plain loop: {kernel}, SDPA attention, .item() per step"


@config
class ReferenceConfig:
    model: str = "mae_vit_small_patch16"
    img_size: int | None = None  # default: the model's
    batch_size: int = 32
    steps: int = 4  # timed steps, after 2 untimed ones
    precision: Literal[PRECISIONS] = "auto"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, ReferenceConfig)
    a = parse(p, ReferenceConfig, argv)[0]
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prec, why = resolve_precision(a.precision, dev)
    step, desc = reference_step(a.model, a.batch_size, dev, torch_dtype(prec), a.img_size)
    for _ in range(2):
        step()
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    print(f"{a.batch_size * a.steps / (time.perf_counter() - t):.2f} img/s  {a.model} batch {a.batch_size} "
          f"{prec} ({why}); {desc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
