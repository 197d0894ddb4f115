"""Where training batches come from: the sprite world's task mixture, or ingested token shards.

A source hands out *global* batches (every row of a step, across all data-parallel ranks), and a
rank takes its own rows. The global batch never depends on how many processes share it, so one
process and N processes see the same data, and a run resumes at another world size.

- ``WorldSource``: row ``r`` of step ``s`` is packed from documents drawn with the seed
  ``(seed, s, r)`` from the task mixture; its state is the step counter and the task weights
  (training may move them: ``TrainConfig.follow_curves``).
- ``ShardSource``: documents in a seeded random order per epoch, packed first-fit in that order;
  its state is (epoch, cursor). Packing reads only the lengths in the index; tokens are read for
  the rows a rank keeps.
"""

from __future__ import annotations

import numpy as np

from ringworld.data.packing import PackedBatch, RowPacker, piece_starts, rows_to_batch
from ringworld.data.shards import ShardDataset
from ringworld.tokens.codec import Codec, Encoded
from ringworld.tokens.family_vocab import FamilyVocab
from ringworld.tokens.vocab import Vocab
from ringworld.world.sim import WorldConfig
from ringworld.world.tasks import (
    DEFAULT_WEIGHTS,
    NEEDLE_TASKS,
    TaskConfig,
    TaskSample,
    check_task_weights,
    fit_needles,
    sample_mixture,
    sample_task,
)

MISSES_BEFORE_CLOSING = 8  # documents that did not fit before a world row is closed
DRAWN_AT_ONCE = 8  # world documents sampled and encoded together (a row of 512 ids tries about 15)


def drop_caption(doc: Encoded, vocab: Vocab | FamilyVocab) -> Encoded:
    """The document without its leading text when that text conditions an image or video (text→image,
    text→video; an ingested caption, which takes loss, too): what classifier-free guidance samples as the
    unconditional branch."""
    ids = doc.ids
    opener = 1
    while opener < len(ids) and vocab.is_text(int(ids[opener])):
        opener += 1
    if opener == 1 or opener >= len(ids) or int(ids[opener]) not in vocab.vision_openers:
        return doc
    keep = np.r_[0, opener : len(ids)]
    return Encoded(ids[keep], doc.loss_mask[keep], doc.modality[keep])


def check_caption_dropout(p: float) -> None:
    if not 0 <= p < 1:
        raise ValueError(f"caption dropout is a probability in [0, 1), got {p}")


def task_documents(codec: Codec, task: str, n: int, seed: int, task_config: TaskConfig) -> list[Encoded]:
    """``n`` encoded documents of one world task, drawn from ``seed`` (held-out sets)."""
    rng = np.random.default_rng([seed, sum(map(ord, task))])
    return [codec.encode(sample_task(task, rng, task_config).document) for _ in range(n)]


class WorldSource:
    """Seeded world-task mixtures, encoded and packed on the fly."""

    def __init__(
        self,
        codec: Codec,
        *,
        seq_len: int,
        rows: int,
        seed: int = 0,
        task_weights: dict[str, float] | None = None,
        task_config: TaskConfig = TaskConfig(),
        caption_dropout: float = 0.1,
    ) -> None:
        check_caption_dropout(caption_dropout)
        if task_weights is not None:
            check_task_weights(task_weights)
        self.codec, self.seq_len, self.num_rows, self.seed = codec, seq_len, rows, seed
        self.task_weights, self.task_config, self.caption_dropout = task_weights, task_config, caption_dropout
        self.step = 0

    def row_documents(self, step: int, row: int) -> list[Encoded]:
        """The documents packed into ``row`` of ``step`` (a pure function of seed, step and row)."""
        return self._row(step, row).docs

    def _row(self, step: int, row: int) -> RowPacker:
        rng = np.random.default_rng([self.seed, step, row])
        packer = RowPacker(self.seq_len, self.codec.vocab.special("<|pad|>"))
        misses = 0
        drawn: list[tuple[TaskSample, Encoded, bool]] = []
        while misses < MISSES_BEFORE_CLOSING and packer.free > 0:
            if not drawn:  # the next documents in the rng's order, their pixels encoded in one call
                drawn = self._draw(rng, DRAWN_AT_ONCE)
            sample, doc, dropped = drawn.pop(0)
            if dropped:
                doc = drop_caption(doc, self.codec.vocab)
            if len(doc) > self.seq_len and sample.task == "needle_text":
                # its filler is sized for the row statistically (``fit_needles``): the rare longer one is drawn again
                misses += 1
                continue
            if len(doc) > self.seq_len:
                raise ValueError(
                    f"a {sample.task} document is {len(doc)} tokens, longer than a row ({self.seq_len}); "
                    f"raise --seq-len or use fewer video frames (needle tasks: size them with fit_needles)"
                )
            misses += not packer.add(doc)
        return packer

    def _draw(self, rng: np.random.Generator, n: int) -> list[tuple[TaskSample, Encoded, bool]]:
        """``n`` (sample, encoding, caption dropped) in the order one at a time would draw them: a
        row's documents do not depend on how many are drawn at once, only on the row's rng."""
        samples, dropped = [], []
        for _ in range(n):
            samples.append(sample_mixture(rng, self.task_weights, self.task_config))
            dropped.append(bool(rng.random() < self.caption_dropout))
        encoded = self.codec.encode_batch([s.document for s in samples])
        return list(zip(samples, encoded, dropped, strict=True))

    def batch(self, step: int, rows: slice = slice(None)) -> PackedBatch:
        return rows_to_batch([self._row(step, r) for r in range(self.num_rows)[rows]])

    def next_batch(self, rows: slice = slice(None)) -> PackedBatch:
        batch = self.batch(self.step, rows)
        self.step += 1
        return batch

    def mixture(self) -> dict[str, float]:
        """The task weights documents are drawn with now."""
        return dict(self.task_weights or DEFAULT_WEIGHTS)

    def set_task_weights(self, weights: dict[str, float]) -> None:
        check_task_weights(weights)
        self.task_weights = dict(weights)

    def state_dict(self) -> dict:
        weights = None if self.task_weights is None else dict(self.task_weights)
        return {"kind": "world", "step": self.step, "seed": self.seed, "task_weights": weights}

    def load_state_dict(self, state: dict) -> None:
        _check_state(state, "world", self.seed)
        self.step = int(state["step"])
        if state.get("task_weights") is not None:  # checkpoints from before follow_curves have none
            self.set_task_weights(state["task_weights"])


class ShardSource:
    """Ingested shards, shuffled per epoch and packed first-fit, for as many epochs as asked.

    Rows are planned from the index's lengths alone: first-fit over a window of the next
    ``lookahead`` pieces, the pieces left over carried to the next batch (and in the state).
    """

    def __init__(
        self,
        dataset: ShardDataset,
        *,
        seq_len: int,
        rows: int,
        seed: int = 0,
        caption_dropout: float = 0.1,
        lookahead: int = 64,
    ) -> None:
        if len(dataset) == 0:
            raise ValueError(f"{dataset.directory} holds no documents; ingest some with `ringworld data ingest`")
        check_caption_dropout(caption_dropout)
        self.dataset, self.seq_len, self.num_rows, self.seed, self.lookahead = dataset, seq_len, rows, seed, lookahead
        self.caption_dropout = caption_dropout
        self.pad_id = dataset.vocab.special("<|pad|>")
        self.epoch, self.cursor = 0, 0
        self.carry: list[tuple[int, int, int, int]] = []  # (epoch, document, start, length) read ahead, not packed
        self._cached_order: tuple[int, np.ndarray] = (-1, np.empty(0, np.int64))

    def _order(self, epoch: int) -> np.ndarray:
        if self._cached_order[0] != epoch:
            self._cached_order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset)))
        return self._cached_order[1]

    def _fill(self, window: list[tuple[int, int, int, int]]) -> None:
        lengths = self.dataset.lengths
        while len(window) < self.lookahead:
            if self.cursor == len(self.dataset):
                self.epoch, self.cursor = self.epoch + 1, 0
            doc = int(self._order(self.epoch)[self.cursor])
            self.cursor += 1
            n = int(lengths[doc])
            window.extend((self.epoch, doc, s, min(self.seq_len, n - s)) for s in piece_starts(n, self.seq_len))

    def next_batch(self, rows: slice = slice(None)) -> PackedBatch:
        window = [tuple(p) for p in self.carry]
        plans = []
        for _ in range(self.num_rows):
            self._fill(window)
            plan, free, i = [], self.seq_len, 0
            while i < len(window) and free > 0:
                if window[i][3] <= free:
                    plan.append(window.pop(i))
                    free -= plan[-1][3]
                else:
                    i += 1
            plans.append(plan)
        self.carry = window
        packers = []
        for plan in plans[rows]:
            packer = RowPacker(self.seq_len, self.pad_id)
            for epoch, doc, start, n in plan:
                ids, loss = self.dataset[doc]
                whole = n == len(ids)
                ids, loss = ids[start : start + n], loss[start : start + n]
                piece = Encoded(ids, loss, self.dataset.vocab.modality(ids))
                if whole and np.random.default_rng([self.seed, epoch, doc]).random() < self.caption_dropout:
                    piece = drop_caption(piece, self.dataset.vocab)  # whole documents only
                packer.add(piece)
            packers.append(packer)
        return rows_to_batch(packers)

    def state_dict(self) -> dict:
        carry = [list(p) for p in self.carry]
        return {"kind": "shards", "epoch": self.epoch, "cursor": self.cursor, "carry": carry, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        _check_state(state, "shards", self.seed)
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self.carry = [tuple(p) for p in state["carry"]]


def _check_state(state: dict, kind: str, seed: int) -> None:
    if state.get("kind") != kind:
        raise ValueError(f"the checkpoint's data state is for a {state.get('kind')} source, this run reads {kind}")
    if state.get("seed") != seed:
        raise ValueError(
            f"the checkpoint's data seed is {state.get('seed')}, this run's is {seed}; pass --seed to match"
        )


def world_source(
    codec: Codec,
    world: dict,
    *,
    video_frames: int,
    seq_len: int,
    rows: int,
    seed: int,
    task_weights: dict[str, float] | None,
    caption_dropout: float,
    say_motion: bool = False,
) -> WorldSource:
    """The world-task source of a tokenizer's world (``world``: ``WorldConfig``'s fields, as
    ``ringworld.tokens.bundle.world_settings`` reads them); needle haystacks are sized to the row."""
    task_config = TaskConfig(world=WorldConfig(**world), video_frames=video_frames, say_motion=say_motion)
    if task_weights and any(task_weights.get(t, 0) > 0 for t in NEEDLE_TASKS):
        task_config = fit_needles(task_config, codec, seq_len)
    return WorldSource(
        codec,
        seq_len=seq_len,
        rows=rows,
        seed=seed,
        task_weights=task_weights,
        task_config=task_config,
        caption_dropout=caption_dropout,
    )
