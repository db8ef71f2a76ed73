"""--precision auto: bf16 only where the CPU (or GPU) runs it natively (trainer/precision.py)."""
from __future__ import annotations

import pytest
import torch

from trainer import precision
from trainer.precision import resolve_precision, torch_dtype

CPU = torch.device("cpu")


@pytest.fixture
def native_cpu(monkeypatch):
    """A CPU that has AMX + AVX512-BF16, torch at AVX512, oneDNN unrestricted."""
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    return monkeypatch


def test_auto_picks_bf16_on_native_cpu(native_cpu):
    p, why = resolve_precision("auto", CPU)
    assert p == "bf16" and "AMX-BF16" in why


@pytest.mark.parametrize("change, expect", [
    (lambda m: m.setenv("ONEDNN_MAX_CPU_ISA", "AVX2"), "ONEDNN_MAX_CPU_ISA=AVX2"),
    (lambda m: m.setenv("DNNL_MAX_CPU_ISA", "avx512_core"), "DNNL_MAX_CPU_ISA=AVX512_CORE"),
    (lambda m: m.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2"), "AVX2"),
    (lambda m: (m.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False),
                m.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)), "neither"),
    (lambda m: m.setattr(precision.platform, "machine", lambda: "aarch64"), "aarch64"),
])
def test_auto_falls_back_to_fp32(native_cpu, change, expect):
    change(native_cpu)
    p, why = resolve_precision("auto", CPU)
    assert p == "fp32" and expect in why


def test_oneDNN_at_bf16_or_above_keeps_bf16(native_cpu):
    native_cpu.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert resolve_precision("auto", CPU)[0] == "bf16"


def test_explicit_choice_is_honoured(native_cpu):
    native_cpu.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    p, why = resolve_precision("bf16", CPU)
    assert p == "bf16" and "slow here" in why
    assert resolve_precision("fp32", CPU) == ("fp32", "requested fp32")
    assert torch_dtype("bf16") is torch.bfloat16 and torch_dtype("fp32") is torch.float32
    with pytest.raises(ValueError, match="--precision"):
        resolve_precision("fp16", CPU)
