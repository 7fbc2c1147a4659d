"""Which device a run uses (CUDA, Apple MPS, CPU) and at which precision: shared by inference and training."""

from __future__ import annotations

import re

import torch

from .errors import InputError

PRECISIONS = ("auto", "fp32", "bf16")


def available_devices() -> list[str]:
    """Device names a user may pick here: 'auto', 'cpu', and the GPUs that are present."""
    devs = ["auto", "cpu"]
    if torch.cuda.is_available():
        devs.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devs.append("mps")
    return devs


def select_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' -> CUDA, else Apple MPS, else CPU; a named device (``cpu``, ``cuda``, ``cuda:1``,
    ``mps``) must be present; anything else is an InputError with one sentence."""
    if isinstance(name, torch.device):
        name = str(name)
    text = str(name).strip().lower()
    present = available_devices()
    if text == "auto":
        return torch.device(next((d for d in ("cuda", "mps") if d in present), "cpu"))
    match = re.fullmatch(r"(cpu|cuda|mps)(?::(\d+))?", text)
    if match is None:
        raise InputError(f"unknown device '{name}'; use auto, cpu, cuda, cuda:N or mps")
    base, index = match[1], match[2]
    if base not in present:
        raise InputError(f"{base.upper()} was requested but is not available on this machine; use --device cpu or auto")
    if index is not None:
        count = torch.cuda.device_count() if base == "cuda" else 1
        if int(index) >= count:
            raise InputError(
                f"there is no device '{text}' here; {base} has index{'es' if count > 1 else ''} "
                f"0{f'..{count - 1}' if count > 1 else ''}"
            )
    return torch.device(text)


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 arithmetic: AMX-BF16 (Intel Sapphire Rapids and later: the matrix
    tiles) or AVX512-BF16 (AMD Zen 4 and later, Intel Cooper Lake: bf16 dot products), where oneDNN
    runs bf16 convolutions about 2x faster than fp32 (docs/speed.md); elsewhere bf16 would be
    emulated and no faster."""
    try:
        caps = torch.cpu.get_capabilities()
        return bool(caps.get("amx_bf16", False) or caps.get("avx512_bf16", False))
    except AttributeError:  # torch without get_capabilities
        return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on a CPU with native bf16, else fp32 (fp16 autocast on CUDA is separate)."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision '{precision}'; use {', '.join(PRECISIONS)}")
    if device.type != "cpu":
        return "fp32"
    if precision == "auto":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return precision
