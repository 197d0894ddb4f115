"""What can a model score? The eval's own episodes and judge, run on reference models instead of
a trained one (``ringworld.eval.reference_models``): a perfect model that keeps the whole context,
a perfect model that sees only a trained model's window (``--window``: its ``video_frames``, the
context a rollout keeps), and one that copies the last frame it was shown.

    python bench/ceiling.py --tokenizer runs/demo/tokenizer                  # 100 episodes a task
    python bench/ceiling.py --tokenizer runs/demo/tokenizer --window 3 --json ceiling.json

The tokenizer must reconstruct its world exactly (``oracle_agreement`` 1.0 in its metrics.json):
the reference models answer in its codes.
"""

from __future__ import annotations

import argparse
import json
import time

from ringworld.eval.reference_models import CopyModel, OracleModel
from ringworld.eval.world import EVAL_SEED, evaluate
from ringworld.tokens.bundle import load_codec, world_settings
from ringworld.world.sim import WorldConfig

COLUMNS = (
    "t2i_accuracy",
    "caption_accuracy",
    "t2v_accuracy",
    "predict_accuracy",
    "action_accuracy",
    "action_accuracy_per_step",
    "qa_accuracy",
)
HIDDEN = ("predict_hidden_share", "act_hidden_share", "t2v_hidden_share")


def _cell(value) -> str:
    return " ".join(f"{v:.2f}" for v in value) if isinstance(value, list) else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="a tokenizer directory that reconstructs its world exactly")
    parser.add_argument("--samples", type=int, default=100, help="episodes per task (default: 100)")
    parser.add_argument("--horizon", type=int, default=4, help="rollout steps of prediction and actions (default: 4)")
    parser.add_argument("--window", type=int, default=3, help="video_frames of the windowed model (default: 3)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()

    codec = load_codec(args.tokenizer)
    world = WorldConfig(**world_settings(args.tokenizer))
    whole = 2 + args.horizon  # the longest clip the eval asks for: 2 real frames and the rollout
    models = {
        f"perfect, whole context (video_frames {whole})": OracleModel(codec, world, video_frames=whole),
        f"perfect, a window of video_frames {args.window}": OracleModel(codec, world, video_frames=args.window),
        "copies the last frame (its other tasks: perfect)": CopyModel(codec, world, video_frames=whole),
    }
    print(f"{args.tokenizer}: {args.samples} episodes a task (seed {EVAL_SEED}), horizon {args.horizon}")
    print("| model | " + " | ".join(COLUMNS) + " | seconds |")
    print("|---|" + "---|" * (len(COLUMNS) + 1))
    rows, hidden = [], {}
    for name, model in models.items():
        start = time.perf_counter()
        metrics = evaluate(model, samples=args.samples, horizon=args.horizon, judged_only=True, progress=False).metrics
        seconds = time.perf_counter() - start
        rows.append({"model": name, **{k: metrics[k] for k in COLUMNS}, "seconds": round(seconds, 1)})
        hidden = {k: metrics[k] for k in HIDDEN}
        print(f"| {name} | " + " | ".join(_cell(metrics[k]) for k in COLUMNS) + f" | {seconds:.0f} |", flush=True)
    print("contexts that leave the future open: " + ", ".join(f"{k} {v:.2f}" for k, v in hidden.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "hidden": hidden}, f, indent=2)


if __name__ == "__main__":
    main()
