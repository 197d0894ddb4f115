"""Processes, devices and data-parallel sharding, applied from outside to a plain model.

``torchrun --nproc_per_node N -m ringworld train ...`` sets RANK/WORLD_SIZE; ``init_distributed``
then starts the process group (nccl on CUDA, gloo on CPU, whatever ``torch.accelerator`` offers
elsewhere) and lays the N processes out on a 2-D ``DeviceMesh`` ``dp x cp``: ``cp`` processes
share every row (context parallel, zigzag shards, ring attention) and ``dp`` groups of them take
different rows. ``build_model`` wraps every block with FSDP2's ``fully_shard`` and then the root
(torchtitan's order) over all N processes (context-parallel ranks hold the same weights and
their gradients are summed, exactly like data-parallel ones), so parameters, gradients and
optimizer state are sharded N ways and each block's weights are gathered only while it runs.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from ringworld.device import default_device
from ringworld.model.transformer import ModelConfig, Transformer, full_weights


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    mesh: DeviceMesh | None = None  # 1-D over every process (what FSDP shards over); None for one process
    cp: int = 1  # processes sharing each row (context parallel)
    cp_group: dist.ProcessGroup | None = None  # this process's context-parallel group, when cp > 1

    @property
    def dp(self) -> int:
        """Groups of processes that take different rows."""
        return self.world_size // self.cp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.cp

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.mesh is not None:
            dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (a copy; the identity for one process)."""
        return self._all_reduce(t, dist.ReduceOp.SUM)

    def all_reduce_max(self, t: torch.Tensor) -> torch.Tensor:
        """Elementwise maximum over ranks (a copy; the identity for one process)."""
        return self._all_reduce(t, dist.ReduceOp.MAX)

    def _all_reduce(self, t: torch.Tensor, op: dist.ReduceOp) -> torch.Tensor:
        t = t.clone()
        if self.mesh is not None:
            dist.all_reduce(t, op=op)
        return t


def init_distributed(device: str | None = None, *, cp: int = 1) -> Distributed:
    """Join the torchrun group if there is one; otherwise a single process on ``device``. ``cp``
    processes share each row (context parallelism); it must divide the number of processes."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cp < 1 or world_size % cp:
        raise ValueError(
            f"--cp {cp} does not divide the {world_size} process(es); launch a multiple of {cp} processes "
            f"with torchrun --nproc_per_node (or lower --cp)"
        )
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
    mesh = init_device_mesh(dev.type, (world_size,), mesh_dim_names=("fsdp",))
    grid = init_device_mesh(dev.type, (world_size // cp, cp), mesh_dim_names=("dp", "cp"))  # rank = dp x cp + c
    cp_group = grid.get_group("cp") if cp > 1 else None
    return Distributed(rank=dist.get_rank(), world_size=world_size, device=dev, mesh=mesh, cp=cp, cp_group=cp_group)


def build_model(
    cfg: ModelConfig,
    d: Distributed,
    *,
    seed: int,
    activation_checkpointing: bool = False,
    compile: bool = False,
    param_dtype: torch.dtype | None = None,
) -> Transformer:
    """The model with the same seeded initial weights at any world size.

    One process: built in place. Sharded, in torchtitan's order: built on the meta device, each
    block checkpointed (``activation_checkpointing``) inside its compile inside its ``fully_shard``,
    then the root ``fully_shard``-ed,
    storage allocated, and rank 0's seeded weights broadcast into the shards, so no other rank
    ever holds the whole model. ``param_dtype`` (bf16) is what FSDP gathers and computes in;
    gradients are reduced in fp32.
    """
    torch.manual_seed(seed)
    if d.mesh is None:
        model = Transformer(cfg).to(d.device)
    else:
        with torch.device("meta"):
            model = Transformer(cfg)
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    missing = compile and missing_compiler(d.device)
    if missing:
        if d.is_main:
            print(f"note: training without torch.compile: {missing}", file=sys.stderr)
        compile = False
    if compile:
        for layer in model.layers:
            layer.compile()
    if d.mesh is None:
        return model
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for layer in model.layers:
        fully_shard(layer, mesh=d.mesh, mp_policy=mp)
    fully_shard(model, mesh=d.mesh, mp_policy=mp)
    model.to_empty(device=d.device)
    if d.is_main:
        torch.manual_seed(seed)
        weights = Transformer(cfg).state_dict()  # (on the CPU) what one process would have built
    else:
        weights = {}
    set_full_weights(model, weights, broadcast=True)
    return model


def apply_activation_checkpointing(model: Transformer) -> None:
    """Recompute each block in the backward pass instead of keeping its activations: less memory,
    about a third more compute. State-dict keys (what checkpoints store) are unchanged."""
    for i, layer in enumerate(model.layers):
        model.layers[i] = checkpoint_wrapper(layer, checkpoint_impl=CheckpointImpl.NO_REENTRANT)


def missing_compiler(device: torch.device) -> str | None:
    """What torch.compile would need and does not find here (None when it can run)."""
    if device.type == "cpu":
        compilers = (os.environ.get("CXX"), "g++", "c++", "clang++")
        if not any(shutil.which(c) for c in compilers if c):
            return "no C++ compiler on PATH (install g++ or clang++)"
    elif device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    return None


def set_full_weights(model: Transformer, weights: dict[str, torch.Tensor], *, broadcast: bool) -> None:
    """Load a full (unsharded) state dict; with ``broadcast``, rank 0's copy goes to every shard
    and the other ranks pass ``{}``."""
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=broadcast)
    set_model_state_dict(model, full_weights(model.cfg, weights), options=options)


def shutdown(d: Distributed) -> None:
    if d.mesh is not None and dist.is_initialized():
        dist.destroy_process_group()
