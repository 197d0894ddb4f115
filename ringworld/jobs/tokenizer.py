"""`ringworld tokenizer train`: text BPE on world captions, vision autoencoder on world frames,
then reconstruction metrics on held-out frames judged by the world's oracle."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ringworld.eval.tokenizer import evaluate_vision
from ringworld.io import atomic_directory
from ringworld.tokens.bundle import load_codec, save_tokenizers, world_settings
from ringworld.tokens.text import train_text_tokenizer
from ringworld.tokens.vision import VisionConfig, train_vision_tokenizer
from ringworld.world.sim import WorldConfig, random_frames
from ringworld.world.tasks import TaskConfig, caption_corpus


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
    delta_frames: bool = True,
) -> dict:
    """Train both tokenizers, write them atomically to ``out`` with ``metrics.json``; return the metrics.
    ``delta_frames``: the codec writes video frames after the first as their changes (``tokens.codec``)."""
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
        lambda n: random_frames(rng, n, world)[0],
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
        save_tokenizers(tmp, text, result.model, delta_frames=delta_frames)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def evaluate_tokenizer_dir(directory: str | Path, eval_frames: int = 2000) -> dict:
    """Metrics of a saved tokenizer directory on held-out frames of the world it was trained on."""
    return evaluate_vision(load_codec(directory).vision, WorldConfig(**world_settings(directory)), eval_frames)
