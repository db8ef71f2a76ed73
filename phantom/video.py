"""Video dataset of the demo corpus: fetal MP4 sweeps (the probe pans while the fetus moves)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .patients import _Patient
from .render import render_frame


def _write_fetal(root: Path, seed: int, pats: Iterator[_Patient], n_videos: int) -> dict:
    """MP4 cine sweeps (H.264 if the PyAV build has libx264, else MPEG-4 part 2)."""
    import av

    root.mkdir(parents=True, exist_ok=True)
    files, frames = 0, 0
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    for i in range(n_videos):
        pat = next(pats)
        rng = np.random.default_rng([seed, 8, i])
        n = 40
        (root / pat.name).mkdir(parents=True, exist_ok=True)  # one folder per patient: the split group
        with av.open(str(root / pat.name / f"{pat.pid}_sweep.mp4"), "w", format="mp4") as cont:
            st = cont.add_stream(codec, rate=24)
            st.width, st.height, st.pix_fmt = 480, 360, "yuv420p"
            st.options = {"crf": "20", "preset": "veryfast", "threads": "1"} if codec == "libx264" else {}
            st.codec_context.thread_count = 1  # single-threaded: deterministic bytes, polite to shared CPUs
            for k in range(n):
                img = render_frame(rng, height=360, width=480, probe="curved", anatomy="fetal",
                                   phase=0.8 * k / n, pan=-0.08 + 0.16 * k / n,
                                   banner=f"{pat.institution}  OB  {pat.name}", scene_seed=pat.seed * 10 + 2)
                for pkt in st.encode(av.VideoFrame.from_ndarray(img, format="gray")):
                    cont.mux(pkt)
            for pkt in st.encode():
                cont.mux(pkt)
        files, frames = files + 1, frames + n
    return {"files": files, "frames": frames, "anatomy": "fetal", "patients": files, "codec": codec}
