"""Which fused kernels run, chosen at run time and logged (never assumed).

Optimizer: apex FusedAdam (if apex imports) > DeepSpeed FusedAdam (CUDA) > DeepSpeed CPU Adam
(AVX kernels, JIT-built once into TORCH_EXTENSIONS_DIR) > torch AdamW (fused on CUDA, foreach on
CPU). Attention: SDPA via timm's ``fused_attn`` on CUDA and in fp32 on CPU, eager in bf16 on CPU
(:func:`use_sdpa`); apex FusedLayerNorm replaces LayerNorm if apex is importable.
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn

log = logging.getLogger("trainer")


def make_optimizer(groups: list[dict], lr: float, betas, eps: float, weight_decay: float,
                   fused: bool = True) -> tuple[torch.optim.Optimizer, str]:
    """Returns (optimizer, description of the kernel that will run)."""
    cuda = torch.cuda.is_available()
    if fused:
        try:
            from apex.optimizers import FusedAdam as ApexFusedAdam  # type: ignore

            if cuda:
                return (ApexFusedAdam(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      adam_w_mode=True), "apex.optimizers.FusedAdam (adam_w_mode)")
        except Exception:
            pass
        if cuda:
            try:
                from deepspeed.ops.adam import FusedAdam

                return (FusedAdam(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                  adam_w_mode=True), "deepspeed.ops.adam.FusedAdam (adam_w_mode)")
            except Exception as e:
                log.warning("DeepSpeed FusedAdam unavailable (%s); falling back to torch fused AdamW", e)
                return (torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True),
                        "torch.optim.AdamW(fused=True)")
        try:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return (DeepSpeedCPUAdam(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                     adamw_mode=True), "deepspeed.ops.adam.DeepSpeedCPUAdam (AVX, adamw_mode)")
        except Exception as e:
            log.warning("DeepSpeed CPU Adam unavailable (%s); falling back to torch AdamW foreach", e)
    return (torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=True),
            "torch.optim.AdamW(foreach=True)")


def use_apex_layernorm(model: nn.Module) -> bool:
    """Swaps nn.LayerNorm for apex FusedLayerNorm (same parameters) when apex is importable."""
    try:
        from apex.normalization import FusedLayerNorm  # type: ignore
    except Exception:
        return False
    for mod in list(model.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, nn.LayerNorm):
                new = FusedLayerNorm(child.normalized_shape, eps=child.eps)
                new.load_state_dict(child.state_dict())
                setattr(mod, name, new)
    return True


def tune_ds_config_for_cpu(ds: dict) -> dict:
    """DeepSpeed settings that only cost time on CPU, off unless the JSON sets them: ZeRO 1/2's
    ``contiguous_gradients`` copies every gradient into a flat buffer during backward (it saves
    GPU memory fragmentation; on CPU it is pure copying: 14% of a demo-model step, measured in CPU
    time on one thread: 138 -> 158 img/s against 186 for a plain loop)."""
    z = ds.get("zero_optimization")
    if isinstance(z, dict) and z.get("stage", 0) in (1, 2):
        z.setdefault("contiguous_gradients", False)
    return ds


ATTENTION = ("auto", "sdpa", "eager")


def use_sdpa(attention: str, fused: bool, device: torch.device, precision: str = "bf16") -> bool:
    """Whether timm's Attention runs F.scaled_dot_product_attention (else eager softmax(QK^T)V).

    ``auto`` (default): SDPA on CUDA (flash / memory-efficient kernels: less memory, faster). On
    CPU it depends on the precision (measured fwd+bwd, one thread, CPU time, 2-core Xeon with
    AMX; the same order under AVX2 emulation): in fp32 PyTorch's CPU flash kernel beats the plain
    matmuls (ViT-S/16 224: 0.90x the time of eager; the demo ViT @ 64 px: 0.95x), in bf16 it loses
    (1.37x and 1.54x: its bf16 path converts and blocks for long sequences, while MAE's are
    17-197 tokens). ``fused=False`` (the benchmark baseline) is always eager.
    """
    if attention not in ATTENTION:
        raise ValueError(f"--attention must be one of {ATTENTION}, got {attention!r}")
    if not fused or attention == "eager":
        return False
    return attention == "sdpa" or device.type == "cuda" or precision == "fp32"


def attention_kernel(sdpa: bool) -> str:
    """Describes the attention kernel; ``sdpa``: SDPA is on (see :func:`use_sdpa`)."""
    if not sdpa:
        return "eager softmax(QK^T)V"
    if torch.cuda.is_available():
        from torch.backends.cuda import flash_sdp_enabled, mem_efficient_sdp_enabled

        kinds = [k for k, on in (("flash", flash_sdp_enabled()), ("mem-efficient", mem_efficient_sdp_enabled())) if on]
        return f"F.scaled_dot_product_attention ({'/'.join(kinds) or 'math'} backends enabled)"
    return "F.scaled_dot_product_attention (CPU flash kernel)"
