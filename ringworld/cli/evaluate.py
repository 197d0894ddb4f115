"""`ringworld eval world | needle`: a world model scored by the oracle, or by needles in haystacks."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path

from ringworld.cli.common import guidance_arg, positive_int, sampling, sampling_args, table


def _lengths(text: str) -> list[int]:
    """ "1k,2k,0.5k,3000" -> [1024, 2048, 512, 3000] (k = 1024 tokens)."""
    from ringworld.train.config import parse_length

    out = []
    for item in text.split(","):
        try:
            value = parse_length(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"lengths look like 1k,2k,16k or 3000; got {item!r} in {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"lengths are positive token counts; got {item!r}")
        out.append(value)
    return out


def _depths(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"depths look like 0,0.25,0.5,0.75,1; got {text!r}") from None
    if not all(0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"depths are fractions of the haystack in [0, 1]; got {text!r}")
    return values


def _kinds(text: str) -> list[str]:
    from ringworld.world.needle import KINDS

    names = [k.strip() for k in text.split(",") if k.strip()]
    if not names or set(names) - set(KINDS):
        raise argparse.ArgumentTypeError(f"kinds are a comma-separated list of {', '.join(KINDS)}; got {text!r}")
    return names


def _common(p: argparse.ArgumentParser, samples: str) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, help="a run directory or a checkpoint")
    p.add_argument("--json", type=Path, help="write the metrics here")
    p.add_argument("--samples", type=positive_int, help=samples)
    p.add_argument("--seed", type=int, default=None, help="episode seed (default: the fixed held-out seed)")
    p.add_argument("--device", help="cpu, cuda, ... (default: the accelerator if any, else cpu)")
    p.add_argument(
        "--cp",
        type=positive_int,
        default=1,
        help="prefill prompts through ring attention over this many processes; launch with "
        "torchrun --nproc_per_node N (default: 1)",
    )


def add_parsers(commands) -> None:
    evaluate = commands.add_parser(
        "eval", help="score a world model: the world suite (oracle) or needle in a haystack"
    ).add_subparsers(dest="suite", metavar="SUITE", required=True)
    world = evaluate.add_parser(
        "world",
        help="held-out world episodes judged by the oracle",
        description="Evaluate a checkpoint on held-out world episodes (the same ones every run): text->image,\n"
        "captioning, text->video, prediction per rollout step, action rollouts and QA, all judged by the\n"
        "oracle; plus perplexity per modality and the tokenizer's PSNR. --report writes report.html with\n"
        "image grids, GIFs, a table per task and plots.\n\n"
        "  ringworld eval world --checkpoint runs/model --json eval.json --report runs/report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(world, "episodes per task (default: 100)")
    world.add_argument("--report", type=Path, help="write report.html and its media into this folder")
    world.add_argument("--horizon", type=positive_int, default=4, help="rollout steps scored (default: 4)")
    guidance_arg(world)
    sampling_args(world, "--sampling-seed", drawn=True)
    world.set_defaults(run=_run, samples_default=100)

    needle = evaluate.add_parser(
        "needle",
        help="needle in a haystack: text and video, by context length and depth",
        description="Needle in a haystack, as LWM reports it. For every context length and needle depth, ask\n"
        "--samples questions about a magic number hidden in filler text (text) and about one solid-colour\n"
        "flash frame hidden in a long world video (video); greedy answers, judged exactly. A run imported\n"
        "by `ringworld import hf` is asked the text needles in its own chat template. Prints a table,\n"
        "--json writes every cell and the mean accuracy per kind, --plot draws heatmaps (length x depth).\n\n"
        "  ringworld eval needle --checkpoint runs/model --lengths 1k,2k,4k --depths 0,0.5,1 --plot needle.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(needle, "questions per cell (default: 10)")
    needle.add_argument(
        "--lengths",
        type=_lengths,
        default=[1024, 2048, 4096],
        help="context lengths in tokens (prompt and answer), e.g. 1k,2k,16k or 3000 (default: 1k,2k,4k)",
    )
    needle.add_argument(
        "--depths",
        type=_depths,
        default=[0.0, 0.25, 0.5, 0.75, 1.0],
        help="needle depths in [0, 1] (default: 0,0.25,0.5,0.75,1)",
    )
    needle.add_argument(
        "--kinds",
        type=_kinds,
        help="text, video or both (default: both; text for a run imported by `import hf`, which reads no video)",
    )
    needle.add_argument("--plot", type=Path, help="write accuracy heatmaps here (PNG)")
    needle.add_argument("--batch-size", type=positive_int, default=4, help="prompts per forward (default: 4)")
    needle.set_defaults(run=_run, samples_default=10)


def _run(args: argparse.Namespace) -> None:
    from ringworld.parallel.mesh import init_distributed, shutdown

    d = init_distributed(args.device, cp=args.cp)
    try:
        if d.dp > 1:
            raise ValueError(f"eval runs one ring: launch as many processes as --cp ({args.cp}), not {d.world_size}")
        with contextlib.ExitStack() as quiet:
            if not d.is_main:  # every rank computes; one speaks and writes
                devnull = quiet.enter_context(open(os.devnull, "w"))
                quiet.enter_context(contextlib.redirect_stdout(devnull))
                quiet.enter_context(contextlib.redirect_stderr(devnull))
            _suite(args, d)
    finally:
        shutdown(d)


def _suite(args: argparse.Namespace, d) -> None:
    from ringworld.infer.imported import is_imported, load_imported
    from ringworld.infer.tasks import load_world_model
    from ringworld.parallel.context import RingPrefill

    prefill = None if d.cp_group is None else RingPrefill(d.cp_group)
    if is_imported(args.checkpoint):
        if args.suite != "needle":
            raise ValueError("the world suite judges ringworld's world models; an imported run takes `eval needle`")
        wm = load_imported(args.checkpoint, d.device, prefill=prefill)
    else:
        wm = load_world_model(args.checkpoint, d.device, prefill=prefill)
    samples = args.samples or args.samples_default
    if args.suite == "needle":
        kinds = args.kinds or (["text"] if is_imported(args.checkpoint) else ["text", "video"])
        metrics = _needle(args, wm, samples, kinds)
    else:
        from ringworld.eval.world import EVAL_SEED, evaluate

        result = evaluate(
            wm,
            samples=samples,
            horizon=args.horizon,
            guidance=args.guidance,
            sampling=sampling(args, drawn=True),
            seed=EVAL_SEED if args.seed is None else args.seed,
        )
        metrics = result.metrics
        print(metrics_table(metrics))
    if not d.is_main:
        return
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.suite == "world" and args.report:
        from ringworld.eval.report import write_report

        page = write_report(args.report, result, run=wm.checkpoint.parent.parent)
        print(f"wrote {page}")


def _needle(args: argparse.Namespace, wm, samples: int, kinds: list[str]) -> dict:
    from ringworld.eval.needle import NEEDLE_SEED, evaluate_needle, needle_table, plot_needle

    result = evaluate_needle(
        wm,
        args.lengths,
        args.depths,
        kinds,
        samples=samples,
        seed=NEEDLE_SEED if args.seed is None else args.seed,
        batch_size=args.batch_size,
    )
    print(needle_table(result))
    if args.plot:
        print(f"wrote {plot_needle(result, args.plot)}")
    return result


def metrics_table(metrics: dict) -> str:
    rows = []
    for key, value in metrics.items():
        if isinstance(value, list):
            value = "  ".join(f"{v:.3f}" for v in value)
        elif isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, dict):  # per kind of question, how images were drawn
            value = "  ".join(f"{k} {v}" for k, v in value.items())
        rows.append((key, str(value)))
    return table(rows, indent="  ")
