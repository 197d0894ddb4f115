"""Decoding speed on imported public-family models: ringworld's engine against transformers' ``generate``,
on the same tiny random Emu3 and Chameleon models (built locally, as the tests build them:
``tests/hf_models.py``), in one process.

    python bench/hf_families.py                 # CPU fp32, 64 new tokens, 5 repeats
    python bench/hf_families.py --json out.json

Cases, per family:
(a) batch 1 and (b) batch 8: greedy decoding of ``--new-tokens`` after a prompt of text, an image and
    text (the family's layout), no stop id, so both make the same number of tokens. transformers:
    ``generate(max_new_tokens=N, min_new_tokens=N, do_sample=False, eos_token_id=None)``; ringworld:
    ``Engine.generate(..., stop=[], constrained=False)`` (Chameleon's image codes masked in both).
(c) Emu3 only, one guided image: ringworld's guidance runs the conditional and the unconditional
    prompt as one batch of two rows under the layout's grammar; transformers' Emu3 guidance
    (``guidance_scale`` with ``negative_prompt_ids``) runs a second forward for the unconditional
    prompt every step, constrained by the same layout written as a ``prefix_allowed_tokens_fn``.

Timing as ``bench/decode.py``: a warm-up, then ``--repeats`` calls per framework, interleaved with
the order swapped each repeat; medians, and the ratio (ringworld's speed ÷ transformers') as the
median of paired ratios. Tiny models: the figures measure the per-step cost of each framework's
loop more than matmuls.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tiny models the tests build
import hf_models  # noqa: E402
from decode import measure  # noqa: E402  (bench/decode.py: the interleaved timing)

from ringworld.documents import Image, Text  # noqa: E402
from ringworld.infer.imported import load_imported  # noqa: E402
from ringworld.infer.sampling import GREEDY  # noqa: E402
from ringworld.jobs.hf import import_hf  # noqa: E402


def cases(family: str, hf, im, new: int, guidance: float) -> dict:
    image = np.random.default_rng(0).integers(0, 256, (hf_models.FRAME, hf_models.FRAME, 3), dtype=np.uint8)
    prompt = im.codec.prompt([Text("look: "), Image(pixels=image), Text(" what is it?")])
    pad = im.codec.layout.pad
    out = {}
    for rows in (1, 8):
        prompts = [prompt] * rows
        ids = torch.from_numpy(np.stack(prompts))

        def ours(prompts=prompts) -> np.ndarray:
            made = im.engine.generate(prompts, max_new_tokens=new, sampling=GREEDY, stop=[], constrained=False)
            return np.stack(made.tokens)

        def theirs(ids=ids) -> np.ndarray:
            made = hf.generate(
                ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=pad
            )
            return made[:, ids.size(1) :].numpy()

        out[f"batch {rows}"] = ({"ringworld": ours, "transformers": theirs}, rows * new)
    if family != "emu3":
        return out
    layout = im.codec.layout
    h, w = layout.grid
    opening = np.asarray(layout.image_open)
    cond = np.concatenate([im.codec.prompt([Text("a red apple")]), opening])
    uncond = np.concatenate([[layout.bos], opening])
    n = layout.body_length + len(layout.image_close)

    def ours_guided() -> np.ndarray:
        made = im.engine.generate([cond], max_new_tokens=n, guidance=guidance, uncond_prompts=[uncond])
        return np.stack(made.tokens)

    def allowed(_, ids: torch.Tensor) -> list[int]:
        k = len(ids) - len(cond)
        if k >= h * (w + 1):
            return [layout.image_close[min(k - h * (w + 1), len(layout.image_close) - 1)]]
        return [layout.row_end] if k % (w + 1) == w else layout.code_ids.tolist()

    def theirs_guided() -> np.ndarray:
        made = hf.generate(
            torch.from_numpy(cond)[None],
            max_new_tokens=n,
            do_sample=False,
            guidance_scale=guidance,
            negative_prompt_ids=torch.from_numpy(uncond)[None],
            prefix_allowed_tokens_fn=allowed,
            pad_token_id=pad,
        )
        return made[:, len(cond) :].numpy()

    out["guided image"] = ({"ringworld": ours_guided, "transformers": theirs_guided}, n)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens per row in the batch cases (default: 64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per framework and case (default: 5)")
    parser.add_argument("--guidance", type=float, default=3.0, help="guidance scale of the image case (default: 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, figures = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for family in ("emu3", "chameleon"):
            hf = getattr(hf_models, family)()
            checkpoint = import_hf(hf_models.save(hf, Path(tmp) / family), Path(tmp) / f"{family}-run")
            im = load_imported(checkpoint, "cpu")
            for case, (runners, made) in cases(family, hf, im, args.new_tokens, args.guidance).items():
                seconds, outputs = measure(runners, args.repeats, torch.device("cpu"))
                speed = {name: made / statistics.median(times) for name, times in seconds.items()}
                ratio = statistics.median(
                    hf_t / ours_t for ours_t, hf_t in zip(seconds["ringworld"], seconds["transformers"], strict=True)
                )
                same = bool(np.array_equal(outputs["ringworld"], outputs["transformers"]))
                rows.append((family, case, made, speed["ringworld"], speed["transformers"], ratio, same))
                figures[f"{family} {case}"] = {"tokens": made, "tokens_per_s": speed, "ratio": ratio, "same": same}
    print(f"torch {torch.__version__}, {args.threads} threads, CPU fp32, tiny random models (width 64, 2 layers)")
    header = ("family", "case", "tokens a call", "ringworld tok/s", "transformers tok/s", "ringworld ÷ hf", "same ids")
    print("| " + " | ".join(header) + " |")
    print("|---|---|---|---|---|---|---|")
    for family, case, made, ours, theirs, ratio, same in rows:
        print(f"| {family} | {case} | {made} | {ours:,.0f} | {theirs:,.0f} | {ratio:.2f}× | {same} |")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
