"""Checkpoints: self-contained, resumable at any world size, written so a crash keeps the last good one.

RUN/checkpoints/step_0000100/
    model.safetensors       the full weights (gathered from every shard), loadable on its own
    config.json             model and training config
    tokenizer/              the tokenizer directory the model reads and writes
    trainer_state.json      step, data-sampler state, tokens seen, time spent (the lr schedule is a
                            function of these and config.json, so this is the scheduler's state)
    optimizer/              AdamW state, sharded with torch.distributed.checkpoint (reshards on load)
    rng/rank_<r>.pt         each process's torch RNG state
RUN/checkpoints/latest      the name of the newest complete checkpoint

Every rank writes into ``.step_N.tmp``; only when all are done does rank 0 rename it into place
and point ``latest`` at it, so ``latest`` always names a whole checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from ringworld.io import atomic_directory, atomic_write_text
from ringworld.model.transformer import ModelConfig, Transformer, stored_weights
from ringworld.parallel.mesh import Distributed, set_full_weights

FORMAT = "ringworld-checkpoint/1"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
WEIGHTS = "model.safetensors"


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def latest_checkpoint(run: str | Path) -> Path | None:
    pointer = Path(run) / CHECKPOINTS / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    path = pointer.parent / name
    return path if name and path.is_dir() else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from itself, a run directory (its latest checkpoint) or a run of
    context-growth stages (the latest checkpoint of its last stage that has one)."""
    path = Path(path)
    if (path / WEIGHTS).is_file():
        return path
    latest = latest_checkpoint(path)
    stages = sorted(path.glob("stage_*"), key=lambda p: int(p.name[6:]) if p.name[6:].isdigit() else -1)
    for stage in reversed(stages if latest is None else []):
        latest = latest_checkpoint(stage)
        if latest is not None:
            break
    if latest is None:
        raise FileNotFoundError(
            f"{path} is neither a checkpoint (no {WEIGHTS}) nor a run with one (no {CHECKPOINTS}/{LATEST}); "
            f"train one with `ringworld train --out {path}`"
        )
    return latest


@contextmanager
def _quiet_dcp() -> Iterator[None]:
    """DCP warns that it runs without a process group; for one process that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def save_checkpoint(
    run: Path,
    step: int,
    model: Transformer,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict,
    config: dict,
    d: Distributed,
    *,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` of ``run`` (collective: every rank calls it). Returns its path."""
    ckpts = run / CHECKPOINTS
    name = checkpoint_name(step)
    tmp = ckpts / f".{name}.tmp"
    if d.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "rng").mkdir(parents=True)
    d.barrier()

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    optim = get_optimizer_state_dict(model, optimizer)
    with _quiet_dcp():
        dcp.save({"optimizer": optim}, checkpoint_id=tmp / "optimizer")
    torch.save(_rng_state(d.device), tmp / "rng" / f"rank_{d.rank}.pt")
    if d.is_main:
        full = stored_weights(model.cfg, full)  # safetensors stores a tied tensor once
        save_file({k: v.contiguous() for k, v in full.items()}, tmp / WEIGHTS, metadata={"format": FORMAT})
        (tmp / "config.json").write_text(json.dumps({"format": FORMAT, **config}, indent=2) + "\n")
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2) + "\n")
        shutil.copytree(run / "tokenizer", tmp / "tokenizer")
    d.barrier()

    final = ckpts / name
    if d.is_main:
        _fsync_tree(tmp)  # the data is on disk before the rename makes it the checkpoint
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_text(ckpts / LATEST, name + "\n")
        _prune(ckpts, keep)
    d.barrier()
    return final


def save_model_checkpoint(
    run: Path, step: int, model: Transformer, config: dict, write_tokenizer: Callable[[Path], None]
) -> Path:
    """Write checkpoint ``step`` of ``run`` holding weights alone, no optimizer state: a model made
    elsewhere (``ringworld import hf``). ``load_model`` reads it and ``--init-from`` trains from it.
    ``write_tokenizer(dir)`` fills its tokenizer directory. Atomic: a crash leaves no half checkpoint."""
    ckpts = run / CHECKPOINTS
    name = checkpoint_name(step)
    with atomic_directory(ckpts / name) as tmp:
        weights = stored_weights(model.cfg, model.state_dict())
        save_file({k: v.contiguous() for k, v in weights.items()}, tmp / WEIGHTS, metadata={"format": FORMAT})
        (tmp / "config.json").write_text(json.dumps({"format": FORMAT, **config}, indent=2) + "\n")
        (tmp / "tokenizer").mkdir()
        write_tokenizer(tmp / "tokenizer")
        _fsync_tree(tmp)
    atomic_write_text(ckpts / LATEST, name + "\n")
    return ckpts / name


def _fsync_tree(root: Path) -> None:
    for path in [*root.rglob("*"), root]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _prune(ckpts: Path, keep: int) -> None:
    steps = sorted(p for p in ckpts.glob("step_*") if p.is_dir())
    for old in steps[: max(0, len(steps) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def read_config(checkpoint: Path) -> dict:
    path = checkpoint / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path} ({e}); the checkpoint is damaged: use an earlier one") from e
    if config.get("format") != FORMAT:
        raise ValueError(f"{path} has format {config.get('format')!r}; this ringworld reads {FORMAT!r}")
    return config


def load_weights(checkpoint: Path, model: Transformer, d: Distributed | None = None) -> None:
    """Copy the checkpoint's full weights into ``model``. Sharded: rank 0 reads the file and
    broadcasts, each rank keeps its shard (no rank but 0 ever holds the whole model)."""
    sharded = d is not None and d.mesh is not None
    weights = _read_weights(checkpoint / WEIGHTS) if not sharded or d.is_main else {}
    try:
        set_full_weights(model, weights, broadcast=sharded)
    except RuntimeError as e:  # other names or shapes than its config.json says
        first = str(e).strip().splitlines()[0]
        raise ValueError(
            f"{checkpoint / WEIGHTS} does not fit its config.json ({first}); use another checkpoint"
        ) from None


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's weights; a missing, truncated or foreign file is a ValueError saying so."""
    if not path.exists():
        raise ValueError(f"{path} is missing: the checkpoint is incomplete; use another one (or the run's latest)")
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error types (SafetensorError, and others)
        raise ValueError(
            f"{path} cannot be read ({e}): the file is truncated or not safetensors; use another checkpoint"
        ) from None


# what the weights are and mean: a resumed run keeps these
ARCHITECTURE_KEYS = (
    *("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "tie_embeddings"),
    *("qk_norm", "qk_norm_per_head", "post_norm"),
)


def check_same_shape(checkpoint: Path, cfg: ModelConfig) -> None:
    """A resumed run may change RoPE theta or context length (context growth), not the weights' shapes
    or what they mean (a key an older checkpoint lacks has its default)."""
    saved = asdict(ModelConfig.from_dict(read_config(checkpoint)["model"]))
    changed = {k: (saved[k], getattr(cfg, k)) for k in ARCHITECTURE_KEYS if saved[k] != getattr(cfg, k)}
    if changed:
        detail = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
        raise ValueError(f"{checkpoint} holds a model of another shape ({detail}); resume with its settings")


def load_training_state(checkpoint: Path, model: Transformer, optimizer: torch.optim.Optimizer, d: Distributed) -> dict:
    """Restore weights, optimizer and (same world size) RNG; return the trainer state."""
    check_same_shape(checkpoint, model.cfg)
    load_weights(checkpoint, model, d)
    _materialize_optimizer_state(optimizer)
    optim = get_optimizer_state_dict(model, optimizer)
    with _quiet_dcp():
        dcp.load({"optimizer": optim}, checkpoint_id=checkpoint / "optimizer")
    set_optimizer_state_dict(model, optimizer, optim)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    rng = checkpoint / "rng" / f"rank_{d.rank}.pt"
    if state.get("world_size") == d.world_size and rng.is_file():
        saved = torch.load(rng, weights_only=True)
        torch.set_rng_state(saved["cpu"])
        if "cuda" in saved and d.device.type == "cuda":
            torch.cuda.set_rng_state(saved["cuda"], d.device)
    return state


@torch.no_grad()
def _materialize_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Give a fresh optimizer its state tensors (a step with zero gradients at lr 0, which changes
    no weight), so a checkpoint's state has somewhere to load into."""
    lrs = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
        for p in group["params"]:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[Transformer, Path]:
    """The model of a checkpoint (or a run's latest one), in eval mode, for inference."""
    checkpoint = resolve_checkpoint(path)
    cfg = ModelConfig.from_dict(read_config(checkpoint)["model"])
    model = Transformer(cfg)
    load_weights(checkpoint, model)
    return model.to(device).eval(), checkpoint
