"""What several `ringworld` commands share: argument types, option groups, loading a model, tables."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def world_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frame-size", type=int, default=32, help="frame side in pixels, 16 to 256 (default: 32)")
    p.add_argument("--max-objects", type=positive_int, default=3, help="at most this many objects a scene (default: 3)")
    p.add_argument("--object-size", type=int, default=0, help="sprite side in pixels; 0 = frame size / 4 (default: 0)")
    p.add_argument(
        "--snap",
        type=int,
        default=0,
        help="positions and speeds are multiples of this many pixels; 0 = half a sprite, 1 = any pixel (default: 0)",
    )
    p.add_argument("--gap", type=int, default=1, help="pixels objects keep between them (default: 1)")


def world_config(args: argparse.Namespace):
    from ringworld.world.sim import WorldConfig

    return WorldConfig(
        frame_size=args.frame_size,
        max_objects=args.max_objects,
        object_size=args.object_size,
        snap=args.snap,
        gap=args.gap,
    )


def model_args(p: argparse.ArgumentParser, *, guidance: bool) -> None:
    """--checkpoint, --device and the sampling options of a command that loads a world model."""
    p.add_argument(
        "--checkpoint", type=Path, required=True, help="a run directory (its latest checkpoint) or a checkpoint"
    )
    p.add_argument("--device", help="cpu, cuda, ... (default: the accelerator if any, else cpu)")
    sampling_args(p, "--seed", drawn=guidance)
    if guidance:
        guidance_arg(p)


def guidance_arg(p) -> None:
    from ringworld.infer.tasks import DEFAULT_GUIDANCE

    p.add_argument(
        "--guidance",
        type=float,
        default=DEFAULT_GUIDANCE,
        help=f"classifier-free guidance scale; 1 = off (default: {DEFAULT_GUIDANCE:g})",
    )


def sampling_args(p, seed_flag: str, *, drawn: bool) -> None:
    """--temperature, --top-k, --top-p and a seed; unset, they default to ``drawn`` (images and
    videos: ringworld.infer.tasks.DRAWING) or greedy decoding (text, predictions)."""
    default = "the drawing default: temperature 1, no cut" if drawn else "greedy"
    p.add_argument("--temperature", type=float, help=f"0 = greedy (default: {default})")
    p.add_argument("--top-k", type=int, help="sample among the k most likely ids; 0 = all")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass; 1 = off")
    p.add_argument(seed_flag, type=int, dest="sampling_seed", help="sampling seed (default: 0)")


def sampling(args: argparse.Namespace, *, drawn: bool):
    """The Sampling the flags ask for, over the default for images and videos (``drawn``) or greedy."""
    from dataclasses import replace

    from ringworld.infer.sampling import GREEDY
    from ringworld.infer.tasks import DRAWING

    given = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.sampling_seed}
    return replace(DRAWING if drawn else GREEDY, **{k: v for k, v in given.items() if v is not None})


def load(args: argparse.Namespace):
    from ringworld.infer.tasks import load_world_model

    return load_world_model(args.checkpoint, args.device)


def table(rows: list[tuple[str, str]], indent: str = "") -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{indent}{k:<{width}}  {v}" for k, v in rows)


def warn(message: str) -> None:
    print(message, file=sys.stderr)
