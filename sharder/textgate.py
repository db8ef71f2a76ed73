"""Text gate: defence in depth against burned-in text in written frames.

The crop (scanner region or pixel detection) is the first defence; this is the second. A written
frame is run through an offline scene-text detector; a frame with text in it is rejected
(``text_found``, the default) or has its text boxes inpainted (``clean``), by policy.

The detector is PP-OCRv4's text detection network (DB, ONNX), the file that the
``rapidocr-onnxruntime`` wheel ships in ``rapidocr_onnxruntime/models/``: nothing is downloaded,
ever (the sessions are built from local files; ``onnxruntime`` makes no network calls; checked
in a fresh venv inside a network namespace with no network). Pre/post-processing is PP-OCR's
(ImageNet normalisation, sides to multiples of 32, probability map > 0.3, boxes kept when their
mean probability >= ``box_thresh``). Each candidate box is then read by PP-OCR's recogniser
(shipped in the same wheel) and kept only if it reads as text: the detector alone fires on
cysts, heart chambers and speckle (measured: 29 boxes on 85 phantom frames with no text in them,
all read as junk; every label on the real files read back). What the text says is not kept.

Cost: one onnxruntime call on the written frame scaled so its long side is ``det_side`` px,
one intra-op thread (the build's parallelism is its worker processes). Measured in
``benchmarks/throughput.py`` (``shard`` section, ``text_gate`` record).
"""
from __future__ import annotations

import importlib.util
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .frames import InputRejected

DET_MODEL = "ch_PP-OCRv4_det_infer.onnx"
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


class TextGateUnavailable(RuntimeError):
    """The detector's package is not installed: the message says what to install."""


def model_path() -> Path:
    """Path of the shipped detection model; raises TextGateUnavailable if it is not installed."""
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise TextGateUnavailable("the text gate needs the detector model shipped by "
                                  "rapidocr-onnxruntime: pip install 'usf-mae[ocr]' (or set "
                                  "text_policy: off)")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / DET_MODEL
    if not path.is_file():
        raise TextGateUnavailable(f"{path}: detection model missing from the installed package")
    return path


@dataclass
class TextBox:
    """One detected text box in the gated image's pixels: (y0, x0, y1, x1) end-exclusive."""

    box: tuple[int, int, int, int]
    score: float


class TextDetector:
    """PP-OCR DB text detector on (H, W) uint8 gray or (H, W, 3) RGB frames.

    det_side: the frame is scaled so its long side is this (rounded to a multiple of 32); the
        written frames are ~256x340, so text of the source is enlarged ~2x back towards the
        size the network was trained on.
    box_thresh: mean probability over a candidate box for it to count as text (PP-OCR: 0.5;
        0.6 here keeps speckle out, measured on the phantom and the real files' crops).
    min_side: boxes thinner than this (px, at det scale) are noise, not glyphs.
    max_line: boxes taller than this share of the image's short side are not a line of text.
        DB detects text line by line; on ultrasound it also fires on structured anatomy and
        colour-flow blobs, as tall boxes (measured on the real files' crops: text lines 7-18 px
        tall at a 256 px short side; false boxes 77-181 px: a power-Doppler vessel bundle, a
        heart in a phased-array fan). 1/8 of the short side keeps two-line labels.
    """

    def __init__(self, det_side: int = 640, box_thresh: float = 0.6, min_side: int = 6,
                 max_line: float = 0.125, rec_thresh: float | None = 0.65):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(model_path()), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.det_side, self.box_thresh, self.min_side = det_side, box_thresh, min_side
        self.max_line, self.rec_thresh = max_line, rec_thresh
        self.rec = _recogniser() if rec_thresh is not None else None

    def detect(self, image: np.ndarray) -> list[TextBox]:
        """Text boxes in image ((H, W) uint8 or (H, W, 3) uint8 RGB), in its own pixels."""
        img = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        h, w = img.shape[:2]
        scale = self.det_side / max(h, w)
        nh, nw = max(32, int(round(h * scale / 32)) * 32), max(32, int(round(w * scale / 32)) * 32)
        x = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
        x = ((x[..., ::-1] - _MEAN) / _STD).transpose(2, 0, 1)[None]  # PP-OCR takes BGR, NCHW
        prob = self.session.run(None, {self.input: np.ascontiguousarray(x, np.float32)})[0][0, 0]
        seg = (prob > 0.3).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(seg, connectivity=4)
        out: list[TextBox] = []
        if n <= 1:
            return out
        sums = np.bincount(labels.ravel(), weights=prob.ravel(), minlength=n)
        sy, sx = h / nh, w / nw
        for i in range(1, n):
            x0, y0, bw, bh, area = stats[i]
            score = float(sums[i] / area)
            if score < self.box_thresh or min(bw, bh) < self.min_side:
                continue
            if bh * sy > self.max_line * min(h, w):
                continue  # not a line of text: a tall blob of anatomy or colour flow
            # DB shrinks text regions; PP-OCR unclips them by ~1.5x the area: grow by half height
            g = max(2, int(bh * 0.5))
            out.append(TextBox((max(0, int((y0 - g) * sy)), max(0, int((x0 - g) * sx)),
                                min(h, int(np.ceil((y0 + bh + g) * sy))),
                                min(w, int(np.ceil((x0 + bw + g) * sx)))), score))
        return self._verified(img, out) if self.rec is not None and out else out

    def _verified(self, rgb: np.ndarray, boxes: list[TextBox]) -> list[TextBox]:
        """Keeps the boxes whose crop PP-OCR's recogniser reads as text (>= one letter or digit
        at confidence >= rec_thresh). DB alone fires on dark round blobs (cysts, heart chambers)
        and speckle patches at up to 0.99; the recogniser reads those as junk at <= 0.62, while
        every burned-in label on the real files read at >= 0.70 (measured on the phantom's 85
        frames and the 13 real files)."""
        crops = [np.ascontiguousarray(rgb[b.box[0]:b.box[2], b.box[1]:b.box[3], ::-1]) for b in boxes]
        results = self.rec(crops)[0]
        return [b for b, (text, conf) in zip(boxes, results)
                if float(conf) >= self.rec_thresh and any(ch.isalnum() for ch in text)]


def _recogniser():
    """PP-OCR's text recogniser as rapidocr-onnxruntime ships it (model and character list in
    the wheel), one thread."""
    import yaml
    from rapidocr_onnxruntime.ch_ppocr_rec import TextRecognizer

    base = model_path().parent.parent
    cfg = yaml.safe_load((base / "config.yaml").read_text())["Rec"]
    cfg.update(model_path=str(base / cfg["model_path"]), intra_op_num_threads=1, inter_op_num_threads=1)
    return TextRecognizer(cfg)


def inpaint_boxes(gray: np.ndarray, boxes: list[TextBox]) -> np.ndarray:
    """(H, W) uint8 with every box filled in from its surroundings (Telea inpainting)."""
    mask = np.zeros(gray.shape[:2], np.uint8)
    for b in boxes:
        y0, x0, y1, x1 = b.box
        mask[y0:y1, x0:x1] = 1
    return cv2.inpaint(np.ascontiguousarray(gray), mask, 5, cv2.INPAINT_TELEA)


def frames_to_check(n_frames: int | None) -> set[int]:
    """Sequence numbers of a source's frames that the gate checks whatever happens: first,
    middle, last (when the count is known). The build adds every ``text_check_every``-th, frames whose
    crop box changed and, once text was found in a source, all its later frames."""
    picks = {0}
    if n_frames:
        picks |= {(n_frames - 1) // 2, n_frames - 1}
    return picks


_DETECTOR: TextDetector | None = None


def detector() -> TextDetector:
    """One detector per process (the session is ~20 MB and takes ~0.2 s to build)."""
    global _DETECTOR
    if _DETECTOR is None:
        _DETECTOR = TextDetector()
    return _DETECTOR


class SourceGate:
    """Runs the text gate on the written frames of one source and counts.

    Which frames: every frame of a still image; of a cine/video/volume the first, middle and last
    (when the reader knows the count), every ``every``-th, and (cine, video: ``track_box``) every
    frame whose crop box differs from the previous one of its region. A frame in between shares
    its last checked frame's box and overlays: when that frame had text, its text boxes stand for
    this one (rejected or inpainted alike, without another detector run); when it had none, the
    frame passes. ``policy`` "off" checks nothing.
    """

    def __init__(self, policy: str, every: int, track_box: bool = True):
        self.policy, self.every, self.track_box = policy, every, track_box
        self.picks: set[int] = {0}
        self.last_crop: dict[int, tuple] = {}
        self.found: dict[int, list] = {}  # region -> text boxes of its last checked frame
        self.counts = Counter()  # checked, found, cleaned
        self.seconds = 0.0

    def new_geometry(self, n_frames: int | None) -> None:
        """A new frame size (the first frame, or a stream that changed resolution): its
        first/middle/last frames are picked again, the boxes seen so far forgotten."""
        self.picks = frames_to_check(n_frames)
        self.last_crop.clear()
        self.found.clear()

    def check(self, seq: int, region: int, cur) -> None:
        """Raises InputRejected("text_found") (policy reject) or inpaints ``cur.image`` (clean).
        seq: the frame's position in its source; region: its scanner image region; cur: its
        :class:`~sharder.curate.Curated` (``image`` (h, w) uint8, ``crop``, ``ops``)."""
        if self.policy == "off":
            return
        changed = self.track_box and self.last_crop.get(region) != tuple(cur.crop)
        self.last_crop[region] = tuple(cur.crop)
        if changed or seq in self.picks or seq % self.every == 0:
            t0 = time.perf_counter()
            found = detector().detect(cur.image)
            self.seconds += time.perf_counter() - t0
            self.counts["checked"] += 1
            self.found[region] = found
        elif self.found.get(region):
            # same box as a checked frame that had text: burned-in overlays are static within a
            # loop, so its boxes stand for this frame too (bounded cost: no detector run)
            found = self.found[region]
        else:
            return
        if not found:
            return
        self.counts["found"] += 1
        if self.policy == "reject":
            raise InputRejected("text_found", f"{len(found)} text box(es) in the cropped frame")
        cur.image = inpaint_boxes(cur.image, found)
        cur.ops.append("text:inpaint")
        self.counts["cleaned"] += 1
