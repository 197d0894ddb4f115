"""Learning curves: teacher-forced skill on held-out world documents, cheap enough to log every few
dozen training steps (``ringworld train --eval-every N``).

The oracle's scores (``ringworld.eval.world``) judge free-running generations and take a while;
these read one forward per task and say early whether the model is learning *objects*, not just the
background every frame is mostly made of.

| key                            | on                                                       |
| ------------------------------ | -------------------------------------------------------- |
| t2i_object_loss / _acc         | text→image: image cells that are not the background code |
| t2v_object_loss / _acc         | text→video: the same, every frame [1]                    |
| t2v_frame_acc                  | text→video: frames with every id right                   |
| predict_object_loss / _acc     | prediction: object cells of the frames the context fixes |
| predict_cell_acc / _frame_acc  | those frames: every id; frames with every id right       |
| act_object_loss / _acc, ...    | the same for frames after actions                        |
| predict_said_acc, act_said_acc | the motion said before frames (``--say-motion``): tokens  |
| caption_token_acc              | image→text: the caption's tokens                         |
| qa_token_acc                   | questions: the answer's tokens                           |

Frames the context fixes are those from the third on: two frames show every velocity (and, with
actions, where the agent goes), so the third is determined; the second is not for objects whose
velocity the first frame cannot show. A frame's ids are its codes, and for frames written as their
changes (``Codec.delta_frames``) the cells and the ``<|eof|>`` that ends the list too: what greedy
decoding must get right to draw the frame. [1] In frames written as changes, object codes are those
of the cells that changed to an object: where objects went, a different count from whole frames'
(so compare object figures only between runs of one layout). Accuracy is the argmax's; loss is in nats.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ringworld.data.packing import IGNORE, PackedBatch, pack
from ringworld.data.sources import task_documents
from ringworld.tokens.codec import Codec

if TYPE_CHECKING:
    from ringworld.world.tasks import TaskConfig

CURVES_SEED = 7_000_011  # held-out documents: neither training's (seed, step, row) nor the oracle eval's
DETERMINED_FROM = 2  # the first video frame the context fixes
TASK_KEYS = {  # world task -> the name its metrics go under
    "text_to_image": "t2i",
    "text_to_video": "t2v",
    "predict": "predict",
    "act": "act",
    "image_to_text": "caption",
    "qa": "qa",
}
# the skill ``follow_curves`` reads for each task: the oracle's judgement of generated samples
# (``ringworld.eval.world.judged_skills``), which a perfect model scores 1 on. Teacher-forced whole
# answers cannot be: a caption's wording is drawn at random, and an image drawn from a caption may put
# an object in any cell of its region (measured in docs/results.md, #21).
SKILL_KEYS = {
    "text_to_image": "t2i_accuracy",
    "image_to_text": "caption_accuracy",
    "text_to_video": "t2v_accuracy",
    "predict": "predict_accuracy_1",
    "act": "action_accuracy_mean",
    "qa": "qa_accuracy",
}
FOLLOW_FLOOR = 0.1  # the least share of its weight a task keeps once its skill is whole


def follow_curves(base: dict[str, float], skills: dict[str, float]) -> dict[str, float]:
    """Task weights that follow the judged curves: each task's base weight times what is left to
    learn, ``1 - skill`` (its ``SKILL_KEYS`` figure), kept at least ``FOLLOW_FLOOR``. A task
    learned moves its share of the documents to those that are not yet. Tasks without a
    figure keep their weight."""
    out = {}
    for task, weight in base.items():
        skill = skills.get(SKILL_KEYS.get(task, ""), float("nan"))
        out[task] = weight if skill != skill else weight * max(1.0 - skill, FOLLOW_FLOOR)
    return out


class HeldOutCurves:
    """Held-out documents of every scored world task, packed once; call with a model for the metrics."""

    def __init__(
        self,
        codec: Codec,
        task_config: TaskConfig,
        background_code: int,
        *,
        documents: int = 24,
        seq_len: int = 512,
        seed: int = CURVES_SEED,
    ) -> None:
        vocab = codec.vocab
        self.background = vocab.code_id(background_code)
        self.codes, self.cells, self.text = vocab.code_ids, vocab.cell_ids, vocab.text_ids
        self.eof = vocab.special("<|eof|>")
        self.batches: dict[str, PackedBatch] = {}
        for task in TASK_KEYS:
            docs = task_documents(codec, task, documents, seed, task_config)
            longest = max(map(len, docs))
            self.batches[task] = pack(docs, max(seq_len, longest), vocab.special("<|pad|>"))

    def frame_of_target(self, batch: PackedBatch) -> torch.Tensor:
        """(B, T) the video frame each target belongs to (0 in images and text): the <|eof|>s before
        it in its own document."""
        eof = (batch.ids == self.eof).long()
        seen = eof.cumsum(1)  # <|eof|>s up to and including each token
        first = torch.ones_like(batch.segment_ids, dtype=torch.bool)
        first[:, 1:] = batch.segment_ids[:, 1:] != batch.segment_ids[:, :-1]
        before_document = torch.where(first, seen - eof, torch.zeros_like(seen)).cummax(1).values
        return seen - before_document

    @torch.inference_mode()
    def __call__(self, model: torch.nn.Module, logit_bias: torch.Tensor | None = None) -> dict[str, float]:
        """The metrics of the module docstring; ``logit_bias`` (V,) is added to the logits, as the
        engine does when sampling."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        out: dict[str, float] = {}
        try:
            for task, batch in self.batches.items():
                on = batch.to(device)
                logits = model(on.ids, segment_ids=on.segment_ids, positions=on.positions).float()
                if logit_bias is not None:
                    logits = logits + logit_bias.to(device)
                out |= self._metrics(TASK_KEYS[task], batch, logits.cpu())
        finally:
            model.train(was_training)
        return out

    def _metrics(self, key: str, batch: PackedBatch, logits: torch.Tensor) -> dict[str, float]:
        scored = batch.weights > 0
        predicted = logits.argmax(-1)
        right = predicted == batch.targets
        if key in ("caption", "qa"):
            return {f"{key}_token_acc": _mean(right[scored])}
        nll = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE, reduction="none")
        nll = nll.view_as(right)
        codes = scored & (batch.targets >= self.codes.start) & (batch.targets < self.codes.stop)
        # a frame's ids: its codes, and in frames written as changes the cells and the <|eof|> that ends them
        frame_ids = codes | (scored & (batch.targets >= self.cells.start) & (batch.targets < self.cells.stop))
        if self.cells:
            frame_ids |= scored & (batch.targets == self.eof)
        if key in ("predict", "act"):
            determined = self.frame_of_target(batch) >= DETERMINED_FROM
            codes, frame_ids = codes & determined, frame_ids & determined
        objects = codes & (batch.targets != self.background)
        found = {f"{key}_object_loss": _mean(nll[objects]), f"{key}_object_acc": _mean(right[objects])}
        said = scored & (batch.targets < self.text.stop)  # notes: the only text in these videos
        if key in ("predict", "act"):
            found[f"{key}_cell_acc"] = _mean(right[frame_ids])
            if said.any():
                found[f"{key}_said_acc"] = _mean(right[said])
        if key != "t2i":
            found[f"{key}_frame_acc"] = _frames_right(batch, self.frame_of_target(batch), frame_ids, right)
        return found


def _mean(values: torch.Tensor) -> float:
    return round(float(values.float().mean()), 4) if values.numel() else float("nan")


def _frames_right(batch: PackedBatch, frame: torch.Tensor, cells: torch.Tensor, right: torch.Tensor) -> float:
    """The share of (document, frame) pairs among ``cells`` whose every cell is right."""
    row = torch.arange(batch.ids.size(0))[:, None].expand_as(frame)
    keys = (row * 100_000 + batch.segment_ids) * 1_000 + frame  # one key per (row, document, frame)
    found, index = keys[cells].unique(return_inverse=True)
    wrong = torch.zeros(len(found)).index_add_(0, index, (~right[cells]).float())
    return round(float((wrong == 0).float().mean()), 4) if len(found) else float("nan")
