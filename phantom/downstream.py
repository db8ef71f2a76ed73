"""The labelled lesion task for fine-tuning (normal / cyst / solid), grouped by patient."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .geometry import probe_geometry
from .lesion import _random_lesion
from .render import render_frame
from .stills import _imwrite

TASK_CLASSES = ("normal", "cyst", "solid")
# anatomy -> (probe, lesion depth range, lesion lateral range)
_TASK_ANATOMY = {
    "breast": ("linear", (0.22, 0.5), (-0.28, 0.28)),
    "thyroid": ("linear", (0.28, 0.38), (0.2, 0.38)),
    "liver": ("curved", (0.3, 0.65), (-0.3, 0.3)),
    "kidney": ("curved", (0.2, 0.3), (-0.3, 0.3)),
}
_TASK_MEAN = 58.0  # every task image is normalised to this whole-image mean grey level


def _normalise_mean(img: np.ndarray, mask: np.ndarray, target: float) -> np.ndarray:
    """(H, W) uint8 -> same, with footprint pixels rescaled so that the whole-image mean is ``target``:
    a dark lesion must not be findable from the mean brightness alone."""
    f = img.astype(np.float32)
    n = f.size
    for _ in range(4):  # clipping at 255 moves the mean a little: iterate
        fp = f[mask]
        s = (target * n - float(f[~mask].sum())) / max(1.0, float(fp.sum()))
        f[mask] = np.clip(fp * s, 0, 255)
    return np.rint(f).astype(np.uint8)


def write_downstream_task(
    out: Path,
    seed: int = 0,
    n_patients: int = 40,
    per_patient: int = 6,
    *,
    small_p: float = 0.3,
    size_scale: float = 1.0,
    conspicuity: float = 0.0,
) -> Path:
    """Write a labelled lesion task: ``out/images/*.png`` (256 x 320 gray) and ``out/labels.csv``
    (columns ``path,label,patient``; path relative to ``out``). Classes: "normal", "cyst", "solid".

    The class is per patient; a patient's images are views of one scene (same anatomy, probe, speckle,
    lesion) at different breathing phases, elevations and probe positions, so splits must group by
    patient. Class, anatomy and probe are stratified independently (no anatomy predicts a class), lesion
    size/contrast/position vary (some small, some weakly shadowing or complicated cysts), calipers and
    banners appear regardless of class, and every image has the same mean brightness.

    small_p (share of small lesions), size_scale (radius factor) and conspicuity (0..1, see
    ``_random_lesion``) set the difficulty; the defaults are the original task.
    """
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0x7A5C])
    anats = list(_TASK_ANATOMY)
    order = rng.permutation(n_patients)
    rows = []
    for pid, i in enumerate(order):
        label, anatomy = TASK_CLASSES[i % 3], anats[(i // 3) % len(anats)]
        probe, z_range, x_range = _TASK_ANATOMY[anatomy]
        prng = np.random.default_rng([seed, 0x7A5C, int(i)])
        lesion = None
        if label != "normal":
            lesion = _random_lesion(prng, z_range, x_range, small_p=small_p, kind=label,
                                    size_scale=size_scale, conspicuity=conspicuity,
                                    mirror=anatomy == "thyroid")
        scene = int(prng.integers(1 << 30))
        banner = f"US {anatomy.upper()} {pid:03d}" if prng.random() < 0.5 else None
        g = probe_geometry(probe, 256, 320)
        r_mean = 0.5 * sum(lesion.radii) if lesion else 0.05
        for v in range(per_patient):
            # a view's pose is drawn in this order: phase, elevation, pan, calipers
            img = render_frame(prng, height=256, width=320, probe=probe, anatomy=anatomy, lesion=lesion,
                               phase=float(prng.random()), elevation=float(prng.uniform(-0.6, 0.6)) * r_mean,
                               pan=float(prng.uniform(-0.05, 0.05)), banner=banner,
                               calipers=bool(prng.random() < 0.25), scene_seed=scene)
            img = _normalise_mean(img, g.mask(), _TASK_MEAN)
            rel = f"images/P{pid:03d}_{v + 1}.png"
            _imwrite(out / rel, img)
            rows.append((rel, label, f"P{pid:03d}"))
    csv_path = out / "labels.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(("path", "label", "patient"))
        w.writerows(rows)
    return csv_path
