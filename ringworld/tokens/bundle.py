"""A tokenizer directory: everything that turns documents into ids, saved together.

DIR/tokenizer.json          text BPE (Hugging Face tokenizers)
DIR/vision/config.json      vision autoencoder config
DIR/vision/model.safetensors
DIR/vocab.json              id ranges of the one vocabulary (cells: video frames as changes), the image grid
DIR/metrics.json            how well the vision tokenizer reconstructs, and the world it was trained on

A run made by `ringworld import hf` has a tokenizer directory of another kind: DIR/hf/, the public
family's own files (``ringworld.tokens.family``). ``load_codec`` reads either.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ringworld.tokens.codec import Codec
from ringworld.tokens.family import HF_DIR, FamilyCodec
from ringworld.tokens.text import TextTokenizer
from ringworld.tokens.vision import VisionTokenizer
from ringworld.tokens.vocab import Vocab


def save_tokenizers(
    directory: str | Path, text: TextTokenizer, vision: VisionTokenizer, *, delta_frames: bool = True
) -> None:
    """Write a tokenizer directory (use ``ringworld.io.atomic_directory`` around it to be atomic);
    ``delta_frames``: its codec writes video frames after the first as their changes."""
    directory = Path(directory)
    text.save(directory)
    vision.save(directory / "vision")
    codec = Codec.build(text, vision, delta_frames=delta_frames)
    meta = {"vocab": codec.vocab.to_json(), "grid": list(codec.grid), "frame_size": vision.frame_size}
    (directory / "vocab.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_codec(directory: str | Path, device: str | torch.device = "cpu") -> Codec | FamilyCodec:
    """The codec of a tokenizer directory written by ``ringworld tokenizer train``, or of one in a run made
    by ``ringworld import hf`` (the family's codec)."""
    directory = Path(directory)
    if (directory / HF_DIR).is_dir():
        return FamilyCodec.load(directory / HF_DIR, device=device)
    if not (directory / "vocab.json").exists():
        raise FileNotFoundError(
            f"{directory} is not a tokenizer directory (no vocab.json, no {HF_DIR}/); make one with "
            f"`ringworld tokenizer train --out {directory}`, or import a model with `ringworld import hf`"
        )
    text = TextTokenizer.load(directory)
    vision = VisionTokenizer.load(directory / "vision", device=device)
    saved = Vocab.from_json(json.loads((directory / "vocab.json").read_text())["vocab"])
    codec = Codec.build(text, vision, delta_frames=saved.num_cells > 0)
    if saved != codec.vocab:
        raise ValueError(
            f"{directory}/vocab.json does not match its tokenizers ({saved} vs {codec.vocab}); "
            f"the directory was edited by hand: train it again"
        )
    return codec


def world_settings(directory: str | Path) -> dict:
    """The settings of the world a tokenizer directory was trained on (``WorldConfig``'s fields, as
    its metrics.json records them; for a directory without them, the frame size alone)."""
    directory = Path(directory)
    metrics_path = directory / "metrics.json"
    recorded = json.loads(metrics_path.read_text()).get("world") if metrics_path.exists() else None
    if recorded:
        return recorded
    return {"frame_size": json.loads((directory / "vision" / "config.json").read_text())["frame_size"]}
