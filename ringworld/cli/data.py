"""`ringworld data ingest`: your images and videos, with captions, into token shards."""

from __future__ import annotations

import argparse
from pathlib import Path

from ringworld.cli.common import positive_int


def add_parsers(commands) -> None:
    data = commands.add_parser("data", help="turn your images and videos into token shards").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    ingest = data.add_parser(
        "ingest",
        help="images/videos + captions.jsonl -> token shards",
        description="Read every image (PNG/JPEG/...) and video (MP4/GIF/...) under SOURCE, centre-crop and resize "
        "to the tokenizer's frame size, pair each with its caption from captions.jsonl (lines "
        '{"file": "relative/path", "caption": "..."}), and write token shards (memmap + index.json) to OUT. '
        "Unreadable files are reported by name and skipped.",
    )
    ingest.add_argument("source", type=Path, help="folder of images and videos")
    ingest.add_argument("--tokenizer", type=Path, required=True, help="folder written by `ringworld tokenizer train`")
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
        load_codec(args.tokenizer),
        args.out,
        captions=args.captions,
        max_frames=args.max_frames,
        stride=args.stride,
    )
    print(report.summary())
