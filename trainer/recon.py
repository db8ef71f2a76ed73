"""MAE reconstructions and their grids, as in facebookresearch/mae's demo: one row per image, four
panels: original | masked | reconstruction | reconstruction + visible (the visible patches pasted
back). Drawn by the pretraining loop (``recon_epoch*.png``) and by the viewer command
``python -m trainer.visualize``, which adds reading inputs and weights."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

PANELS = ("original", "masked", "reconstruction", "reconstruction + visible")
SHORT = ("original", "masked", "recon", "recon+visible")  # titles for narrow panels


@torch.no_grad()
def reconstruct(model, imgs: torch.Tensor, mask_ratio: float | None = None, seed: int = 0
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """imgs [B, C, H, W] normalised -> ({panel: [B, C, H, W] float32, normalised}, masked-patch
    MSE per image [B]). The mask comes from a generator seeded with ``seed``: same seed, same mask."""
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    x = imgs.to(dtype)
    g = torch.Generator(device=x.device).manual_seed(seed)
    noise = torch.rand(x.shape[0], model.cfg.num_patches, device=x.device, generator=g)
    _, pred, mask = model(x, mask_ratio=mask_ratio, noise=noise)
    model.train(was_training)
    pred, target = pred.float(), model.patchify(x.float())
    if model.cfg.norm_pix_loss:  # predictions are per-patch normalised: undo with the target's stats
        pred = pred * (target.var(-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(-1, keepdim=True)
    m = mask.unsqueeze(-1).float()  # [B, N, 1], 1 = masked
    err = (((pred - target) ** 2).mean(-1) * mask).sum(1) / mask.sum(1).clamp(min=1)
    panels = {"original": x.float(), "masked": model.unpatchify(target * (1 - m)),
              "reconstruction": model.unpatchify(pred),
              "reconstruction + visible": model.unpatchify(pred * m + target * (1 - m))}
    return panels, err


def to_gray_u8(t: torch.Tensor, mean: Sequence[float] | float, std: Sequence[float] | float) -> np.ndarray:
    """[B, C, H, W] normalised -> [B, H, W] uint8 (channels un-normalised, then averaged)."""
    c = t.shape[1]
    m = torch.tensor([mean] * c if isinstance(mean, (int, float)) else list(mean), dtype=torch.float32)
    s = torch.tensor([std] * c if isinstance(std, (int, float)) else list(std), dtype=torch.float32)
    raw = t.float().cpu() * s.view(1, -1, 1, 1) + m.view(1, -1, 1, 1)
    return np.clip(raw.mean(1).numpy() * 255.0, 0, 255).round().astype(np.uint8)


def grid_image(panels: dict[str, torch.Tensor], mean, std, header: bool = True) -> np.ndarray:
    """The panels side by side, one row per image, a title strip on top -> [H', W'] uint8."""
    import cv2

    imgs = [to_gray_u8(panels[k], mean, std) for k in PANELS]
    rows = [np.concatenate([p[i] for p in imgs], axis=1) for i in range(imgs[0].shape[0])]
    grid = np.concatenate(rows, axis=0)
    if not header:
        return grid
    w = imgs[0].shape[2]
    names = PANELS if w >= 160 else SHORT
    strip = np.zeros((max(12, w // 12), grid.shape[1]), np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for i, name in enumerate(names):  # the largest scale that fits the strip and the panel
        (tw, th), _ = cv2.getTextSize(name, font, 1.0, 1)
        scale = min((strip.shape[0] - 4) / th, (w - 4) / tw)
        cv2.putText(strip, name, (i * w + 2, strip.shape[0] - 3), font, scale, 255, 1, cv2.LINE_AA)
    return np.concatenate([strip, grid], axis=0)


def save_recon_grid(model, imgs: torch.Tensor, path: Path, mean, std, seed: int = 0,
                    mask_ratio: float | None = None) -> torch.Tensor:
    """imgs [B, C, H, W] normalised with ``mean``/``std`` (scalars or per channel) -> the grid
    image at ``path`` (its folder made); returns the masked-patch MSE per image [B]."""
    import cv2

    panels, err = reconstruct(model, imgs, mask_ratio, seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), grid_image(panels, mean, std)):
        raise OSError(f"{path}: could not write the image (a .png / .jpg name?)")
    return err
