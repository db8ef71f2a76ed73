"""Reconstruction grid: original | masked | reconstruction (visible patches pasted back)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


@torch.no_grad()
def save_recon_grid(model, imgs: torch.Tensor, path: Path, mean: float, std: float, seed: int = 0) -> Path:
    """imgs [B, C, H, W] normalised -> PNG with B rows of three [H, W] panels."""
    import cv2

    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    x = imgs.to(dtype)
    g = torch.Generator(device=x.device).manual_seed(seed)
    noise = torch.rand(x.shape[0], model.cfg.num_patches, device=x.device, generator=g)
    _, pred, mask = model(x, noise=noise)
    pred = pred.float()
    if model.cfg.norm_pix_loss:  # predictions are per-patch normalised: undo with the target stats
        t = model.patchify(x.float())
        pred = pred * (t.var(-1, keepdim=True) + 1e-6) ** 0.5 + t.mean(-1, keepdim=True)
    m = mask.unsqueeze(-1).expand(-1, -1, model.cfg.patch_size**2 * model.cfg.in_chans)
    masked = model.unpatchify(model.patchify(x.float()) * (1 - m))
    recon = model.unpatchify(pred * m + model.patchify(x.float()) * (1 - m))
    model.train(was_training)

    def to_u8(t):
        a = (t[:, 0].float().cpu().numpy() * std + mean) * 255.0
        return np.clip(a, 0, 255).astype(np.uint8)

    rows = [np.concatenate([o, mk, r], axis=1) for o, mk, r in zip(to_u8(x), to_u8(masked), to_u8(recon))]
    grid = np.concatenate(rows, axis=0)
    path = Path(path)
    cv2.imwrite(str(path), grid)
    return path
