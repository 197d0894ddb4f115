"""`ringworld demo` (what `make demo` runs): the main job on the built-in sprite world."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ringworld.jobs.tokenizer import train_tokenizers
from ringworld.world.export import write_samples


def run_demo(out: str | Path, *, max_seconds: float = 240.0, seed: int = 0) -> dict:
    """Sample the world, train the tokenizers, and write ``OUT/summary.json``."""
    out = Path(out)
    start = time.perf_counter()
    print(f"[1/2] sampling the sprite world -> {out}/samples")
    write_samples(out / "samples", 16, seed=seed)
    print(f"[2/2] training the tokenizers (vision: {max_seconds:.0f} s budget) -> {out}/tokenizer")
    metrics = train_tokenizers(out / "tokenizer", max_seconds=max_seconds, seed=seed)
    summary = {
        "tokenizer_psnr": metrics["psnr"],
        "tokenizer_oracle_agreement": metrics["oracle_agreement"],
        "tokenizer_codebook_utilization": metrics["codebook_utilization"],
        "tokenizer_train_seconds": metrics["train_seconds"],
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    width = max(map(len, summary))
    print("\nringworld demo summary")
    for key, value in summary.items():
        print(f"  {key:<{width}}  {value}")
    print(f"\nlook at {out}/samples/contact_sheet.png and {out}/samples/videos/; figures in {out}/summary.json")
    return summary
