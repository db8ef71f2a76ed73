"""python -m trainer.visualize: reconstructions from release-format weights of inputs the sharder
reads (PNG, multi-frame DICOM), deterministic per seed; weights without a decoder are refused."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from phantom import render_frame
from trainer.model import MaskedAutoencoderViT, config_for
from trainer.visualize import main, read_image
from trainer.weights import split_state_dict

try:
    from test_readers import write_native_dicom
except ImportError:
    from tests.test_readers import write_native_dicom

IMG = 32


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("viz")
    torch.manual_seed(0)
    mae = MaskedAutoencoderViT(config_for("mae_vit_demo_patch8", img_size=IMG, in_chans=3))
    torch.save(mae.state_dict(), d / "usf_mae.pt")  # the USF-MAE release layout
    encoder = split_state_dict(mae.state_dict(), d / "mae")[0]
    torch.save({"model": encoder}, d / "mae_pretrain.pth")  # encoder only
    rng = np.random.default_rng(0)
    png = d / "a.png"
    cv2.imwrite(str(png), render_frame(rng, height=120, width=160, banner="PATIENT X"))
    cine = np.stack([render_frame(rng, height=120, width=160, phase=p) for p in (0.0, 0.5)])
    dcm = write_native_dicom(d / "b.dcm", cine, frames=True)
    return {"dir": d, "png": png, "dcm": dcm, "weights": d / "usf_mae.pt", "encoder": d / "mae_pretrain.pth"}


def test_grid_of_png_and_dicom(inputs, capsys):
    out = inputs["dir"] / "grid.png"
    args = ["--init", str(inputs["weights"]), "--images", str(inputs["png"]), str(inputs["dcm"]), "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert text.count("masked-patch MSE") == 2 and "b.dcm" in text
    grid = cv2.imread(str(out), cv2.IMREAD_GRAYSCALE)
    header = grid.shape[0] - 2 * IMG
    assert grid.shape[1] == 4 * IMG and 0 < header < IMG  # title strip + 2 rows of 4 panels
    # the first panel is the curated input itself
    assert np.array_equal(grid[header:header + IMG, :IMG], read_image(inputs["png"], IMG))
    # same seed, same picture; another seed masks other patches; another frame of the cine differs
    first = out.read_bytes()
    assert main(args) == 0 and out.read_bytes() == first
    assert main([*args, "--seed", "1"]) == 0 and out.read_bytes() != first
    assert not np.array_equal(read_image(inputs["dcm"], IMG, frame=1), read_image(inputs["dcm"], IMG, frame=0))


def test_mask_ratio_changes_what_is_hidden(inputs):
    out = inputs["dir"] / "r.png"
    base = ["--init", str(inputs["weights"]), "--images", str(inputs["png"]), "--out", str(out)]
    hidden = []
    for ratio in ("0.25", "0.75"):
        assert main([*base, "--mask-ratio", ratio]) == 0
        g = cv2.imread(str(out), cv2.IMREAD_GRAYSCALE).astype(int)
        diff = g[-IMG:, IMG:2 * IMG] - g[-IMG:, :IMG]  # masked panel vs original, per 8x8 patch
        tiles = diff.reshape(4, 8, 4, 8).transpose(0, 2, 1, 3).reshape(16, 64)
        hidden.append(int((np.abs(tiles).max(1) > 0).sum()))
    assert hidden == [4, 12]  # 25% / 75% of the 16 patches


def test_refusals_name_the_problem(inputs, capsys):
    out = str(inputs["dir"] / "x.png")
    assert main(["--init", str(inputs["encoder"]), "--images", str(inputs["png"]), "--out", out]) == 2
    assert "encoder only" in capsys.readouterr().err
    junk = inputs["dir"] / "junk.dcm"
    junk.write_bytes(b"\0" * 10)
    assert main(["--init", str(inputs["weights"]), "--images", str(junk), "--out", out]) == 2
    assert "junk.dcm: cannot be shown" in capsys.readouterr().err
