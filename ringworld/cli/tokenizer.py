"""`ringworld tokenizer train | eval`: the text BPE and the vision tokenizer, trained and measured on the world."""

from __future__ import annotations

import argparse
from pathlib import Path

from ringworld.cli.common import positive_int, table, warn, world_args, world_config


def _levels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"levels are comma-separated integers like 8,5,5,5, got {text!r}") from None


def add_parsers(commands) -> None:
    tokenizer = commands.add_parser("tokenizer", help="train and check the tokenizers").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    train = tokenizer.add_parser(
        "train",
        help="train the text BPE and the vision tokenizer on the world",
        description="Train byte-level BPE on world captions and questions, and the FSQ vision autoencoder on "
        "world frames; then measure PSNR, oracle agreement and codebook use on held-out frames. Writes OUT/"
        "tokenizer.json, OUT/vision/{config.json,model.safetensors}, OUT/vocab.json and OUT/metrics.json "
        "(atomically: an interrupted run leaves an earlier OUT as it was).",
    )
    train.add_argument("--out", type=Path, required=True, help="output folder")
    train.add_argument(
        "--max-seconds",
        type=float,
        default=240.0,
        help="time budget for the vision training, the LR schedule fitted to it; 0 = no budget, "
        "train exactly --steps steps (default: 240)",
    )
    train.add_argument("--steps", type=positive_int, default=6000, help="at most this many steps (default: 6000)")
    train.add_argument("--lr", type=float, default=5e-3, help="peak learning rate (default: 5e-3)")
    train.add_argument("--batch-size", type=positive_int, default=64, help="frames per step (default: 64)")
    train.add_argument("--patch", type=positive_int, default=4, help="pixels per code along each side (default: 4)")
    train.add_argument(
        "--levels",
        type=_levels,
        default=(8, 5, 5, 5),
        help="FSQ levels; the codebook size is their product (default: 8,5,5,5)",
    )
    train.add_argument("--channels", type=positive_int, default=64, help="autoencoder width (default: 64)")
    train.add_argument(
        "--kernel",
        type=int,
        choices=[1, 3],
        default=3,
        help="3: codes see their neighbouring patches; 1: each code depends on its own patch only (default: 3)",
    )
    train.add_argument("--text-vocab", type=positive_int, default=512, help="BPE vocabulary size (default: 512)")
    train.add_argument(
        "--delta-frames",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write each video frame after the first as its changes from the frame before (cell, code pairs), "
        "not as whole rows: short videos, and the model learns the motion itself (default: on)",
    )
    train.add_argument(
        "--seed", type=int, default=0, help="seed of the corpus, the frames and the weights (default: 0)"
    )
    world_args(train)
    train.set_defaults(run=_train)

    check = tokenizer.add_parser(
        "eval",
        help="measure a trained tokenizer on held-out world frames",
        description="Print PSNR, oracle agreement and codebook use of a tokenizer folder on held-out world frames.",
    )
    check.add_argument("tokenizer", type=Path, help="folder written by `ringworld tokenizer train`")
    check.add_argument("--frames", type=positive_int, default=2000, help="held-out frames (default: 2000)")
    check.set_defaults(run=_eval)


def _train(args: argparse.Namespace) -> None:
    from ringworld.jobs.tokenizer import train_tokenizers
    from ringworld.tokens.vision import VisionConfig

    vision = VisionConfig(
        frame_size=args.frame_size, patch=args.patch, levels=args.levels, channels=args.channels, kernel=args.kernel
    )
    metrics = train_tokenizers(
        args.out,
        world=world_config(args),
        vision=vision,
        text_vocab_size=args.text_vocab,
        steps=args.steps,
        lr=args.lr,
        max_seconds=args.max_seconds or None,
        batch_size=args.batch_size,
        seed=args.seed,
        delta_frames=args.delta_frames,
    )
    print(metrics_table(metrics))
    if metrics["codebook_utilization"] < 0.05 and metrics["oracle_agreement"] < 0.5:
        warn(
            "warning: the vision tokenizer collapsed onto a few codes (training diverged); "
            f"train again with a lower --lr than {args.lr}"
        )
    print(f"wrote {args.out}/")


def _eval(args: argparse.Namespace) -> None:
    from ringworld.jobs.tokenizer import evaluate_tokenizer_dir

    print(metrics_table(evaluate_tokenizer_dir(args.tokenizer, args.frames)))


def metrics_table(metrics: dict) -> str:
    rows = [
        ("PSNR (dB)", f"{metrics['psnr']:.2f}"),
        ("oracle agreement (exact)", f"{metrics['oracle_agreement']:.4f}"),
        ("oracle agreement (±1 px)", f"{metrics['oracle_agreement_1px']:.4f}"),
        ("codebook utilisation", f"{metrics['codebook_utilization']:.3f}"),
    ]
    if "train_seconds" in metrics:
        rows.append(("training (s)", f"{metrics['train_seconds']:.1f} ({metrics['train_steps']} steps)"))
    return table(rows)
