"""The labelled-image record every fine-tune loader reads (the task adapters in ``finetune.tasks``
produce them)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Record:
    """One labelled image.

    path: image file, or None when ``image`` holds the pixels in memory.
    label: class index.
    group: patient / case id; records of one group never straddle train and test.
    image: optional in-memory (H, W) or (H, W, 3) uint8 array (for callers without files).
    """

    path: Path | None
    label: int
    group: str
    image: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else f"<array:{self.group}>"
