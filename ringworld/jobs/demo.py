"""`ringworld demo` (what `make demo` runs): the whole idea on the built-in world, in minutes on a CPU.

Sample the world, train the tokenizers, train the ``tiny`` world model, judge it with the oracle
and write the report. Every stage runs a fixed number of steps on a fixed number of threads
(``DemoConfig``), so one commit prints the same figures on every run on one machine; only the
wall time depends on the machine's speed. Across machines the figures may differ by what the
machine changes in the arithmetic: its BLAS kernels, and whether it trains in bf16 (CPUs with
AVX512-BF16 or AMX do, others train in fp32; ``ringworld.perf.fast_bf16``).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ringworld.device import default_device
from ringworld.io import atomic_write_text
from ringworld.jobs.tokenizer import train_tokenizers
from ringworld.perf import fast_bf16
from ringworld.tokens.vision import VisionConfig
from ringworld.world.export import write_samples
from ringworld.world.sim import WorldConfig

# The demo's world: 8 px sprites on a lattice of whole sprites in 48 px frames, one vision code per
# 8 px patch, each code a function of its own patch alone (``kernel=1``). Every object is then
# exactly one code, the same wherever it stands, and a scene is a 6x6 grid of them, which a
# 3.7M-weight model learns to draw, describe and roll forward within the CPU budget. The 3x3 caption
# regions are 2x2 cells each.
DEMO_WORLD = WorldConfig(frame_size=48, object_size=8, snap=8)
DEMO_VISION = VisionConfig(frame_size=48, patch=8, kernel=1)

# Steps, not seconds: the same figures on every run. Sized on a 2-core AVX2 CPU (docs/results.md,
# #20): 1,200 tokenizer steps are the fewest measured that reconstruct every held-out frame (800:
# 92 %), and 400 model steps keep `make demo`, install included, near 12 of its 15 minutes there.
TOKENIZER_STEPS = 1200
TRAIN_STEPS = 400
LOG_EVERY = 25  # training steps between logged records (and held-out curves' and judges' multiples)

SUMMARY_KEYS = (
    "t2i_accuracy",
    "caption_accuracy",
    "t2v_accuracy",
    "predict_accuracy",
    "action_accuracy",
    "action_accuracy_mean",
    "qa_accuracy",
    "perplexity_text",
    "perplexity_vision",
    "tokenizer_psnr",
)


@dataclass(frozen=True)
class DemoConfig:
    seed: int = 0
    world: WorldConfig = DEMO_WORLD
    vision: VisionConfig = DEMO_VISION
    threads: int = 2  # torch's CPU threads: the sums' order, and so every figure, depends on it
    tokenizer_steps: int = TOKENIZER_STEPS
    tokenizer_lr: float = 3e-3
    train_steps: int = TRAIN_STEPS
    samples: int = 100  # eval episodes per task
    preset: str = "tiny"
    eval_every: int = 50  # held-out learning curves (metrics.jsonl, TensorBoard, the report's plot)
    judge_every: int = 0  # judged curves (--judge-every): off, they add ~10 s a time; a longer recipe wants them
    compile: bool = False  # measured: compiled bf16 blocks are no faster on the CPU, and compiling costs ~20 s

    def __post_init__(self) -> None:  # before the tokenizers train, not after
        if self.judge_every % LOG_EVERY:
            raise ValueError(f"--judge-every must be a multiple of {LOG_EVERY}, the demo's logging interval")


def run_demo(out: str | Path, cfg: DemoConfig = DemoConfig()) -> dict:
    """Run every stage into ``out`` and write ``out/summary.json``; returns the summary."""
    from ringworld.eval.report import write_report
    from ringworld.eval.world import TrainingJudge, evaluate
    from ringworld.infer.tasks import load_world_model
    from ringworld.train.config import TrainConfig
    from ringworld.train.loop import train

    out = Path(out)
    start = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    print(f"[1/5] sampling the sprite world -> {out}/samples")
    write_samples(out / "samples", 16, seed=cfg.seed, config=cfg.world)

    print(f"[2/5] training the tokenizers ({cfg.tokenizer_steps} steps) -> {out}/tokenizer")
    tok = train_tokenizers(
        out / "tokenizer",
        world=cfg.world,
        vision=cfg.vision,
        lr=cfg.tokenizer_lr,
        steps=cfg.tokenizer_steps,
        max_seconds=None,
        seed=cfg.seed,
        eval_frames=500,
    )

    run = out / "model"
    if run.exists():
        print(f"      (removing the previous demo's model in {run})")
        shutil.rmtree(run)
    print(f"[3/5] training the {cfg.preset} world model ({cfg.train_steps} steps) -> {run}")
    train_cfg = TrainConfig(
        out=str(run),
        tokenizer=str(out / "tokenizer"),
        preset=cfg.preset,
        steps=cfg.train_steps,
        max_seconds=0,
        save_every=cfg.train_steps,
        log_every=LOG_EVERY,
        eval_every=cfg.eval_every,
        judge_every=cfg.judge_every,
        compile=cfg.compile,
        seed=cfg.seed,
    )
    judge = TrainingJudge(train_cfg.video_frames) if cfg.judge_every else None
    trained = train(train_cfg, judge=judge)
    last = trained.history[-1] if trained.history else {}

    print(f"[4/5] evaluating with the oracle ({cfg.samples} held-out episodes per task) -> {out}/eval.json")
    wm = load_world_model(run)
    evaluation = evaluate(wm, samples=cfg.samples)
    atomic_write_text(out / "eval.json", json.dumps(evaluation.metrics, indent=2) + "\n")

    print(f"[5/5] writing the report -> {out}/report/report.html")
    page = write_report(out / "report", evaluation, run=run)

    summary = {key: evaluation.metrics[key] for key in SUMMARY_KEYS}
    device = default_device()
    summary.update(
        tokenizer_oracle_agreement=tok["oracle_agreement"],
        train_steps=last.get("step", 0),
        train_arithmetic=f"{'bf16' if fast_bf16(device) else 'fp32'} on {device.type}, {cfg.threads} threads",
        train_tokens_per_s=round(trained.tokens_seen / max(trained.seconds, 1e-9)),
        train_final_loss=round(last.get("loss", float("nan")), 4),
        wall_seconds=round(time.perf_counter() - start, 1),
    )
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    print("\n" + summary_table(summary))
    print(f"\nopen {page} in a browser; figures in {out}/summary.json and {out}/eval.json")
    return summary


def summary_table(summary: dict) -> str:
    width = max(map(len, summary))
    lines = ["ringworld demo summary"]
    for key, value in summary.items():
        shown = "  ".join(f"{v:.3f}" for v in value) if isinstance(value, list) else value
        lines.append(f"  {key:<{width}}  {shown}")
    return "\n".join(lines)
