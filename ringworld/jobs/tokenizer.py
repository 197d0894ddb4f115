"""`ringworld tokenizer train`: text BPE on world captions, vision autoencoder on world frames,
then reconstruction metrics on held-out frames judged by the world's oracle."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ringworld.io import atomic_directory
from ringworld.tokens.bundle import load_codec, save_tokenizers
from ringworld.tokens.text import train_text_tokenizer
from ringworld.tokens.vision import VisionConfig, VisionTokenizer, psnr, train_vision_tokenizer
from ringworld.world.oracle import agreement
from ringworld.world.sim import State, WorldConfig, random_state, render
from ringworld.world.tasks import TaskConfig, caption_corpus

HELD_OUT_SEED = 1_000_003  # held-out frames come from a seed training never uses


def world_frames(rng: np.random.Generator, n: int, world: WorldConfig) -> tuple[np.ndarray, list[State]]:
    """``n`` random scenes (half with an agent) rendered: (n, H, W, 3) uint8 and their states."""
    states = [random_state(rng, world, agent=bool(rng.integers(2))) for _ in range(n)]
    return render(states), states


def evaluate_vision(vision: VisionTokenizer, world: WorldConfig, n: int = 2000) -> dict:
    """Reconstruction quality on ``n`` held-out frames: PSNR, oracle agreement (the oracle reads
    the same objects, colours, shapes and exact positions from the reconstruction as from the
    state), and the fraction of the codebook the frames use."""
    frames, states = world_frames(np.random.default_rng(HELD_OUT_SEED), n, world)
    codes = vision.encode(frames)
    recon = vision.decode(codes)
    return {
        "psnr": round(psnr(frames, recon), 3),
        "oracle_agreement": agreement(recon, states, tolerance=0),
        "oracle_agreement_1px": agreement(recon, states, tolerance=1),
        "codebook_utilization": round(len(np.unique(codes)) / vision.num_codes, 4),
        "eval_frames": n,
    }


def train_tokenizers(
    out: str | Path,
    *,
    world: WorldConfig = WorldConfig(),
    vision: VisionConfig | None = None,
    text_vocab_size: int = 512,
    corpus_scenes: int = 5000,
    steps: int = 6000,
    lr: float = 5e-3,
    max_seconds: float | None = 240.0,
    batch_size: int = 64,
    seed: int = 0,
    eval_frames: int = 2000,
    progress: bool = True,
) -> dict:
    """Train both tokenizers, write them atomically to ``out`` with ``metrics.json``; return the metrics."""
    vision = vision or VisionConfig(frame_size=world.frame_size)
    if vision.frame_size != world.frame_size:
        raise ValueError(
            f"the vision tokenizer takes {vision.frame_size}px frames but the world renders "
            f"{world.frame_size}px; give both the same --frame-size"
        )
    torch.manual_seed(seed)
    text = train_text_tokenizer(caption_corpus(corpus_scenes, seed, TaskConfig(world=world)), text_vocab_size)
    rng = np.random.default_rng(seed)
    result = train_vision_tokenizer(
        lambda n: world_frames(rng, n, world)[0],
        vision,
        steps=steps,
        lr=lr,
        max_seconds=max_seconds,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )
    metrics = evaluate_vision(result.model, world, eval_frames)
    metrics.update(
        train_seconds=round(result.seconds, 1),
        train_steps=result.steps,
        final_loss=round(float(np.mean(result.losses[-50:])), 6),
        text_vocab_size=text.vocab_size,
        num_codes=vision.num_codes,
        grid=list(vision.grid),
        world=asdict(world),
        vision=asdict(vision),
    )
    with atomic_directory(out) as tmp:
        save_tokenizers(tmp, text, result.model)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def tokenizer_world(directory: str | Path) -> WorldConfig:
    """The world a tokenizer directory was trained on (recorded in its metrics.json; the default
    world at the tokenizer's frame size for a directory without one)."""
    metrics_path = Path(directory) / "metrics.json"
    recorded = json.loads(metrics_path.read_text()).get("world") if metrics_path.exists() else None
    if recorded:
        return WorldConfig(**recorded)
    vision = json.loads((Path(directory) / "vision" / "config.json").read_text())
    return WorldConfig(frame_size=vision["frame_size"])


def evaluate_tokenizer_dir(directory: str | Path, eval_frames: int = 2000) -> dict:
    """Metrics of a saved tokenizer directory on held-out frames of the world it was trained on."""
    return evaluate_vision(load_codec(directory).vision, tokenizer_world(directory), eval_frames)
