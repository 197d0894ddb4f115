"""Processes, devices and data-parallel sharding, applied from outside to a plain model.

``torchrun --nproc_per_node N -m ringworld train ...`` sets RANK/WORLD_SIZE; ``init_distributed``
then starts the process group (nccl on CUDA, gloo on CPU, whatever ``torch.accelerator`` offers
elsewhere) and a 1-D ``DeviceMesh`` named ``dp``. ``apply_fsdp`` wraps every block with FSDP2's
``fully_shard`` and then the root (torchtitan's order), so parameters, gradients and optimizer state
are sharded across the mesh and each block's weights are gathered only while it runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from ringworld.model.transformer import Transformer


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    mesh: DeviceMesh | None = None  # None when running as one process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.mesh is not None:
            dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (a copy; the identity for one process)."""
        t = t.clone()
        if self.mesh is not None:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


def default_device(local_rank: int = 0) -> torch.device:
    """The accelerator this process should use (CUDA, XPU, MPS, ...), else the CPU."""
    if torch.accelerator.is_available():
        accel = torch.accelerator.current_accelerator()
        if accel.type != "mps":  # MPS lacks float64 and several ops the trainer uses
            return torch.device(accel.type, local_rank % max(1, torch.accelerator.device_count()))
    return torch.device("cpu")


def init_distributed(device: str | None = None) -> Distributed:
    """Join the torchrun group if there is one; otherwise a single process on ``device``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device) if device else default_device(local_rank)
    if world_size == 1:
        return Distributed(device=dev)
    if dev.type != "cpu" and dev.index is None:
        dev = torch.device(dev.type, local_rank)
    if dev.type != "cpu":
        torch.accelerator.set_device_index(dev.index)
    backend = {"cpu": "gloo", "cuda": "nccl"}.get(dev.type)  # None: let torch pick (xccl, hccl, ...)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=dev if dev.type != "cpu" else None)
    mesh = init_device_mesh(dev.type, (world_size,), mesh_dim_names=("dp",))
    return Distributed(rank=dist.get_rank(), world_size=world_size, device=dev, mesh=mesh)


def apply_fsdp(model: Transformer, mesh: DeviceMesh, *, param_dtype: torch.dtype | None = None) -> Transformer:
    """Shard every block, then the root (embedding, final norm, head). ``param_dtype`` (e.g. bf16)
    gathers and computes in that dtype while gradients are reduced in fp32."""
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for layer in model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def shutdown(d: Distributed) -> None:
    if d.mesh is not None and dist.is_initialized():
        dist.destroy_process_group()
