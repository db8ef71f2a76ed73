"""One 16-bit -> 8-bit gray conversion (sharder.intensity) on every path: the sharder's curate
step, the torch fine-tune loader and the DALI fine-tune loader give the same uint8 image for
the same 16-bit file."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from sharder.curate import to_uint8 as curate_to_uint8
from sharder.intensity import eight_bit_files, gray_u8, needs_conversion, read_gray_u8, to_uint8
from finetune.tasks import Record
from dali_pipes.finetune_torch import TransformConfig, build_finetune_loader

SIZE = 64


@pytest.fixture(scope="module")
def png16(tmp_path_factory) -> tuple[str, np.ndarray]:
    """A 12-bit-range ultrasound-like frame in a 16-bit PNG, with hot pixels and max-value text
    (where window, min-max and 1/257 all differ)."""
    rng = np.random.default_rng(3)
    img = (rng.rayleigh(600.0, size=(SIZE, SIZE)) + 200).clip(0, 4095).astype(np.uint16)
    img[2, 3:12] = 65535  # burned-in text at the 16-bit maximum
    img[20, 20] = 60000  # hot pixel
    path = str(tmp_path_factory.mktemp("gray") / "frame16.png")
    assert cv2.imwrite(path, img)
    return path, img


def test_rule_is_the_window_and_differs_from_the_old_ones(png16) -> None:
    _, raw = png16
    u8, op = to_uint8(raw)
    assert op == "to_uint8:window" and u8.dtype == np.uint8 and u8.shape == raw.shape
    minmax = ((raw - raw.min()) / (raw.max() - raw.min()) * 255 + 0.5).astype(np.uint8)
    dali_257 = (raw.astype(np.float64) / 257).round().astype(np.uint8)
    # the tissue keeps its contrast under the window; min-max and 1/257 squash it
    tissue = raw < 4096  # not the text or the hot pixel
    spread = {k: int(np.ptp(v[tissue])) for k, v in {"window": u8, "minmax": minmax, "1/257": dali_257}.items()}
    assert spread["window"] > 200 and spread["minmax"] < 60 and spread["1/257"] < 20, spread


def test_sharder_torch_and_dali_paths_agree(png16, tmp_path) -> None:
    path, raw = png16
    expected = to_uint8(raw)[0]
    # sharder: curate.to_uint8 is the shared function
    sharded, op = curate_to_uint8(raw)
    assert op == "to_uint8:window" and np.array_equal(sharded, expected)
    # torch loader: file reader, in-memory records, and a whole eval batch (identity geometry,
    # mean 0 / std 1/255 so the batch holds the pixel values)
    assert np.array_equal(read_gray_u8(path), expected)
    assert np.array_equal(gray_u8(raw, order="bgr")[0], expected)
    tcfg = TransformConfig(img_size=SIZE, in_chans=1, mean=(0.0,), std=(1 / 255,), crop_pct=1.0)
    for rec in (Record(path=path, label=0, group="g"), Record(None, 0, "g", image=raw)):
        batch = next(iter(build_finetune_loader([rec], train=False, batch_size=1, tcfg=tcfg, loader="torch")))
        got = batch["image"][0, 0].numpy()
        assert np.array_equal(np.rint(got).astype(np.uint8), expected)
    # DALI: the 16-bit file is replaced at index time by an 8-bit copy of the same conversion
    assert needs_conversion(path)
    (copy,) = eight_bit_files([path], cache_dir=str(tmp_path))
    assert copy != path and not needs_conversion(copy)
    assert np.array_equal(cv2.imread(copy, cv2.IMREAD_UNCHANGED), expected)
    pytest.importorskip("nvidia.dali")
    loader = build_finetune_loader([Record(path=path, label=0, group="g")], train=False, batch_size=1,
                                   tcfg=tcfg, loader="dali")
    got = next(iter(loader))["image"][0, 0].float().numpy()
    assert np.array_equal(np.rint(got).astype(np.uint8), expected)


def test_colour_and_shapes() -> None:
    bgr = np.zeros((4, 4, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV order
    gray, ops = gray_u8(bgr, order="bgr")
    assert ops == ["gray:luma"] and gray.shape == (4, 4) and gray[0, 0] == round(0.299 * 200)
    assert gray_u8(bgr[..., ::-1], order="rgb")[0][0, 0] == gray[0, 0]
    assert gray_u8(np.full((4, 4, 1), 7, np.uint16))[1] == ["to_uint8:cast"]
    with pytest.raises(ValueError, match="probe.png: unsupported image shape"):
        gray_u8(np.zeros((4, 4, 2), np.uint8), what="probe.png")
