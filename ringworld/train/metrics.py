"""What a training run records as it goes: ``RUN/metrics.jsonl`` (one JSON line per logged step),
TensorBoard scalars and the progress bar's postfix. ``read_metrics`` is the one reader of the file.

MFU (``mfu_measured_peak``) is measured against this machine's own matmul peak
(``ringworld.perf.measured_peak_flops``), not a datasheet's: useful training FLOPs per second over
the best FLOP/s a large matmul reaches here, in the training dtype.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tqdm.auto import tqdm

from ringworld.parallel.mesh import Distributed
from ringworld.train.config import TrainConfig

METRICS = "metrics.jsonl"


def read_metrics(run: str | Path) -> list[dict]:
    """The records of a run's metrics.jsonl, oldest first ([] without one). A crash can leave the
    last line half written: it is skipped."""
    path = Path(run) / METRICS
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


TENSORBOARD_TAGS = {
    "loss": "loss/balanced",
    "text_loss": "loss/text",
    "vision_loss": "loss/vision",
    "lr": "optim/lr",
    "grad_norm": "optim/grad_norm",
    "tokens_per_s": "speed/tokens_per_s",
    "mfu_measured_peak": "speed/mfu_measured_peak",
}


class MetricsLogger:
    """metrics.jsonl (one line per logged step, truncated back to ``start`` on resume), TensorBoard
    scalars and the progress bar's postfix; rank 0 only."""

    def __init__(self, run: Path, cfg: TrainConfig, d: Distributed, start: int) -> None:
        self.active = d.is_main
        self.writer = None
        self.skills = ""  # the last held-out object accuracies, kept on the progress bar
        if not self.active:
            return
        kept = [record for record in read_metrics(run) if record["step"] <= start]
        path = run / METRICS
        path.write_text("".join(json.dumps(record) + "\n" for record in kept))
        self.file = path.open("a")
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run / "tensorboard"), purge_step=start + 1 if start else None)

    def log(self, record: dict, bar: tqdm) -> None:
        if not self.active:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if "heldout/t2i_object_acc" in record:
            self.skills = "  objects: " + " ".join(
                f"{name} {record[f'heldout/{name}_object_acc']:.2f}" for name in ("t2i", "t2v", "predict", "act")
            )
        bar.set_postfix_str(
            f"loss {record['loss']:.3f} text {record['text_loss']:.3f} vision {record['vision_loss']:.3f} "
            f"{record['tokens_per_s']:,.0f} tok/s MFU {record['mfu_measured_peak']:.1%} of measured peak{self.skills}"
        )
        if self.writer is not None:
            tags = TENSORBOARD_TAGS | {key: key for key in record if key.startswith("heldout/")}
            for key, tag in tags.items():
                if math.isfinite(record[key]):
                    self.writer.add_scalar(tag, record[key], record["step"])

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.active:
            self.file.close()
            if self.writer is not None:
                self.writer.close()
