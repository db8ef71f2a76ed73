"""Which precision a run trains in: bf16 where the hardware runs it natively, else fp32.

``--precision auto`` (the default everywhere: pretraining, fine-tuning, the proof, the benchmarks)
resolves through :func:`resolve_precision`; the choice and its reason are logged and saved with
the run config. Why it matters: on a CPU without native bf16 (AVX2 only; no AVX512-BF16, no AMX)
PyTorch's bf16 matmul falls off oneDNN's fast path and runs ~100x slower than fp32 (measured on a
2-core EPYC with ``ONEDNN_MAX_CPU_ISA=AVX2``: 2.2 GFLOP/s bf16 vs 310 GFLOP/s fp32), so "bf16 by
default" turns a minute of training into hours.

CPU rule: bf16 is native only when all three hold:
- the hardware has AVX512-BF16 or AMX-BF16 (``torch.cpu._is_avx512_bf16_supported`` /
  ``_is_amx_tile_supported``, i.e. cpuinfo);
- oneDNN, which runs PyTorch's CPU bf16 GEMMs, may use those instructions: ``ONEDNN_MAX_CPU_ISA``
  (or the older ``DNNL_MAX_CPU_ISA``) is unset or at least ``AVX512_CORE_BF16`` (this is the
  variable that decides matmul speed), and oneDNN is available;
- PyTorch's own vectorised kernels (norms, GELU, softmax, Adam) run at AVX512 or above:
  ``torch.backends.cpu.get_cpu_capability()``, which honours ``ATEN_CPU_CAPABILITY``.
Non-x86 CPUs resolve to fp32 under ``auto`` (no detection of ARM BF16 here; ask for bf16 explicitly).

To emulate an AVX2-only CPU on any x86 machine: ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``.
"""
from __future__ import annotations

import os
import platform

import torch

PRECISIONS = ("auto", "bf16", "fp32")

# oneDNN's ISA ladder (dnnl::cpu_isa names accepted by ONEDNN_MAX_CPU_ISA), lowest first; bf16
# GEMMs are native from AVX512_CORE_BF16 up. AVX2_VNNI_2 only converts bf16 (no bf16 dot
# product), so it stays below the line.
_ONEDNN_ISA = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
               "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10_1_512_AMX",
               "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL", "DEFAULT")
_ONEDNN_BF16_MIN = _ONEDNN_ISA.index("AVX512_CORE_BF16")


def _cpu_flag(name: str) -> bool:
    fn = getattr(torch.cpu, name, None)
    try:
        return bool(fn()) if fn is not None else False
    except Exception:
        return False


def cpu_bf16_native() -> tuple[bool, str]:
    """(True, why) when this CPU runs bf16 matmuls natively and fast, else (False, why not)."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "i686", "x86"):
        return False, f"CPU architecture {machine}: native bf16 is not detected here"
    hw = [n for n, f in (("AMX-BF16", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
          if _cpu_flag(f)]
    if not hw:
        return False, "CPU has neither AVX512-BF16 nor AMX (bf16 matmul would be emulated, ~100x slower than fp32)"
    if not torch.backends.mkldnn.is_available():
        return False, "this torch build has no oneDNN (mkldnn), which runs the CPU bf16 matmuls"
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        isa = os.environ.get(var, "").strip().upper()
        if isa and isa in _ONEDNN_ISA and _ONEDNN_ISA.index(isa) < _ONEDNN_BF16_MIN:
            return False, f"{var}={isa} keeps oneDNN below AVX512_CORE_BF16 (bf16 matmul emulated)"
    cap = torch.backends.cpu.get_cpu_capability()
    if not cap.upper().startswith("AVX512"):
        return False, f"PyTorch's CPU kernels run at {cap} (ATEN_CPU_CAPABILITY), not AVX512"
    return True, f"CPU runs bf16 natively ({'/'.join(hw)}, torch capability {cap})"


def cuda_bf16_native(device: torch.device) -> tuple[bool, str]:
    """bf16 tensor cores (compute capability >= 8.0); emulated bf16 on older GPUs does not count."""
    try:
        ok = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # older torch: no emulation argument
        ok = torch.cuda.is_bf16_supported()
    name = torch.cuda.get_device_name(device)
    return (True, f"{name} supports bf16") if ok else (False, f"{name} has no native bf16")


def resolve_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """``requested`` in {"auto", "bf16", "fp32"} -> ("bf16" | "fp32", human-readable reason).

    auto: bf16 on a CUDA device with native bf16 and on a CPU that runs it natively
    (:func:`cpu_bf16_native`), else fp32. An explicit bf16 is honoured even where it is slow, with
    the reason saying so."""
    if requested not in PRECISIONS:
        raise ValueError(f"--precision must be one of {PRECISIONS}, got {requested!r}")
    device = torch.device(device)
    native, why = cuda_bf16_native(device) if device.type == "cuda" else cpu_bf16_native()
    if requested == "fp32":
        return "fp32", "requested fp32"
    if requested == "bf16":
        return "bf16", "requested bf16" + ("" if native else f" (slow here: {why})")
    return ("bf16" if native else "fp32"), f"auto: {why}"


def torch_dtype(precision: str) -> torch.dtype:
    """"bf16" -> torch.bfloat16, "fp32" -> torch.float32."""
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]
