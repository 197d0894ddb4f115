"""``ringworld eval world --report DIR``: one self-contained HTML page (plus its PNGs and GIFs beside it)
showing what the model made for each task next to the truth, a table per task, and plots: the
training loss per modality and the held-out learning curves against steps and seconds (from the
run's metrics.jsonl), and accuracy against rollout horizon.
Opens from disk in any browser; nothing is fetched."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from ringworld.eval.world import Evaluation
from ringworld.io import atomic_write_text
from ringworld.media import write_gif, write_image
from ringworld.train.metrics import read_metrics

SHOWN = 12  # examples per task on the page
SCALE = 4  # pixels per world pixel in the files

TITLES = {
    "text_to_image": ("Text → image", "t2i_accuracy"),
    "image_to_text": ("Image → caption", "caption_accuracy"),
    "text_to_video": ("Text → video", "t2v_accuracy"),
    "predict": ("Prediction (2 real frames, then the model)", "predict_accuracy"),
    "act": ("Actions (1 real frame, then one frame per action)", "action_accuracy"),
    "qa": ("Questions", "qa_accuracy"),
}

JUDGED = (
    "✓ when one world consistent with what the model was shown explains every frame of the clip; "
    "a ✗ card names the first frame and object that no such world explains."
)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
.card { width: 170px; font-size: 12px; }
.card img { image-rendering: pixelated; width: 128px; display: block; background: #000; }
.ok { color: #197a19; } .bad { color: #b01c1c; }
"""


def write_report(directory: str | Path, evaluation: Evaluation, *, run: str | Path | None = None) -> Path:
    """Write ``DIR/report.html`` and its media; returns the page's path."""
    directory = Path(directory)
    media = directory / "media"
    media.mkdir(parents=True, exist_ok=True)
    parts = [f"<!doctype html><meta charset='utf-8'><title>ringworld eval</title><style>{STYLE}</style>"]
    parts.append("<h1>ringworld evaluation</h1>")
    parts.append(_metrics_table(evaluation.metrics))
    plots = []
    rows = read_metrics(run) if run is not None else []
    if rows:
        plots.append(_loss_plot(rows, directory / "loss.png"))
        if any(CURVES[0][0] in r for r in rows):
            plots.append(_curves_plot(rows, directory / "curves.png"))
    plots.append(_horizon_plot(evaluation.metrics, directory / "horizon.png"))
    parts.append("<div class='grid'>" + "".join(f"<img src='{p.name}' width='480'>" for p in plots) + "</div>")
    for task, shown in evaluation.examples.items():
        title, key = TITLES[task]
        value = evaluation.metrics.get(key)
        figure = ", ".join(f"{v:.3f}" for v in value) if isinstance(value, list) else f"{value:.3f}"
        parts.append(f"<h2>{html.escape(title)}</h2><p>{key}: <b>{figure}</b></p>")
        if "broke" in shown:
            parts.append(f"<p>{JUDGED}</p>")
        parts.append(_cards(task, shown, media))
    page = directory / "report.html"
    atomic_write_text(page, "\n".join(parts) + "\n")
    return page


def _metrics_table(metrics: dict) -> str:
    rows = []
    for key, value in metrics.items():
        if isinstance(value, list):
            shown = ", ".join(f"{v:.3f}" for v in value)
        elif isinstance(value, dict):  # per kind of question, how images were drawn
            shown = ", ".join(f"{k} {v}" for k, v in value.items())
        else:
            shown = value
        rows.append(f"<tr><th>{html.escape(key)}</th><td>{html.escape(str(shown))}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _mark(ok: bool | None) -> str:
    if ok is None:
        return ""
    return "<span class='ok'>✓</span> " if ok else "<span class='bad'>✗</span> "


def _card(files: list[str], text: str, ok: bool | None = None) -> str:
    images = "".join(f"<img src='media/{f}'>" for f in files)
    return f"<div class='card'>{images}{_mark(ok)}{html.escape(text)}</div>"


def _save_image(media: Path, name: str, frame: np.ndarray) -> str:
    write_image(media / name, frame, scale=SCALE)
    return name


def _save_gif(media: Path, name: str, frames: np.ndarray) -> str:
    write_gif(media / name, frames, scale=SCALE, fps=2.0)
    return name


def _said(text: str, shown: dict, i: int) -> str:
    """``text``, then what the model said before its first frame (models trained with --say-motion)."""
    if "said" not in shown:
        return text
    return f"{text}; it said first: “{shown['said'][i] or '(nothing)'}”"


def _cards(task: str, shown: dict, media: Path) -> str:
    cards = []
    for i in range(min(SHOWN, _count(shown))):
        if task == "text_to_image":
            files = [_save_image(media, f"t2i_{i}.png", shown["images"][i])]
            cards.append(_card(files, shown["prompts"][i], shown["correct"][i]))
        elif task == "image_to_text":
            files = [_save_image(media, f"caption_{i}.png", shown["images"][i])]
            cards.append(_card(files, shown["captions"][i] or "(nothing)", shown["correct"][i]))
        elif task == "text_to_video":
            files = [_save_gif(media, f"t2v_{i}.gif", shown["videos"][i])]
            cards.append(_card(files, _broke(shown["prompts"][i], shown, i), shown["correct"][i]))
        elif task == "predict":
            made = np.concatenate([shown["context"][i], shown["predicted"][i]])
            real = np.concatenate([shown["context"][i], shown["truth"][i]])
            files = [_save_gif(media, f"predict_{i}.gif", made), _save_gif(media, f"predict_{i}_truth.gif", real)]
            text = _said("model (top), one true world (bottom)", shown, i)
            cards.append(_card(files, _broke(text, shown, i), shown["correct"][i]))
        elif task == "act":
            made = np.concatenate([shown["start"][i][None], shown["predicted"][i]])
            real = np.concatenate([shown["start"][i][None], shown["truth"][i]])
            files = [_save_gif(media, f"act_{i}.gif", made), _save_gif(media, f"act_{i}_truth.gif", real)]
            text = _said("actions: " + ", ".join(shown["actions"][i]) + " — model (top), one true world", shown, i)
            cards.append(_card(files, _broke(text, shown, i), shown["correct"][i]))
        elif task == "qa":
            seen = shown["media"][i]
            files = [
                _save_gif(media, f"qa_{i}.gif", seen) if seen.ndim == 4 else _save_image(media, f"qa_{i}.png", seen)
            ]
            text = f"{shown['questions'][i]} → {shown['answers'][i] or '(nothing)'} (truth: {shown['truth'][i]})"
            cards.append(_card(files, text, shown["correct"][i]))
    return "<div class='grid'>" + "".join(cards) + "</div>"


def _broke(text: str, shown: dict, i: int) -> str:
    """``text``, and for a wrong clip the first frame and object that no consistent world explains."""
    return f"{text} — broke at {shown['broke'][i]}" if shown["broke"][i] else text


def _count(shown: dict) -> int:
    return min(len(v) for v in shown.values())


def _loss_plot(rows: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for key, label in (("text_loss", "text"), ("vision_loss", "vision"), ("loss", "balanced")):
        ax.plot(steps, [r[key] for r in rows], label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_yscale("log")
    ax.set_title("training loss per modality")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


CURVES = (  # held-out, teacher-forced (ringworld.train.curves): the skills, step by step
    ("heldout/t2i_object_acc", "text→image objects"),
    ("heldout/t2v_object_acc", "text→video objects"),
    ("heldout/predict_object_acc", "prediction objects"),
    ("heldout/predict_frame_acc", "prediction whole frames"),
    ("heldout/act_object_acc", "action objects"),
    ("heldout/caption_token_acc", "caption tokens"),
    ("heldout/qa_token_acc", "answer tokens"),
)


def _curves_plot(rows: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if CURVES[0][0] in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100, sharey=True)
    for ax, x, label in ((axes[0], "step", "step"), (axes[1], "seconds", "training seconds")):
        for key, name in CURVES:
            ax.plot([r[x] for r in rows], [r.get(key, float("nan")) for r in rows], label=name)
        ax.set_xlabel(label)
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("held-out accuracy (teacher-forced)")
    axes[0].legend(fontsize=7)
    fig.suptitle("learning curves")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _horizon_plot(metrics: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for key, label in (
        ("predict_accuracy", "prediction (no actions)"),
        ("action_accuracy_per_step", "under actions"),
    ):
        values = metrics.get(key) or []
        ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole
    ax.set_xlabel("rollout step")
    ax.set_ylabel("accuracy (oracle)")
    ax.set_ylim(0, 1.02)
    ax.set_title("accuracy against rollout horizon")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
