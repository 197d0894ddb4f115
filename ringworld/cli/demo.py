"""`ringworld demo`: the main job on the built-in world, in minutes on a CPU."""

from __future__ import annotations

import argparse
from pathlib import Path

from ringworld.cli.common import positive_int


def add_parsers(commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="the main job on the built-in world",
        description="Sample the world, train the tokenizers, train the tiny world model, evaluate it with the "
        "oracle and write an HTML report: OUT/samples, OUT/tokenizer, OUT/model, OUT/eval.json, OUT/report/"
        "report.html and OUT/summary.json. Every stage runs a fixed number of steps on a fixed number of threads, "
        "so a commit prints the same figures on every run on one machine. About 15 minutes on a 2-core CPU.",
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    demo.add_argument(
        "--tokenizer-steps", type=positive_int, default=None, help="vision tokenizer steps [the demo's default]"
    )
    demo.add_argument("--train-steps", type=positive_int, default=None, help="world model steps [the demo's default]")
    demo.add_argument(
        "--threads", type=positive_int, default=None, help="torch CPU threads; the figures depend on it [2]"
    )
    demo.add_argument("--samples", type=positive_int, default=None, help="eval episodes per task [the demo's default]")
    demo.add_argument(
        "--judge-every",
        type=positive_int,
        default=None,
        help="judge 32 generated episodes a task every N training steps (a multiple of 25): a curve of the judged "
        "figures, judged/... in OUT/model/metrics.jsonl; training is unchanged [off]",
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of every stage (default: 0)")
    demo.set_defaults(run=_demo)


def _demo(args: argparse.Namespace) -> None:
    from ringworld.jobs.demo import DemoConfig, run_demo

    given = {
        "tokenizer_steps": args.tokenizer_steps,
        "train_steps": args.train_steps,
        "threads": args.threads,
        "samples": args.samples,
        "judge_every": args.judge_every,
    }
    run_demo(args.out, DemoConfig(seed=args.seed, **{k: v for k, v in given.items() if v is not None}))
