"""``ringworld train``: next-token prediction over packed, loss-balanced documents.

One process or many (``torchrun``, FSDP2) run the same code. Each optimizer step takes one global
batch of ``batch_size`` rows from the data source; rank ``r`` of ``W`` keeps its ``batch_size / W``
rows and splits them into ``grad_accum`` micro-batches. The balanced loss divides by the global
token count per modality, known before any forward, so the gradients equal one big batch's.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ringworld.data.packing import PackedBatch
from ringworld.data.shards import ShardDataset
from ringworld.data.sources import ShardSource, WorldSource
from ringworld.io import atomic_directory
from ringworld.model.transformer import Transformer
from ringworld.parallel.mesh import Distributed, apply_fsdp, init_distributed
from ringworld.perf import measured_peak_flops
from ringworld.tokens.bundle import load_codec
from ringworld.train.checkpoint import checkpoint_name, latest_checkpoint, load_training_state, save_checkpoint
from ringworld.train.config import TrainConfig
from ringworld.train.loss import LossWeights, balanced_loss, modality_counts, modality_sums, per_modality_means
from ringworld.world.tasks import TaskConfig


@dataclass
class TrainResult:
    run: Path
    checkpoint: Path | None
    history: list[dict]  # one entry per step trained in this call
    is_main: bool = True  # rank 0 (the process that prints)


def lr_at(cfg: TrainConfig, step: int, elapsed: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine to ``min_lr_ratio`` x lr. With a time budget,
    progress is whichever of steps and seconds is further along."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    if cfg.max_seconds > 0:
        progress = max(progress, elapsed / cfg.max_seconds)
    progress = min(1.0, progress)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: Transformer, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW (the fused kernel where there is one: 3-5x faster steps on CPU than foreach); matrices
    decay, norms do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=1e-8, fused=device.type in ("cpu", "cuda"))


def make_source(cfg: TrainConfig, codec) -> WorldSource | ShardSource:
    if cfg.data == "world":
        return WorldSource(
            codec,
            seq_len=cfg.seq_len,
            rows=cfg.batch_size,
            seed=cfg.seed,
            task_weights=cfg.tasks,
            task_config=TaskConfig(video_frames=cfg.video_frames),
            caption_dropout=cfg.caption_dropout,
        )
    dataset = ShardDataset(cfg.data)
    if dataset.vocab != codec.vocab:
        raise ValueError(
            f"{cfg.data} was ingested with another tokenizer than {cfg.tokenizer}; "
            f"ingest it again with `ringworld data ingest ... --tokenizer {cfg.tokenizer}`"
        )
    return ShardSource(dataset, seq_len=cfg.seq_len, rows=cfg.batch_size, seed=cfg.seed)


def _prepare_run(cfg: TrainConfig, run: Path, resume: bool, d: Distributed) -> Path | None:
    """Create the run directory (or find where to resume); returns the checkpoint to resume from."""
    checkpoint = latest_checkpoint(run)
    if resume:
        if checkpoint is None:
            raise FileNotFoundError(f"{run} has no checkpoint to resume from; drop --resume to start a new run")
        return checkpoint
    if checkpoint is not None:
        raise FileExistsError(f"{run} already holds a training run; pass --resume to continue it or pick another --out")
    if d.is_main:
        if not cfg.tokenizer:
            raise ValueError("no tokenizer given; pass --tokenizer DIR (made by `ringworld tokenizer train`)")
        load_codec(cfg.tokenizer)  # fail early, with its own clear error, on a bad directory
        run.mkdir(parents=True, exist_ok=True)
        with atomic_directory(run / "tokenizer") as tmp:
            shutil.copytree(cfg.tokenizer, tmp, dirs_exist_ok=True)
    d.barrier()
    return None


def _global_rows(cfg: TrainConfig, d: Distributed) -> slice:
    per_rank = cfg.batch_size // d.world_size
    if cfg.batch_size % (d.world_size * cfg.grad_accum):
        raise ValueError(
            f"batch size {cfg.batch_size} rows does not split over {d.world_size} process(es) x "
            f"{cfg.grad_accum} micro-batches; make it a multiple of {d.world_size * cfg.grad_accum}"
        )
    return slice(d.rank * per_rank, (d.rank + 1) * per_rank)


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    stop_at: int | None = None,
    device: str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train (or resume) the run ``cfg.out``; ``stop_at`` ends early at that step, with a checkpoint."""
    d = init_distributed(device)
    run = Path(cfg.out)
    resume_from = _prepare_run(cfg, run, resume, d)
    codec = load_codec(run / "tokenizer")
    model_cfg = cfg.model_config(codec.vocab.size)
    config = {"model": model_cfg.to_dict(), "train": cfg.to_dict()}
    if d.is_main:
        (run / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    torch.manual_seed(cfg.seed)  # every rank builds the same weights, then keeps its shard
    model = Transformer(model_cfg).to(d.device)
    model.activation_checkpointing = cfg.activation_checkpointing
    if cfg.compile:
        for layer in model.layers:
            layer.compile()
    if d.mesh is not None:
        apply_fsdp(model, d.mesh)
    optimizer = make_optimizer(model, cfg, d.device)
    source = make_source(cfg, codec)
    rows = _global_rows(cfg, d)

    start, elapsed, tokens_seen = 0, 0.0, 0
    if resume_from is not None:
        state = load_training_state(resume_from, model, optimizer, d)
        source.load_state_dict(state["data"])
        start, elapsed, tokens_seen = state["step"], state["elapsed_seconds"], state["tokens_seen"]

    bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and d.device.type != "cpu")
    autocast = torch.autocast(d.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    peak = measured_peak_flops(d.device, torch.bfloat16 if bf16 else torch.float32) * d.world_size
    flops_per_token = model_cfg.flops_per_token(cfg.seq_len)
    weights = LossWeights(cfg.text_weight, cfg.vision_weight)
    logger = _Logger(run, cfg, d, start)

    def trainer_state(step: int) -> dict:
        return {
            "step": step,
            "data": source.state_dict(),
            "schedule": {"lr": cfg.lr, "warmup": cfg.warmup, "steps": cfg.steps, "min_lr_ratio": cfg.min_lr_ratio},
            "elapsed_seconds": elapsed,
            "tokens_seen": tokens_seen,
            "world_size": d.world_size,
        }

    def save(step: int) -> Path:
        return save_checkpoint(run, step, model, optimizer, trainer_state(step), config, d, keep=cfg.keep)

    end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
    history: list[dict] = []
    checkpoint = resume_from
    bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", disable=not (progress and d.is_main))
    model.train()
    step = start
    window_tokens, window_start = 0, time.perf_counter()
    with _StopRequest() as stop, bar, logger:
        while step < end and not (cfg.max_seconds > 0 and elapsed >= cfg.max_seconds):
            if stop.requested_anywhere(d):
                bar.write(f"stopping at step {step} as asked; saving a checkpoint (continue with --resume)")
                break
            t0 = time.perf_counter()
            lr = lr_at(cfg, step, elapsed)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = source.next_batch(rows)
            sums, counts, grad_norm = train_step(model, optimizer, batch, cfg, weights, d, autocast)
            step += 1
            elapsed += time.perf_counter() - t0
            tokens = batch.ids.numel() * d.world_size
            tokens_seen += tokens
            window_tokens += tokens
            record = {"step": step, "loss": float(balanced_loss(sums, counts, weights))}
            record |= {f"{name}_loss": value for name, value in per_modality_means(sums, counts).items()}
            record |= {"lr": lr, "grad_norm": grad_norm}
            history.append(record)
            bar.update(1)
            last = step == end or (cfg.max_seconds > 0 and elapsed >= cfg.max_seconds)
            if step % cfg.log_every == 0 or last:
                record["tokens_per_s"] = window_tokens / (time.perf_counter() - window_start)
                record["mfu"] = record["tokens_per_s"] * flops_per_token / peak
                logger.log(record, bar)
            if step % cfg.save_every == 0 and not last:
                checkpoint = save(step)
            if step % cfg.log_every == 0:
                window_tokens, window_start = 0, time.perf_counter()
    if step > start and (checkpoint is None or checkpoint.name != checkpoint_name(step)):
        checkpoint = save(step)
    return TrainResult(run, checkpoint, history, d.is_main)


class _StopRequest:
    """The first SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption) asks training to stop after the
    step in flight, with a checkpoint; a second SIGINT stops at once (the last checkpoint stands)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def requested_anywhere(self, d: Distributed) -> bool:
        """Whether any rank was asked (all ranks must stop at the same step)."""
        if d.mesh is None:
            return self.requested
        return bool(d.all_reduce_sum(torch.tensor([float(self.requested)], device=d.device)).item() > 0)

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():  # signals reach only the main thread
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def train_step(
    model: Transformer,
    optimizer: torch.optim.Optimizer,
    batch: PackedBatch,  # this rank's rows of the global batch
    cfg: TrainConfig,
    weights: LossWeights,
    d: Distributed,
    autocast,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One optimizer step; returns the global loss sums and counts per modality and the grad norm."""
    counts = d.all_reduce_sum(modality_counts(batch).to(d.device))  # (M,) global denominators
    micro = batch.shape[0] // cfg.grad_accum
    sums = torch.zeros_like(counts, dtype=torch.float32)
    for i in range(cfg.grad_accum):
        mb = batch.rows(slice(i * micro, (i + 1) * micro)).to(d.device)
        if d.mesh is not None:
            model.set_requires_gradient_sync(i == cfg.grad_accum - 1)
        with autocast:
            logits = model(mb.ids, segment_ids=mb.segment_ids, positions=mb.positions)  # (b, T, V)
        mb_sums = modality_sums(logits, mb)
        # FSDP averages gradients over ranks; the loss already divides by global counts, so undo it
        (balanced_loss(mb_sums, counts, weights) * d.world_size).backward()
        sums += mb_sums.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    if hasattr(grad_norm, "full_tensor"):
        grad_norm = grad_norm.full_tensor()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return d.all_reduce_sum(sums).cpu(), counts.cpu(), float(grad_norm)


TENSORBOARD_TAGS = {
    "loss": "loss/balanced",
    "text_loss": "loss/text",
    "vision_loss": "loss/vision",
    "lr": "optim/lr",
    "grad_norm": "optim/grad_norm",
    "tokens_per_s": "speed/tokens_per_s",
    "mfu": "speed/mfu",
}


class _Logger:
    """metrics.jsonl (one line per logged step, truncated back to ``start`` on resume), TensorBoard
    scalars and the progress bar's postfix; rank 0 only."""

    def __init__(self, run: Path, cfg: TrainConfig, d: Distributed, start: int) -> None:
        self.active = d.is_main
        self.writer = None
        if not self.active:
            return
        path = run / "metrics.jsonl"
        kept = (
            [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= start]
            if path.exists()
            else []
        )
        path.write_text("".join(line + "\n" for line in kept))
        self.file = path.open("a")
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run / "tensorboard"), purge_step=start + 1 if start else None)

    def log(self, record: dict, bar: tqdm) -> None:
        if not self.active:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        bar.set_postfix_str(
            f"loss {record['loss']:.3f} text {record['text_loss']:.3f} vision {record['vision_loss']:.3f} "
            f"{record['tokens_per_s']:,.0f} tok/s MFU {record['mfu']:.1%}"
        )
        if self.writer is not None:
            for key, tag in TENSORBOARD_TAGS.items():
                if math.isfinite(record[key]):
                    self.writer.add_scalar(tag, record[key], record["step"])

    def __enter__(self) -> _Logger:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.active:
            self.file.close()
            if self.writer is not None:
                self.writer.close()
