"""Needle-in-a-haystack evaluation (as LWM publishes it): accuracy per prompt length and needle depth.

Every cell (kind, length, depth) asks ``samples`` needle questions that fill ``length`` tokens of
context: a prompt of at most ``length - max_new_tokens`` ids (short of it by less than one frame
or one sentence) and room for the answer, with the needle at ``depth`` of the haystack
(``ringworld.world.needle``). Answers are greedy and judged exactly: the magic number's digits,
or the flash's colour word. Each cell's documents come from its own seed, so a cell gets the same
questions whatever else is asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ringworld.documents import Document, Text
from ringworld.infer.imported import ImportedModel, answers, question_prompt
from ringworld.infer.tasks import WorldModel, answer_documents
from ringworld.world.needle import KINDS, judge, needle_document
from ringworld.world.sim import WorldConfig

NEEDLE_SEED = 9_000_011  # training draws from (seed, step, row): these documents are never trained on


def length_label(length: int) -> str:
    """1024 -> "1K", 16384 -> "16K", 3000 -> "3000"."""
    return f"{length // 1024}K" if length % 1024 == 0 else str(length)


class FamilyNeedles:
    """A needle document as an imported family is asked it: its haystack and question as one user turn
    (in the folder's chat template, where it has one), sized in the family's own ids. It stands for the
    codec ``needle_document`` sizes documents with."""

    def __init__(self, im: ImportedModel) -> None:
        self.im, self.text = im, _TextIds(im.codec.tokenizer)

    def encode(self, doc: Document) -> np.ndarray:
        """The prompt the model is given for ``doc`` (text segments): all of it, one line a segment."""
        return question_prompt(self.im, None, "\n".join(seg.text for seg in doc if isinstance(seg, Text)))


class _TextIds:
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]


def _asked(model: WorldModel | ImportedModel, kinds: Sequence[str], max_new_tokens: int, batch_size: int):
    """(the codec needles are sized with, the world their filler comes from, questions -> answers)."""
    if isinstance(model, WorldModel):

        def ask(questions: list[Document]) -> list[str]:
            return answer_documents(model, questions, max_new_tokens=max_new_tokens, batch_size=batch_size)

        return model.codec, model.world, ask
    if "video" in kinds:
        raise ValueError(f"{model.family.name} models read no video: ask for text needles alone (--kinds text)")
    sizer = FamilyNeedles(model)

    def ask_family(questions: list[Document]) -> list[str]:
        prompts = [sizer.encode(q) for q in questions]
        return answers(model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)

    return sizer, WorldConfig(), ask_family


def evaluate_needle(
    model: WorldModel | ImportedModel,
    lengths: Sequence[int],
    depths: Sequence[float],
    kinds: Sequence[str] = KINDS,
    *,
    samples: int = 10,
    seed: int = NEEDLE_SEED,
    batch_size: int = 4,
    max_new_tokens: int = 16,
    progress: bool = True,
) -> dict:
    """Accuracy of every (kind, length, depth) cell and its mean per kind, JSON-ready. An imported run
    (``ringworld import hf``) takes text needles, asked in its own layout; its haystack is the world's
    captions, as for a world model."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown needle kind(s) {', '.join(sorted(unknown))}; kinds are {', '.join(KINDS)}")
    codec, world, ask = _asked(model, kinds, max_new_tokens, batch_size)
    context = model.engine.model.cfg.max_seq_len
    if max(lengths) > context:
        raise ValueError(
            f"the model's context is {context} tokens; ask for needle lengths up to it, not {max(lengths)}"
        )
    grid = [(k, n, d) for k in kinds for n in lengths for d in depths]
    cells = []
    for kind, length, depth in tqdm(grid, desc="needle cells", disable=not progress):
        rng = np.random.default_rng([seed, KINDS.index(kind), length, round(depth * 1000)])
        room = length - max_new_tokens
        needles = [needle_document(kind, codec, room, depth, rng, world) for _ in range(samples)]
        # the prompt is the document cut where the answer starts: ... question <|sep|>
        questions = [n.document[:-1] for n in needles]
        said = ask(questions)
        right = [judge(kind, a, n.answer) for a, n in zip(said, needles, strict=True)]
        cells.append(
            {
                "kind": kind,
                "length": length,
                "depth": depth,
                "accuracy": float(np.mean(right)),
                "samples": samples,
                "prompt_tokens": float(np.mean([len(codec.encode(q)) for q in questions])),
                "example": {"answer": said[0], "truth": needles[0].answer},
            }
        )
    mean = {k: float(np.mean([c["accuracy"] for c in cells if c["kind"] == k])) for k in kinds}
    return {
        "mean_accuracy": mean,
        "cells": cells,
        "lengths": list(lengths),
        "depths": list(depths),
        "kinds": list(kinds),
        "samples": samples,
        "seed": seed,
    }


def needle_table(result: dict) -> str:
    """Accuracy as text: per kind, a row per depth and a column per length."""
    lines = []
    for kind in result["kinds"]:
        acc = {(c["length"], c["depth"]): c["accuracy"] for c in result["cells"] if c["kind"] == kind}
        lines.append(f"{kind}  (mean accuracy {result['mean_accuracy'][kind]:.3f})")
        lines.append("  depth " + "".join(f"{length_label(n):>7}" for n in result["lengths"]))
        for d in result["depths"]:
            lines.append(f"  {d:>5.0%} " + "".join(f"{acc[(n, d)]:>7.2f}" for n in result["lengths"]))
    return "\n".join(lines)


def plot_needle(result: dict, path: str | Path) -> Path:
    """Heatmaps of accuracy, length across and depth down, one panel per kind, red (0) to green (1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    lengths, depths, kinds = result["lengths"], result["depths"], result["kinds"]
    size = (1.5 + (1.0 + 0.8 * len(lengths)) * len(kinds), 1.5 + 0.5 * len(depths))
    fig, axes = plt.subplots(1, len(kinds), figsize=size, squeeze=False, layout="constrained")
    for ax, kind in zip(axes[0], kinds, strict=True):
        acc = {(c["length"], c["depth"]): c["accuracy"] for c in result["cells"] if c["kind"] == kind}
        grid = np.array([[acc[(n, d)] for n in lengths] for d in depths])  # (depths, lengths)
        image = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(lengths)), [length_label(n) for n in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
        ax.set_xlabel("context length (tokens)")
        if ax is axes[0, 0]:
            ax.set_ylabel("needle depth")
        ax.set_title(f"{kind} needle (mean {result['mean_accuracy'][kind]:.2f})")
    fig.colorbar(image, ax=axes[0].tolist(), label="accuracy")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
