"""The MAE model alone: shapes, masking, loss falls on a fixed batch, init from a
facebookresearch/mae checkpoint, FLOP count."""
from __future__ import annotations

import pytest
import torch

from trainer.flops import mae_forward_flops, train_flops_per_image
from trainer.model import MaskedAutoencoderViT, config_for


def tiny(**kw):
    torch.manual_seed(0)
    return MaskedAutoencoderViT(config_for("mae_vit_demo_patch16", img_size=64, **kw))


def test_patchify_round_trip_and_masking():
    m = tiny()
    x = torch.randn(3, 1, 64, 64)
    assert torch.equal(m.unpatchify(m.patchify(x)), x)
    latent, mask, ids = m.forward_encoder(x, 0.75)
    n = m.cfg.num_patches
    assert latent.shape == (3, 1 + n // 4, m.cfg.embed_dim)  # encoder saw visible tokens only
    assert mask.shape == (3, n) and mask.sum(1).tolist() == [n * 3 // 4] * 3
    loss, pred, mask2 = m(x)
    assert pred.shape == (3, n, 16 * 16) and loss.ndim == 0
    # the same noise gives the same mask; different noise a different one
    noise = torch.rand(3, n)
    assert torch.equal(m(x, noise=noise)[2], m(x, noise=noise)[2])


@pytest.mark.parametrize("fused", [True, False])
def test_loss_falls_on_a_fixed_batch(fused):
    m = tiny(fused_attn=fused)
    x = torch.randn(4, 1, 64, 64).cumsum(-1) / 8  # smooth, learnable structure
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    noise = torch.rand(4, m.cfg.num_patches, generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(25):
        loss, _, _ = m(x, noise=noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_sdpa_and_eager_attention_agree():
    m = tiny()
    x = torch.randn(2, 1, 64, 64)
    noise = torch.rand(2, m.cfg.num_patches)
    a = m(x, noise=noise)[0]
    m.set_fused_attn(False)
    b = m(x, noise=noise)[0]
    assert torch.allclose(a, b, atol=1e-5)


def test_norm_pix_loss_changes_target():
    x = torch.randn(2, 1, 64, 64)
    noise = torch.rand(2, 16)
    assert tiny(norm_pix_loss=True)(x, noise=noise)[0] != tiny()(x, noise=noise)[0]


def test_init_from_facebookresearch_checkpoint(tmp_path):
    """A 3-channel MAE checkpoint ({"model": ...}, torch.save) initialises a 1-channel model:
    patch embedding summed over colour, decoder head averaged, everything else copied."""
    from trainer.weights import init_mae

    torch.manual_seed(1)
    src = MaskedAutoencoderViT(config_for("mae_vit_demo_patch16", img_size=64, in_chans=3))
    torch.save({"model": src.state_dict(), "epoch": 799}, tmp_path / "mae_pretrain.pth")
    dst = tiny()
    init_mae(dst, str(tmp_path / "mae_pretrain.pth"))
    s, d = src.state_dict(), dst.state_dict()
    assert torch.allclose(d["patch_embed.proj.weight"], s["patch_embed.proj.weight"].sum(1, keepdim=True))
    assert torch.equal(d["blocks.1.attn.qkv.weight"], s["blocks.1.attn.qkv.weight"])
    w = s["decoder_pred.weight"].reshape(256, 3, -1).mean(1)
    assert torch.allclose(d["decoder_pred.weight"], w)
    # a gray image fed as RGB to the source embeds exactly like the 1-channel image
    g = torch.rand(1, 1, 64, 64)
    assert torch.allclose(src.patch_embed(g.expand(-1, 3, -1, -1)), dst.patch_embed(g), atol=1e-5)


def test_flops_formula_matches_torch_flop_counter():
    """The MFU numerator, checked against PyTorch's own FLOP counter on a real forward pass."""
    from torch.utils.flop_counter import FlopCounterMode

    m = tiny(fused_attn=False)  # explicit matmuls, all visible to the counter
    x = torch.randn(2, 1, 64, 64)
    with FlopCounterMode(display=False) as fc:
        m(x)
    counted = fc.get_total_flops() / 2
    assert abs(mae_forward_flops(m.cfg) - counted) / counted < 0.03
    base = config_for("mae_vit_base_patch16")
    assert train_flops_per_image(base) == 3 * mae_forward_flops(base)
    # masking 75% makes the encoder ~4x cheaper: the whole step is well under half of unmasked
    assert mae_forward_flops(base) < 0.5 * mae_forward_flops(base, mask_ratio=0.0)


def test_attention_choice_sdpa_on_cuda_eager_on_cpu():
    from trainer.kernels import use_sdpa

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert use_sdpa("auto", True, cuda) and not use_sdpa("auto", True, cpu, "bf16")
    assert use_sdpa("auto", True, cpu, "fp32")  # CPU: SDPA wins in fp32, eager in bf16 (kernels.py)
    assert use_sdpa("sdpa", True, cpu) and not use_sdpa("eager", True, cuda)
    assert not use_sdpa("sdpa", False, cuda)  # the --no-fused baseline is always eager
    with pytest.raises(ValueError, match="--attention"):
        use_sdpa("flash", True, cuda)


def test_mfu_is_never_above_one_and_the_cpu_peak_is_in_the_precision_used():
    from trainer.flops import mfu, peak_tflops

    assert mfu(0.5, 1.0) == (0.5, 1.0)
    assert mfu(2.0, 1.0) == (1.0, 2.0)  # a peak measured low (busy CPU) is raised to the achieved rate
    assert mfu(1.0, 0.0) == (None, 0.0)
    peak, src = peak_tflops(torch.device("cpu"), torch.float32)
    assert peak > 0 and "float32 matmul" in src
