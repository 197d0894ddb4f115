"""The `ringworld` command: one module per command group. Each subcommand's --help says what it
does and what it writes."""

from __future__ import annotations

import argparse
import sys

from ringworld.cli import data, demo, evaluate, generate, hf, serve, tokenizer, train, world

DESCRIPTION = """\
ringworld: one decoder-only transformer over text, image, video and action tokens.

The built-in sprite world makes its own data, so everything runs offline:
  ringworld world sample --out runs/samples      look at the world (PNG, GIF, JSONL)
  ringworld tokenizer train --out runs/tok       train the text BPE and the vision tokenizer
  ringworld data ingest FOLDER --tokenizer runs/tok --out runs/shards   your images/videos -> token shards
  ringworld train --tokenizer runs/tok --out runs/model   train the world model (torchrun for many processes)
  ringworld generate image "a red circle in the top left" --checkpoint runs/model --out img.png
  ringworld caption img.png --checkpoint runs/model           describe an image
  ringworld predict clip.gif --actions right,up --checkpoint runs/model --out future.gif
  ringworld ask clip.gif "what colour is the square?" --checkpoint runs/model
  ringworld eval world --checkpoint runs/model --json eval.json --report runs/report   oracle-scored metrics
  ringworld eval needle --checkpoint runs/model --lengths 1k,4k --plot needle.png   needle in a haystack
  ringworld serve --checkpoint runs/model         an OpenAI-compatible server (127.0.0.1:8000)
  ringworld demo --out runs/demo                 all of it on the built-in world, in minutes on a CPU
  ringworld import hf FOLDER --out runs/emu3     a public checkpoint (Emu3, Chameleon, LWM) as a run
"""
GROUPS = (world, tokenizer, data, train, generate, evaluate, serve, demo, hf)  # in --help's order


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ringworld", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.add_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError, ImportError) as e:  # bad input, missing files or extras: say what, not where
        print(f"ringworld: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ringworld: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
