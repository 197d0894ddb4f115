"""Which device a process computes on."""

from __future__ import annotations

import torch


def default_device(local_rank: int = 0) -> torch.device:
    """The accelerator this process should use (CUDA, XPU, MPS, ...), else the CPU."""
    if torch.accelerator.is_available():
        accel = torch.accelerator.current_accelerator()
        if accel.type != "mps":  # MPS lacks float64 and several ops the trainer uses
            return torch.device(accel.type, local_rank % max(1, torch.accelerator.device_count()))
    return torch.device("cpu")
