"""`ringworld world sample`: look at the built-in sprite world."""

from __future__ import annotations

import argparse
from pathlib import Path

from ringworld.cli.common import positive_int, world_args, world_config


def add_parsers(commands) -> None:
    world = commands.add_parser("world", help="the built-in sprite world").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    sample = world.add_parser(
        "sample",
        help="write world samples to look at",
        description="Write N episodes of the sprite world: images/*.png (first frame), videos/*.gif (a "
        "rollout), contact_sheet.png, and samples.jsonl with every state, captions, a question and its answer.",
    )
    sample.add_argument("--out", type=Path, required=True, help="output folder")
    sample.add_argument("--n", type=positive_int, default=16, help="episodes (default: 16)")
    sample.add_argument("--frames", type=positive_int, default=8, help="frames per episode (default: 8)")
    sample.add_argument("--scale", type=positive_int, default=4, help="upscale factor for the files (default: 4)")
    sample.add_argument("--seed", type=int, default=0, help="episode seed (default: 0)")
    world_args(sample)
    sample.set_defaults(run=_sample)


def _sample(args: argparse.Namespace) -> None:
    from ringworld.world.export import write_samples

    out = write_samples(
        args.out, args.n, seed=args.seed, frames=args.frames, scale=args.scale, config=world_config(args)
    )
    print(f"wrote {args.n} episodes to {out}/ (images/, videos/, contact_sheet.png, samples.jsonl)")
