"""How fast the hardware is: the measured matmul peak that MFU is reported against."""

from __future__ import annotations

import functools
import time

import torch


def synchronize(device: torch.device) -> None:
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


@functools.cache
def measured_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of a large square matmul on ``device`` in ``dtype``: the best this machine does.

    Measured rather than read from a datasheet, so MFU means the same on a laptop CPU and a GPU.
    """
    n = 1024 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm up
    synchronize(device)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / 4)
    return 2 * n**3 / best


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls beat fp32 here: every accelerator, and CPUs with bf16 instructions
    (AVX512-BF16 or AMX; measured 1.35x faster training steps of ``tiny`` on a 2-core AVX512-BF16
    EPYC, 1.5x on AMX). Elsewhere bf16 on a CPU is emulated, and slower than fp32."""
    if device.type != "cpu":
        return True
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
