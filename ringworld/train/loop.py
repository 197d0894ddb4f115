"""``ringworld train``: next-token prediction over packed, loss-balanced documents.

One process or many (``torchrun``, FSDP2) run the same code. Each optimizer step takes one global
batch of ``batch_size`` rows from the data source; rank ``r`` of ``W`` keeps its ``batch_size / W``
rows and splits them into ``grad_accum`` micro-batches. The balanced loss divides by the global
token count per modality, known before any forward, so the gradients equal one big batch's.
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm

from ringworld import schedule
from ringworld.data.packing import PAD_SEGMENT, PackedBatch
from ringworld.data.shards import ShardDataset
from ringworld.data.sources import ShardSource, WorldSource, world_source
from ringworld.io import atomic_directory, atomic_write_text
from ringworld.model.attention import document_runs
from ringworld.model.transformer import ModelConfig, Transformer
from ringworld.parallel.context import RingMask
from ringworld.parallel.mesh import Distributed, build_model, init_distributed, shutdown
from ringworld.parallel.ring import zigzag_shard
from ringworld.perf import fast_bf16, measured_peak_flops
from ringworld.tokens.bundle import load_codec, world_settings
from ringworld.tokens.codec import Codec
from ringworld.tokens.vocab import Vocab
from ringworld.train.checkpoint import (
    check_same_shape,
    checkpoint_name,
    latest_checkpoint,
    load_training_state,
    load_weights,
    read_config,
    resolve_checkpoint,
    save_checkpoint,
)
from ringworld.train.config import TrainConfig
from ringworld.train.curves import HeldOutCurves, follow_curves
from ringworld.train.loss import (
    LossWeights,
    background_logit_bias,
    balanced_loss,
    check_has_targets,
    modality_counts,
    modality_sums,
    most_frequent_code,
    per_modality_means,
    weigh_background,
)
from ringworld.train.metrics import MetricsLogger
from ringworld.train.optim import Optimizers, make_optimizer, set_hyperparameters


class Judge(Protocol):
    """Scores the live model every ``judge_every`` steps, e.g. ``ringworld.eval.world.TrainingJudge``."""

    def check(self, world_settings: dict) -> None:
        """Raise a ValueError, before training starts, if it cannot judge this world."""

    def __call__(
        self, model: torch.nn.Module, codec: Codec, world_settings: dict, logit_bias: torch.Tensor | None
    ) -> dict[str, float]:
        """Judged figures of the model as it is now."""


@dataclass
class TrainResult:
    run: Path
    checkpoint: Path | None
    history: list[dict]  # one entry per step trained in this call
    is_main: bool = True  # rank 0 (the process that prints)
    tokens_seen: int = 0  # real (not padding) tokens trained on, all ranks, this call
    seconds: float = 0.0  # training time of this call: its steps (compiling included), not checkpoints or curves


def lr_at(cfg: TrainConfig, step: int, elapsed: float) -> float:
    """The learning rate of ``step``: ``ringworld.schedule.warmup_cosine`` from ``cfg.lr``."""
    factor = schedule.warmup_cosine(
        step, warmup=cfg.warmup, steps=cfg.steps, seconds=elapsed, max_seconds=cfg.max_seconds, floor=cfg.min_lr_ratio
    )
    return cfg.lr * factor


def make_source(cfg: TrainConfig, codec, world: dict | None) -> WorldSource | ShardSource:
    """The batches of ``cfg.data``; ``world``: the tokenizer's world settings (``world_settings``), for world data."""
    if cfg.data == "world":
        return world_source(
            codec,
            world,
            video_frames=cfg.video_frames,
            seq_len=cfg.seq_len,
            rows=cfg.batch_size,
            seed=cfg.seed,
            task_weights=cfg.tasks,
            caption_dropout=cfg.caption_dropout,
            say_motion=cfg.say_motion,
        )
    dataset = ShardDataset(cfg.data)
    if dataset.vocab != codec.vocab:
        raise ValueError(
            f"{cfg.data} was ingested with another tokenizer than {cfg.tokenizer}; "
            f"ingest it again with `ringworld data ingest ... --tokenizer {cfg.tokenizer}`"
        )
    return ShardSource(
        dataset, seq_len=cfg.seq_len, rows=cfg.batch_size, seed=cfg.seed, caption_dropout=cfg.caption_dropout
    )


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
    """The rows of the global batch this process's data-parallel group takes (its cp ranks share them)."""
    per_group = cfg.batch_size // d.dp
    if cfg.batch_size % (d.dp * cfg.grad_accum):
        raise ValueError(
            f"batch size {cfg.batch_size} rows does not split over {d.dp} data-parallel group(s) x "
            f"{cfg.grad_accum} micro-batches; make it a multiple of {d.dp * cfg.grad_accum}"
        )
    return slice(d.dp_rank * per_group, (d.dp_rank + 1) * per_group)


def shard_rows(batch: PackedBatch, d: Distributed) -> PackedBatch:
    """This process's zigzag slice of every row (tokens, targets, positions, ... alike), for ring attention."""
    if d.cp_group is None:
        return batch
    return PackedBatch(**{f.name: zigzag_shard(getattr(batch, f.name), 1, d.cp_group) for f in fields(batch)})


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    stop_at: int | None = None,
    device: str | None = None,
    progress: bool = True,
    judge: Judge | None = None,
) -> TrainResult:
    """Train (or resume) the run ``cfg.out``; ``stop_at`` ends early at that step, with a checkpoint.
    A config with ``stages`` trains each stage in ``out/stage_K`` (see ``train_stages``). ``judge``
    scores the live model every ``cfg.judge_every`` steps (``ringworld.eval.world.TrainingJudge``:
    the layers above training pass it in)."""
    if cfg.judge_every and judge is None:
        raise ValueError("judge_every needs a judge: `ringworld train` passes the oracle's (eval.world.TrainingJudge)")
    d = init_distributed(device, cp=cfg.context_parallel)
    try:
        if judge is not None and d.world_size > 1:
            raise ValueError("the judge generates in the training process: run --judge-every on one process")
        if cfg.stages:
            return train_stages(cfg, d, resume=resume, progress=progress, judge=judge)
        return _train(cfg, d, resume=resume, stop_at=stop_at, progress=progress, judge=judge)
    finally:
        shutdown(d)


def train_stages(
    cfg: TrainConfig, d: Distributed, *, resume: bool, progress: bool, judge: Judge | None = None
) -> TrainResult:
    """Progressive context growth (LWM): each stage (its own length, RoPE theta and steps) is a run of
    its own in ``out/stage_K`` that starts from the previous stage's last weights (the first from
    ``init_from``, if given). Resuming finishes the stage in progress and runs the rest."""
    history: list[dict] = []
    tokens, seconds = 0, 0.0
    init_from = cfg.init_from
    for stage in cfg.stage_configs():
        latest = latest_checkpoint(stage.out)
        done = latest is not None and json.loads((latest / "trainer_state.json").read_text())["step"] >= stage.steps
        if not done:
            if d.is_main and progress:
                print(
                    f"stage {stage.out}: {stage.seq_len} tokens a row, RoPE theta {stage.model['rope_theta']:g}, "
                    f"{stage.steps} steps"
                )
            stage = replace(stage, init_from=init_from)
            result = _train(
                stage, d, resume=resume and latest is not None, stop_at=None, progress=progress, judge=judge
            )
            history += result.history
            tokens, seconds = tokens + result.tokens_seen, seconds + result.seconds
        init_from = stage.out
    last = latest_checkpoint(cfg.stage_configs()[-1].out)
    return TrainResult(Path(cfg.out), last, history, d.is_main, tokens, seconds)


def _train(
    cfg: TrainConfig, d: Distributed, *, resume: bool, stop_at: int | None, progress: bool, judge: Judge | None
) -> TrainResult:
    run = Path(cfg.out)
    init = resolve_checkpoint(cfg.init_from) if cfg.init_from else None
    hf = read_config(init).get("hf") if init is not None else None  # the public family it was imported from
    if hf is not None and cfg.data == "world":
        raise ValueError(
            f"{cfg.init_from} was imported from a Hugging Face folder ({hf['family']}): it trains on your data, not "
            f"the world's; ingest it with `ringworld data ingest SOURCE --tokenizer {cfg.init_from} --out SHARDS` "
            "and pass --data SHARDS"
        )
    if init is not None and not cfg.tokenizer:
        cfg = replace(cfg, tokenizer=str(init / "tokenizer"))
    resume_from = _prepare_run(cfg, run, resume, d)
    codec = load_codec(run / "tokenizer")
    model_cfg = cfg.model_config(codec.vocab.size, base=read_config(init)["model"] if init is not None else None)
    bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and fast_bf16(d.device))
    model = build_model(
        model_cfg,
        d,
        seed=cfg.seed,
        activation_checkpointing=cfg.activation_checkpointing,
        compile=cfg.compile,
        param_dtype=torch.bfloat16 if bf16 else None,
    )
    model.attention_kernel = None if cfg.attention == "auto" else cfg.attention
    if init is not None and resume_from is None:
        check_same_shape(init, model_cfg)
        load_weights(init, model, d)
    optimizer = make_optimizer(model, cfg, d.device)
    settings = world_settings(run / "tokenizer") if cfg.data == "world" else None  # judge: world data only
    if judge is not None:
        judge.check(settings)  # now, not at the first judged step
    source = make_source(cfg, codec, settings)
    base_weights = source.mixture() if isinstance(source, WorldSource) else {}  # what follow_curves scales
    rows = _global_rows(cfg, d)
    # a family's inference adds no logit bias to undo the weight (ringworld.infer.imported): none is applied
    background = None if hf is not None else _background_code(source, codec.vocab, resume_from or init)
    background_id = None if background is None else codec.vocab.code_id(background)

    start, elapsed, tokens_seen = 0, 0.0, 0
    if resume_from is not None:
        state = load_training_state(resume_from, model, optimizer, d)
        set_hyperparameters(optimizer, cfg)  # the checkpoint's param groups carry the old ones
        source.load_state_dict(state["data"])
        if isinstance(source, WorldSource) and not cfg.follow_curves:  # the mixture asked for now, not the
            source.set_task_weights(base_weights)  # checkpoint's: --tasks may have changed, or stopped following
        start, elapsed, tokens_seen = state["step"], state["elapsed_seconds"], state["tokens_seen"]
    tokens_at_start, seconds_at_start = tokens_seen, elapsed
    config = {"model": model_cfg.to_dict(), "train": cfg.to_dict(), "background_code": background}
    if hf is not None:  # what load_imported and `export hf` read
        config["hf"] = hf
    curves = None
    if cfg.eval_every and isinstance(source, WorldSource) and background is not None:
        if d.cp_group is None:
            curves = HeldOutCurves(codec, source.task_config, background, seq_len=cfg.seq_len)
        elif d.is_main and progress:
            print("held-out curves are not measured under context parallelism (--cp > 1)")
    logit_bias = background_logit_bias(model_cfg.vocab_size, background_id, cfg.background_weight)
    if d.is_main:  # only now: a refused resume leaves the run's settings as they were
        atomic_write_text(run / "config.json", json.dumps(config, indent=2) + "\n")

    autocast = torch.autocast(d.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    peak = measured_peak_flops(d.device, torch.bfloat16 if bf16 else torch.float32) * d.world_size
    weights = LossWeights(cfg.text_weight, cfg.vision_weight)
    logger = MetricsLogger(run, cfg, d, start)

    def save(step: int) -> Path:
        trainer_state = {"step": step, "data": batches.state, "elapsed_seconds": elapsed}
        trainer_state |= {"tokens_seen": tokens_seen, "world_size": d.world_size}
        return save_checkpoint(run, step, model, optimizer, trainer_state, config, d, keep=cfg.keep)

    end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
    history: list[dict] = []
    checkpoint = resume_from
    total = None if cfg.max_seconds else cfg.steps  # under a time budget, a step count would promise a false ETA
    bar = tqdm(total=total, initial=start, desc="train", unit="step", disable=not (progress and d.is_main))
    if start == 0 and progress and d.is_main:  # tqdm.write prints even from a disabled bar
        layout = f" (dp {d.dp} x cp {d.cp})" if d.cp > 1 else ""
        bar.write(f"{model_cfg.num_params() / 1e6:.1f}M weights, {d.world_size} process(es){layout} on {d.device}")
    model.train()
    step = start
    window = {"tokens": 0, "flops": 0.0, "start": time.perf_counter()}
    with _StopRequest() as stop, bar, logger, _Prefetcher(source, rows, background=d.device.type != "cpu") as batches:
        while step < end:
            # one collective a step: every rank agrees on the clock and on a stop request
            asked, elapsed = stop.poll(d, elapsed)
            if asked or (cfg.max_seconds > 0 and elapsed >= cfg.max_seconds):
                if asked and d.is_main:
                    bar.write(f"stopping at step {step} as asked; saving a checkpoint (continue with --resume)")
                break
            t0 = time.perf_counter()
            lr = lr_at(cfg, step, elapsed)
            optimizer.scale_lr(lr / cfg.lr)
            batch = batches.next()  # this data-parallel group's whole rows
            if background_id is not None:
                batch = weigh_background(batch, background_id, cfg.background_weight)
            real, flops = batch.num_real_tokens() * d.dp, useful_flops(model_cfg, batch) * d.dp
            sums, counts, grad_norm = train_step(model, optimizer, shard_rows(batch, d), cfg, weights, d, autocast)
            step += 1
            elapsed += time.perf_counter() - t0
            tokens_seen += real
            window["tokens"] += real
            window["flops"] += flops
            record = {"step": step, "loss": float(balanced_loss(sums, counts, weights))}
            record |= {f"{name}_loss": value for name, value in per_modality_means(sums, counts).items()}
            record |= {"lr": lr, "grad_norm": grad_norm}
            history.append(record)
            bar.update(1)
            if step % cfg.log_every == 0 or step == end:
                seconds = time.perf_counter() - window["start"]
                record |= {
                    "tokens_per_s": window["tokens"] / seconds,
                    "mfu_measured_peak": window["flops"] / seconds / peak,
                }
                if curves is not None and (step % cfg.eval_every == 0 or step == end):
                    heldout = curves(model, logit_bias)
                    record |= {"seconds": elapsed} | {f"heldout/{k}": v for k, v in heldout.items()}
                if judge is not None and (step % cfg.judge_every == 0 or step == end):
                    judged = judge(model, codec, settings, logit_bias)
                    record |= {"seconds": elapsed} | {f"judged/{k}": v for k, v in judged.items()}
                    if cfg.follow_curves and step % cfg.judge_every == 0:  # on schedule alone: a run stopped
                        # and resumed (--stop-at) draws the same mixture as one run through
                        mixture = follow_curves(base_weights, judged)
                        batches.set_task_weights(mixture)
                        record |= {f"task_weight/{task}": round(w, 4) for task, w in mixture.items()}
                logger.log(record, bar)
            if step % cfg.save_every == 0 and step < end:
                checkpoint = save(step)
            if step % cfg.log_every == 0:
                window = {"tokens": 0, "flops": 0.0, "start": time.perf_counter()}
    if step > start and (checkpoint is None or checkpoint.name != checkpoint_name(step)):
        checkpoint = save(step)
    return TrainResult(run, checkpoint, history, d.is_main, tokens_seen - tokens_at_start, elapsed - seconds_at_start)


def _background_code(source: WorldSource | ShardSource, vocab: Vocab, earlier: Path | None) -> int | None:
    """The code whose targets ``background_weight`` weighs: an earlier checkpoint's (resume,
    ``init_from``), else the most frequent visual target of the first global batch (the same on
    every rank; the source is left where it was)."""
    if earlier is not None and "background_code" in read_config(earlier):
        return read_config(earlier)["background_code"]
    state = source.state_dict()
    batch = source.next_batch()
    source.load_state_dict(state)
    return most_frequent_code(batch, vocab)


def useful_flops(cfg: ModelConfig, batch: PackedBatch) -> float:
    """Training FLOPs of this rank's documents: 6 x matmul weights per token, plus causal attention
    within each document (6 x layers x width x length^2), padding excluded."""
    starts, lengths = document_runs(batch.segment_ids)
    lengths = lengths[batch.segment_ids.flatten()[starts] != PAD_SEGMENT].double()
    return float(cfg.flops_per_token(0) * lengths.sum() + 6 * cfg.n_layers * cfg.dim * (lengths**2).sum())


class _Prefetcher:
    """With ``background``, makes the next batch in a thread while the current step runs on the
    accelerator (world documents are rendered and encoded on the CPU); on a CPU-only machine the
    thread would only compete with the step for the same cores (measured: no gain), so batches are
    made in turn. ``state`` is the source's state after the last batch handed out: what a
    checkpoint must record."""

    def __init__(self, source: WorldSource | ShardSource, rows: slice, *, background: bool) -> None:
        self.source, self.rows, self.state = source, rows, source.state_dict()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ringworld-data") if background else None
        self.pending: Future | None = None

    def _make(self) -> tuple[PackedBatch, dict]:
        batch = self.source.next_batch(self.rows)
        return batch, self.source.state_dict()

    def set_task_weights(self, weights: dict[str, float]) -> None:
        """From the next batch handed out on, draw world documents with these task weights: a batch
        made ahead with the old ones is dropped and made again."""
        if self.pending is not None:
            self.pending.result()
            self.pending = None
            self.source.load_state_dict(self.state)
        self.source.set_task_weights(weights)
        self.state = self.source.state_dict()

    def next(self) -> PackedBatch:
        if self.pool is None:
            batch, self.state = self._make()
            return batch
        batch, self.state = (self.pending or self.pool.submit(self._make)).result()
        self.pending = self.pool.submit(self._make)
        return batch

    def __enter__(self) -> _Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


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

    def poll(self, d: Distributed, elapsed: float) -> tuple[bool, float]:
        """(whether any rank was asked to stop, the slowest rank's training time): all ranks must stop
        at the same step and follow the same time-based schedule."""
        if d.mesh is None:
            return self.requested, elapsed
        flags = torch.tensor([float(self.requested), elapsed], dtype=torch.float64, device=d.device)
        asked, slowest = d.all_reduce_max(flags).tolist()
        return asked > 0, slowest

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():  # signals reach only the main thread
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def train_step(
    model: Transformer,
    optimizer: Optimizers,
    batch: PackedBatch,  # this rank's rows of the global batch (its zigzag slices under cp), on the CPU
    cfg: TrainConfig,
    weights: LossWeights,
    d: Distributed,
    autocast,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One optimizer step; returns the global loss sums and counts per modality and the grad norm."""
    counts = d.all_reduce_sum(modality_counts(batch).to(d.device)).cpu()  # (M,) global denominators
    check_has_targets(counts, weights)  # once a step, on the CPU: no device sync per micro-batch
    counts = counts.to(d.device)
    micro = batch.shape[0] // cfg.grad_accum
    sums = torch.zeros_like(counts, dtype=torch.float32)
    for i in range(cfg.grad_accum):
        mb = batch.rows(slice(i * micro, (i + 1) * micro))
        # decided on the CPU copy, so the model never syncs an accelerator to ask; a ring's ranks must
        # agree, so under context parallelism segments always go
        one_document_rows = d.cp_group is None and bool((mb.segment_ids == mb.segment_ids[:, :1]).all())
        mb = mb.to(d.device)
        if d.mesh is not None:
            model.set_requires_gradient_sync(i == cfg.grad_accum - 1)
        segment_ids = None if one_document_rows else mb.segment_ids
        mask = None if d.cp_group is None else RingMask(segment_ids, d.cp_group)  # rows are zigzag shards
        with autocast:
            logits = model(mb.ids, segment_ids=segment_ids, positions=mb.positions, mask=mask)  # (b, T, V)
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
