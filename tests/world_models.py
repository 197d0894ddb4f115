"""An exact codec for the demo world, on which the reference models (``ringworld.eval.reference_models``)
answer without a trained tokenizer."""

from __future__ import annotations

import itertools

import numpy as np

from ringworld.jobs.demo import DEMO_WORLD
from ringworld.tokens.codec import Codec
from ringworld.tokens.text import train_text_tokenizer
from ringworld.world.sim import COLORS, PALETTE, SHAPES, WorldConfig, sprite
from ringworld.world.tasks import TaskConfig, caption_corpus


class PatchTable:
    """An exact vision tokenizer for worlds whose sprites fill whole patches (the demo world): one
    code per distinct patch, background first, then each colour and shape."""

    def __init__(self, world: WorldConfig = DEMO_WORLD) -> None:
        if world.size != world.grid:
            raise ValueError("PatchTable needs sprites that fill one lattice cell (object_size == snap)")
        self.frame_size, self.patch = world.frame_size, world.size
        side = world.frame_size // world.size
        self.grid = (side, side)
        patches = [np.zeros((self.patch, self.patch, 3), dtype=np.uint8)]
        for color, shape in itertools.product(COLORS, SHAPES):
            patches.append(np.where(sprite(shape, self.patch)[..., None], np.uint8(PALETTE[color]), np.uint8(0)))
        self.table = np.stack(patches)  # (K, p, p, 3)
        self.num_codes = len(patches)
        self._code = {p.tobytes(): k for k, p in enumerate(patches)}

    def _patches(self, pixels: np.ndarray) -> np.ndarray:
        n, (h, w), p = len(pixels), self.grid, self.patch
        return pixels.reshape(n, h, p, w, p, 3).transpose(0, 1, 3, 2, 4, 5)  # (N, h, w, p, p, 3)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        patches = self._patches(pixels)
        flat = patches.reshape(-1, self.patch * self.patch * 3)  # one row per patch, in grid order
        try:
            codes = [self._code[row.tobytes()] for row in flat]
        except KeyError:
            raise ValueError(
                "a patch is neither background nor one whole sprite; PatchTable encodes only those"
            ) from None
        return np.array(codes, dtype=np.int64).reshape(patches.shape[:3])

    def decode(self, codes: np.ndarray) -> np.ndarray:
        n, (h, w), p = len(codes), self.grid, self.patch
        return self.table[codes].transpose(0, 1, 3, 2, 4, 5).reshape(n, h * p, w * p, 3)


def demo_codec() -> Codec:
    """Real BPE on the demo world's captions and the exact ``PatchTable``."""
    text = train_text_tokenizer(caption_corpus(300, seed=0, cfg=TaskConfig(world=DEMO_WORLD)), vocab_size=400)
    return Codec.build(text, PatchTable(DEMO_WORLD))
