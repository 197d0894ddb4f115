"""How should a world model draw? Oracle accuracy of text→image and text→video under several
sampling settings, on one trained checkpoint, the eval's held-out episodes (predictions and
rollouts stay greedy: one future is right).

    python bench/sampling.py --checkpoint runs/demo/model              # the default grid, 100 episodes
    python bench/sampling.py --checkpoint RUN --samples 50 --json sampling.json

Every setting uses the same episodes and the same sampling seed, and guidance ``--guidance``. The
figures chose
``ringworld.infer.tasks.DRAWING`` (docs/results.md, issue #11).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict

import torch

from ringworld.eval import world as eval_world
from ringworld.eval.world import EVAL_SEED, _episodes
from ringworld.infer.sampling import GREEDY, Sampling
from ringworld.infer.tasks import DEFAULT_GUIDANCE, load_world_model
from ringworld.world.tasks import TaskConfig

SETTINGS = {
    "greedy": GREEDY,
    "t=1": Sampling(temperature=1.0),
    "t=1 top-k 5": Sampling(temperature=1.0, top_k=5),
    "t=1 top-p 0.9": Sampling(temperature=1.0, top_p=0.9),
    "t=0.7": Sampling(temperature=0.7),
    "t=0.5": Sampling(temperature=0.5),
}
TASKS = {"text_to_image": (eval_world._t2i, "t2i_accuracy"), "text_to_video": (eval_world._t2v, "t2v_accuracy")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a run directory or a checkpoint")
    parser.add_argument("--samples", type=int, default=100, help="episodes per task (default: 100)")
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names of SETTINGS")
    parser.add_argument("--json", help="write the table here")
    args = parser.parse_args()

    torch.manual_seed(0)
    wm = load_world_model(args.checkpoint)
    cfg = TaskConfig(world=wm.world, video_frames=wm.video_frames)
    episodes = {task: _episodes(task, args.samples, cfg, EVAL_SEED) for task in TASKS}
    rows = []
    print(f"{args.checkpoint}: {args.samples} episodes a task, guidance {args.guidance}")
    print("| sampling | " + " | ".join(metric for _, metric in TASKS.values()) + " | seconds |")
    print("|---|" + "---|" * (len(TASKS) + 1))
    for name in args.settings.split(","):
        sampling = SETTINGS[name]
        start = time.perf_counter()
        found = {}
        for task, (run, metric) in TASKS.items():
            found[metric] = run(wm, episodes[task], wm.world, args.guidance, sampling)[0][metric]
        seconds = time.perf_counter() - start
        rows.append({"setting": name, "sampling": asdict(sampling), **found, "seconds": round(seconds, 1)})
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in found.values()) + f" | {seconds:.0f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
