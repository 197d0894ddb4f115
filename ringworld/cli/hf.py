"""`ringworld import hf` and `ringworld export hf`: public Hugging Face checkpoints in and out."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parsers(commands) -> None:
    imports = commands.add_parser("import", help="bring a public checkpoint in as a ringworld run").add_subparsers(
        dest="source", metavar="SOURCE", required=True
    )
    p = imports.add_parser(
        "hf",
        help="a Hugging Face model folder -> a ringworld run",
        description="Read a Hugging Face model folder (Emu3, Chameleon, or a Llama or Qwen3 layout such as "
        "LWM-Text) and write it as a ringworld run of one "
        "checkpoint: the decoder under ringworld's names, and the folder's tokenizer files and VQ tokenizer "
        "beside it. `generate image` (Emu3), `caption` and `ask` read the run (--checkpoint). Needs transformers: "
        "pip install 'ringworld[hf]'. Nothing is downloaded: download the folder first (e.g. `hf download`).",
    )
    p.add_argument("folder", type=Path, help="the model folder (config.json, *.safetensors, tokenizer files)")
    p.add_argument("--out", type=Path, required=True, help="the run directory to write")
    p.set_defaults(run=_import)

    exports = commands.add_parser("export", help="write a ringworld run in another format").add_subparsers(
        dest="target", metavar="TARGET", required=True
    )
    p = exports.add_parser(
        "hf",
        help="a run imported with `import hf` -> a Hugging Face model folder",
        description="Write a run made by `ringworld import hf` (or trained from one) as a Hugging Face model "
        "folder of its family: config.json, model.safetensors and the tokenizer files, loadable with "
        "from_pretrained. Import, export, import gives the same weights bit for bit.",
    )
    p.add_argument(
        "checkpoint", metavar="RUN", type=Path, help="a run directory (its latest checkpoint) or a checkpoint"
    )
    p.add_argument("--out", type=Path, required=True, help="the folder to write")
    p.set_defaults(run=_export)


def _import(args: argparse.Namespace) -> None:
    from ringworld.jobs.hf import import_hf

    checkpoint = import_hf(args.folder, args.out)
    print(f"imported {args.folder} as {checkpoint}")


def _export(args: argparse.Namespace) -> None:
    from ringworld.jobs.hf import export_hf

    out = export_hf(args.checkpoint, args.out)
    print(f"exported {args.checkpoint} to {out}/")
