"""`ringworld data ingest`: your images and videos, with captions, and your texts into token shards."""

from __future__ import annotations

import argparse
from pathlib import Path

from ringworld.cli.common import positive_int


def add_parsers(commands) -> None:
    data = commands.add_parser("data", help="turn your images, videos and texts into token shards").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    ingest = data.add_parser(
        "ingest",
        help="images/videos + captions.jsonl, and .txt files -> token shards",
        description="Read every image (PNG/JPEG/...) and video (MP4/GIF/...) under SOURCE, centre-crop and resize "
        "to the tokenizer's frame size, pair each with its caption from captions.jsonl (lines "
        '{"file": "relative/path", "caption": "..."}), read every .txt file as one text document, and write token '
        "shards (memmap + index.json) to OUT. Unreadable files are reported by name and skipped. With the "
        "tokenizer of a run made by `ringworld import hf` the shards hold the family's ids (fine-tune it with "
        "`ringworld train --init-from RUN --data OUT`); the families write no videos, and LWM-Text and Qwen3 no "
        "images, so those are skipped, each reported.",
    )
    ingest.add_argument("source", type=Path, help="folder of images, videos and .txt files")
    ingest.add_argument(
        "--tokenizer",
        type=Path,
        required=True,
        help="folder written by `ringworld tokenizer train`, or a run (its latest checkpoint's tokenizer), such as "
        "one made by `ringworld import hf`",
    )
    ingest.add_argument("--out", type=Path, required=True, help="output folder for the shards")
    ingest.add_argument("--captions", type=Path, default=None, help="captions JSONL (default: SOURCE/captions.jsonl)")
    ingest.add_argument("--max-frames", type=positive_int, default=8, help="frames kept per video (default: 8)")
    ingest.add_argument("--stride", type=positive_int, default=1, help="keep every Nth video frame (default: 1)")
    ingest.set_defaults(run=_ingest)


def _ingest(args: argparse.Namespace) -> None:
    from ringworld.data.ingest import ingest
    from ringworld.tokens.bundle import load_codec

    report = ingest(
        args.source,
        load_codec(_tokenizer_dir(args.tokenizer)),
        args.out,
        captions=args.captions,
        max_frames=args.max_frames,
        stride=args.stride,
    )
    print(report.summary())


def _tokenizer_dir(path: Path) -> Path:
    """``path`` itself, or the tokenizer directory of the run or checkpoint ``path``."""
    from ringworld.train.checkpoint import CHECKPOINTS, WEIGHTS, resolve_checkpoint

    if (path / CHECKPOINTS).is_dir() or (path / WEIGHTS).is_file():
        return resolve_checkpoint(path) / "tokenizer"
    return path
