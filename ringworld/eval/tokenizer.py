"""How well a vision tokenizer reconstructs the world: PSNR and the oracle's agreement on held-out frames."""

from __future__ import annotations

import numpy as np

from ringworld.tokens.vision import VisionTokenizer, psnr
from ringworld.world.oracle import agreement
from ringworld.world.sim import WorldConfig, random_frames

HELD_OUT_SEED = 1_000_003  # held-out frames come from a seed training never uses


def evaluate_vision(vision: VisionTokenizer, world: WorldConfig, n: int = 2000) -> dict:
    """Reconstruction quality on ``n`` held-out frames: PSNR, oracle agreement (the oracle reads
    the same objects, colours, shapes and exact positions from the reconstruction as from the
    state), and the fraction of the codebook the frames use."""
    frames, states = random_frames(np.random.default_rng(HELD_OUT_SEED), n, world)
    codes = vision.encode(frames)
    recon = vision.decode(codes)
    return {
        "psnr": round(psnr(frames, recon), 3),
        "oracle_agreement": agreement(recon, states, tolerance=0),
        "oracle_agreement_1px": agreement(recon, states, tolerance=1),
        "codebook_utilization": round(len(np.unique(codes)) / vision.num_codes, 4),
        "eval_frames": n,
    }
