"""The server's batch without the server: ``bench/serve.py``'s request mix straight into a
``Batcher``, with K requests kept in flight (a new one joins as soon as one finishes).

    python bench/batcher.py --checkpoint runs/demo/model                    # K = 1 and 32, as `ringworld serve` runs it
    python bench/batcher.py --checkpoint runs/demo/model --no-overlap-prefill --threads 2

It separates what the batch can do from HTTP, JSON and images: tokens/s, steps, requests and
cache rows a forward covers per step, at each K. The prompts are made as the server makes them (a
question about a world image, a caption of one, a text question, a guided drawing).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from ringworld.documents import Image, Text
from ringworld.infer.batcher import Batcher, Request
from ringworld.infer.tasks import DRAWING, drawing_budget, drawing_prompts, load_world_model, question_prompt
from ringworld.serve.protocol import read_data_uri
from ringworld.world.captions import CAPTION_PROMPT

sys.path.insert(0, str(Path(__file__).parent))
from serve import data_uri  # noqa: E402  (bench/serve.py: the same world images)


def requests(wm, n: int) -> list[Request]:
    out = []
    for i in range(n):
        kind = ("ask", "caption", "text", "draw")[i % 4]
        seen = Image(pixels=read_data_uri(data_uri(i), wm.frame_size, 16))
        if kind == "draw":
            prompt, uncond = drawing_prompts(wm, f"a blue square near the {('top', 'bottom')[i % 2]} left", Image)
            budget = drawing_budget(wm, Image, 1)
            out.append(Request(prompt, sampling=replace(DRAWING, seed=i), guidance=3.0, uncond_prompt=uncond, **budget))
        else:
            question = {"ask": [seen, Text("what colour is the square?")], "caption": [seen, Text(CAPTION_PROMPT)]}
            out.append(Request(question_prompt(wm, question.get(kind, [Text("where is the red circle?")])), 32))
    return out


def run(batcher: Batcher, todo: list[Request], in_flight: int) -> dict:
    todo, tokens, steps, covered = list(todo), 0, 0, 0
    start = time.perf_counter()
    while todo or batcher.busy:
        while todo and len(batcher.waiting) + len(batcher.running) + len(batcher.prefilling) < in_flight:
            batcher.submit(todo.pop(0))
        events = batcher.step()
        tokens, steps = tokens + len(events), steps + 1
        covered += 1 + max((row for run in batcher.running.values() for row in run.rows), default=-1)
    seconds = time.perf_counter() - start
    return {
        "tokens_per_s": tokens / seconds,
        "steps": steps,
        "ms_per_step": 1e3 * seconds / steps,
        "tokens_per_step": tokens / steps,
        "rows_per_forward": covered / steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/demo/model"), help="the run to load")
    parser.add_argument("--requests", type=int, default=128, help="requests per run (default: 128)")
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 32], help="K values (default: 1 32)")
    parser.add_argument("--rows", type=int, default=32, help="the batcher's cache rows (default: 32, as the server)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per K; the best is shown (default: 3)")
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=True, help="compiled steps (default: on)"
    )
    parser.add_argument(
        "--overlap-prefill",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="prefill on a thread (default: on)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads per thread (default: 1, as the server on 2 cores)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wm = load_world_model(args.checkpoint, compile=args.compile)
    batcher = Batcher(wm.engine, rows=args.rows, overlap_prefill=args.overlap_prefill)
    start = time.perf_counter()
    batcher.warm_up()
    print(
        f"warmed up in {time.perf_counter() - start:.0f} s; compile={args.compile} overlap_prefill="
        f"{args.overlap_prefill} threads={args.threads}\n"
    )
    mix = requests(wm, args.requests)
    print("| in flight | tokens/s | steps | ms / step | tokens / step | rows a forward covers |")
    print("|---|---|---|---|---|---|")
    for k in args.in_flight:
        best = max((run(batcher, mix, k) for _ in range(args.repeats)), key=lambda r: r["tokens_per_s"])
        print(
            f"| {k} | {best['tokens_per_s']:,.0f} | {best['steps']} | {best['ms_per_step']:.2f} | "
            f"{best['tokens_per_step']:.1f} | {best['rows_per_forward']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
