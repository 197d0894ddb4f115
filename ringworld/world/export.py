"""`ringworld world sample`: write world samples a person can look at (PNG, GIF, JSONL)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ringworld.documents import ACTIONS
from ringworld.media import write_gif, write_image
from ringworld.world.captions import caption, question
from ringworld.world.sim import WorldConfig, random_state, render, rollout, state_to_dict


def write_samples(
    out: str | Path,
    n: int = 16,
    *,
    seed: int = 0,
    frames: int = 8,
    scale: int = 4,
    config: WorldConfig = WorldConfig(),
) -> Path:
    """Write ``n`` episodes: ``images/i.png`` (first frame), ``videos/i.gif`` (a rollout; every
    other episode has an agent driven by random actions), ``contact_sheet.png`` and
    ``samples.jsonl`` with each episode's states, captions, a question and its answer."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    firsts = []
    with open(out / "samples.jsonl", "w") as jsonl:
        for i in tqdm(range(n), desc="world samples", unit="episode"):
            agent = i % 2 == 1
            actions = [ACTIONS[int(a)] for a in rng.integers(len(ACTIONS), size=frames - 1)] if agent else None
            states = rollout(random_state(rng, config, agent=agent), frames - 1, actions)
            video = render(states)
            name = f"{i:04d}"
            write_image(out / "images" / f"{name}.png", video[0], scale=scale)
            write_gif(out / "videos" / f"{name}.gif", video, scale=scale)
            firsts.append(video[0])
            q, a = question(states[0], rng)
            record = {
                "image": f"images/{name}.png",
                "video": f"videos/{name}.gif",
                "caption": caption(states[0], rng),
                "video_caption": caption(states[0], rng, motion=True),
                "question": q,
                "answer": a,
                "actions": actions,
                "states": [state_to_dict(s) for s in states],
            }
            jsonl.write(json.dumps(record) + "\n")
    write_image(out / "contact_sheet.png", _grid(np.stack(firsts)), scale=scale)
    return out


def _grid(frames: np.ndarray, columns: int = 8, border: int = 1) -> np.ndarray:
    """Tile (N, H, W, 3) frames into one image with grey borders."""
    n, h, w, _ = frames.shape
    rows = -(-n // columns)
    cols = min(n, columns)
    sheet = np.full((rows * (h + border) + border, cols * (w + border) + border, 3), 96, dtype=np.uint8)
    for i, f in enumerate(frames):
        r, c = divmod(i, columns)
        top, left = border + r * (h + border), border + c * (w + border)
        sheet[top : top + h, left : left + w] = f
    return sheet
