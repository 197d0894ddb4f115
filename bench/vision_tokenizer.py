"""Where the vision tokenizer's FLOPs go, and what each design buys in a fixed time budget.

    python bench/vision_tokenizer.py                       # step cost of each design (about a minute)
    python bench/vision_tokenizer.py --train-seconds 240   # also train each for 240 s and judge it

Prints one row per design:
- codes per frame;
- training GFLOP per frame (forward + backward, counted by torch's FlopCounterMode);
- ms per step at batch 64, and frames/s.

With --train-seconds, each row also gets PSNR, oracle agreement and codebook use on held-out
world frames. The "naive" row is a conventional full-resolution conv stack (stride-2 convs down
to the same 8x8 grid, transposed convs back up), timed only, for comparison.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ringworld.eval.tokenizer import evaluate_vision
from ringworld.tokens.vision import FSQ, VisionConfig, VisionTokenizer, train_vision_tokenizer
from ringworld.world.sim import WorldConfig, random_frames


class NaiveTokenizer(nn.Module):
    """Full-resolution convs: 32x32 -> 16 -> 8 (stride 2) and back with transposed convs."""

    def __init__(self, channels: int = 64, levels: tuple[int, ...] = (8, 5, 5, 5)):
        super().__init__()
        c, d = channels, len(levels)
        self.encoder = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c, c, 4, stride=2, padding=1), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c, c, 4, stride=2, padding=1), nn.SiLU(), nn.Conv2d(c, d, 1),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.Conv2d(d, c, 3, padding=1), nn.SiLU(), nn.ConvTranspose2d(c, c, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(c, c, 3, padding=1), nn.SiLU(), nn.ConvTranspose2d(c, c, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(c, c, 3, padding=1), nn.SiLU(), nn.Conv2d(c, 3, 3, padding=1),
        )  # fmt: skip
        self.fsq = FSQ(levels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, codes = self.fsq(self.encoder(x))
        return self.decoder(q), codes


def step_cost(model: nn.Module, batch: int = 64, steps: int = 10) -> tuple[float, float]:
    """(training GFLOP per frame, seconds per step) of one AdamW step at ``batch``."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 3, 32, 32) * 2 - 1

    def one_step() -> None:
        recon, _ = model(x)
        loss = F.mse_loss(recon, x)
        opt.zero_grad()
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:
        one_step()
    one_step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    return counter.get_total_flops() / batch / 1e9, (time.perf_counter() - start) / steps


DESIGNS = {
    "patch 4, 64 ch (default)": VisionConfig(),
    "patch 4, 96 ch": VisionConfig(channels=96),
    "patch 8, 64 ch": VisionConfig(patch=8),
    "patch 8, 128 ch": VisionConfig(patch=8, channels=128),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-seconds", type=float, default=0, help="also train each design this long (0: skip)")
    parser.add_argument("--json", type=str, default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    torch.manual_seed(0)
    world = WorldConfig()
    rows = []
    for name, config in [*DESIGNS.items(), ("naive full-res convs, 64 ch", None)]:
        model = VisionTokenizer(config) if config else NaiveTokenizer()
        gflop, seconds = step_cost(model)
        row = {
            "design": name,
            "codes": int(np.prod(config.grid)) if config else 64,
            "gflop_per_frame": round(gflop, 3),
            "ms_per_step": round(seconds * 1000, 1),
            "frames_per_s": round(64 / seconds),
        }
        if args.train_seconds and config:
            rng = np.random.default_rng(0)
            result = train_vision_tokenizer(
                lambda n, rng=rng: random_frames(rng, n, world)[0],
                config,
                max_seconds=args.train_seconds,
                steps=10**6,
            )
            row.update(steps=result.steps, **evaluate_vision(result.model, world))
        rows.append(row)
        print(json.dumps(row), flush=True)
    header = f"| {'design':<28} | codes | GFLOP/frame | ms/step (b=64) | frames/s |"
    extra = " steps | PSNR dB | oracle agree | codebook |" if args.train_seconds else ""
    print("\n" + header + extra)
    print("|" + "---|" * (header.count("|") + extra.count("|") - 1))
    for r in rows:
        line = (
            f"| {r['design']:<28} | {r['codes']:>5} | {r['gflop_per_frame']:>11.3f} | "
            f"{r['ms_per_step']:>14.1f} | {r['frames_per_s']:>8} |"
        )
        if args.train_seconds:
            line += (
                f" {r['steps']:>5} | {r['psnr']:>7.2f} | {r['oracle_agreement']:>12.4f} | "
                f"{r['codebook_utilization']:>8.3f} |"
                if "psnr" in r
                else " - | - | - | - |"
            )
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
