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
