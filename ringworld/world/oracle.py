"""The oracle: frame -> world state (colour, shape, position of every object), and scoring.

How it parses a frame:
1. every pixel takes the nearest palette colour (or the background), so noise and the soft
   edges of reconstructions fall back to the colour they came from;
2. each colour with enough pixels is one object (colours are unique in a scene);
3. its shape and position are the sprite placement that best explains that colour's mask
   (fewest disagreeing pixels: a convolution of the mask with each sprite).
On rendered frames the best placement disagrees in zero pixels, so parsing is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ringworld.world.sim import BACKGROUND, COLORS, PALETTE, SHAPES, Obj, State, WorldConfig, sprite

# Positions of generated and reconstructed frames count as right within this many pixels.
POSITION_TOLERANCE = 1
# A colour needs this fraction of the smallest sprite's area to count as an object.
MIN_AREA_FRACTION = 0.4
# A parsed object whose best sprite placement has IoU below this is not trusted as an object.
MIN_IOU = 0.5


@dataclass(frozen=True)
class Seen:
    """One object as the oracle sees it; ``iou`` says how well the sprite explains the pixels."""

    color: str
    shape: str
    x: int
    y: int
    iou: float


def _palette_labels(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, H, W) int: 0 = background, 1 + i = COLORS[i]."""
    ref = torch.tensor([BACKGROUND, *PALETTE.values()], dtype=torch.float32)  # (K, 3)
    f = torch.from_numpy(frames).float()  # (N, H, W, 3)
    # |f - r|^2 = |f|^2 - 2 f.r + |r|^2, and |f|^2 is the same for every r
    dist = (ref * ref).sum(-1) - 2 * f @ ref.T  # (N, H, W, K)
    return dist.argmin(-1).numpy()


def parse_frames(frames: np.ndarray, config: WorldConfig = WorldConfig()) -> list[list[Seen]]:
    """Parse a batch of frames (N, H, W, 3) uint8 into the objects each shows."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (N, H, W, 3) uint8, got shape {frames.shape}")
    if frames.shape[1:3] != (config.frame_size, config.frame_size):
        raise ValueError(
            f"frames are {frames.shape[2]}x{frames.shape[1]} but the world config is "
            f"{config.frame_size}x{config.frame_size}; pass the config the frames were made with"
        )
    size = config.size
    labels = _palette_labels(frames)
    sprites = np.stack([sprite(s, size) for s in SHAPES]).astype(np.float32)  # (S, s, s)
    min_area = MIN_AREA_FRACTION * sprites.sum((1, 2)).min()

    counts = np.stack([(labels == 1 + c).sum((1, 2)) for c in range(len(COLORS))], 1)  # (N, C)
    frame_idx, color_idx = np.nonzero(counts >= min_area)
    results: list[list[Seen]] = [[] for _ in range(len(frames))]
    if len(frame_idx) == 0:
        return results
    masks = torch.from_numpy((labels[frame_idx] == (1 + color_idx)[:, None, None]).astype(np.float32))
    # overlap[k, s, y, x] = pixels of candidate k's mask covered by sprite s placed at (x, y)
    overlap = F.conv2d(masks[:, None], torch.from_numpy(sprites)[:, None])  # (K, S, P, P)
    area = torch.from_numpy(sprites.sum((1, 2)))[None, :, None, None]  # (1, S, 1, 1)
    mask_area = masks.sum((1, 2))[:, None, None, None]  # (K, 1, 1, 1)
    union = mask_area + area - overlap
    iou = (overlap / union).flatten(1)  # (K, S * P * P)
    # fewest disagreeing pixels = largest (2 * overlap - sprite area); IoU breaks no ties on
    # rendered frames (exact placement has IoU 1) and is the confidence we report.
    disagreement = (mask_area + area - 2 * overlap).flatten(1)
    best = disagreement.argmin(1)
    positions = overlap.shape[-1]
    shape_i, rest = best // (positions * positions), best % (positions * positions)
    ys, xs = rest // positions, rest % positions
    best_iou = iou.gather(1, best[:, None])[:, 0]
    for k in range(len(frame_idx)):
        if best_iou[k] < MIN_IOU:
            continue
        results[frame_idx[k]].append(
            Seen(COLORS[color_idx[k]], SHAPES[shape_i[k]], int(xs[k]), int(ys[k]), float(best_iou[k]))
        )
    return results


def parse_frame(frame: np.ndarray, config: WorldConfig = WorldConfig()) -> list[Seen]:
    """Parse one (H, W, 3) frame."""
    return parse_frames(frame[None], config)[0]


@dataclass(frozen=True)
class Score:
    """How a parsed frame compares with the intended objects."""

    matched: int  # intended objects seen with the right colour, shape and position
    intended: int
    extra: int  # objects seen that were not intended
    correct: bool  # every intended object matched and nothing extra

    @property
    def object_accuracy(self) -> float:
        return self.matched / max(self.intended, 1)


def score(seen: list[Seen], intended: State | list[Obj], tolerance: int = POSITION_TOLERANCE) -> Score:
    """Compare a parse with the intended objects: same colour and shape, each coordinate within
    ``tolerance`` pixels. Colours are unique in a scene, so objects pair up by colour."""
    objects = intended.objects if isinstance(intended, State) else intended
    by_color = {s.color: s for s in seen}
    matched = sum(
        1
        for o in objects
        if (s := by_color.get(o.color)) is not None
        and s.shape == o.shape
        and abs(s.x - o.x) <= tolerance
        and abs(s.y - o.y) <= tolerance
    )
    extra = len(set(by_color) - {o.color for o in objects})
    return Score(matched, len(objects), extra, matched == len(objects) and extra == 0)


def agreement(frames: np.ndarray, states: list[State], tolerance: int = POSITION_TOLERANCE) -> float:
    """Fraction of frames whose parse matches their state exactly (``score(...).correct``)."""
    if len(frames) != len(states):
        raise ValueError(f"{len(frames)} frames but {len(states)} states")
    if not states:
        return float("nan")
    parsed = parse_frames(frames, states[0].config)
    return float(np.mean([score(p, s, tolerance).correct for p, s in zip(parsed, states, strict=True)]))
