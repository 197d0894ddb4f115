"""Masked sequence packing (LWM): whole documents share fixed-length rows without seeing each other.

Every token carries the id of its document (``segment_ids``, -1 for padding); attention stays
inside a document, positions restart at 0 in each, and the target of a document's last token is
nothing, so no loss crosses a boundary. ``weights`` says which targets count (the codec's loss
mask, e.g. only the answer in QA), ``modality`` whether each target is text or vision, for the
loss balance. A document longer than a row is cut into pieces that overlap by one token, so
every one of its targets is still predicted exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from ringworld.tokens.codec import Encoded

IGNORE = -100  # target of a token with nothing to predict (cross_entropy's ignore_index)
PAD_SEGMENT = -1


@dataclass
class PackedBatch:
    ids: torch.Tensor  # (B, T) int64 input tokens
    targets: torch.Tensor  # (B, T) int64 next token, IGNORE where none
    segment_ids: torch.Tensor  # (B, T) int64 document of each token, PAD_SEGMENT for padding
    positions: torch.Tensor  # (B, T) int64, 0 at each document's start
    weights: torch.Tensor  # (B, T) float32, 1 where the target counts in the loss
    modality: torch.Tensor  # (B, T) int64 modality of the target (MODALITY_TEXT / MODALITY_VISION)

    @property
    def shape(self) -> torch.Size:
        return self.ids.shape

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(**{f.name: getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)})

    def rows(self, index: slice) -> PackedBatch:
        return PackedBatch(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def num_real_tokens(self) -> int:
        """Tokens that are not padding: what a packed row is worth."""
        return int((self.segment_ids != PAD_SEGMENT).sum())

    @staticmethod
    def cat(batches: Sequence[PackedBatch]) -> PackedBatch:
        return PackedBatch(**{f.name: torch.cat([getattr(b, f.name) for b in batches]) for f in fields(PackedBatch)})


def piece_starts(length: int, seq_len: int) -> range:
    """Where the pieces of a ``length``-token document start when it is cut to fit rows of ``seq_len``:
    consecutive pieces share one token (the last input of a piece is the first of the next), so each
    target of the document is predicted in exactly one piece."""
    if length <= seq_len:
        return range(1)
    if seq_len < 2:
        raise ValueError(f"seq_len {seq_len} is too short to split a document; use at least 2")
    return range(0, length - 1, seq_len - 1)


def split_long(doc: Encoded, seq_len: int) -> list[Encoded]:
    """The document cut into pieces of at most ``seq_len`` tokens (see ``piece_starts``)."""
    return [
        Encoded(doc.ids[s : s + seq_len], doc.loss_mask[s : s + seq_len], doc.modality[s : s + seq_len])
        for s in piece_starts(len(doc), seq_len)
    ]


class RowPacker:
    """Fills one row of ``seq_len`` tokens with whole documents."""

    def __init__(self, seq_len: int, pad_id: int) -> None:
        self.seq_len, self.pad_id = seq_len, pad_id
        self.docs: list[Encoded] = []
        self.used = 0

    @property
    def free(self) -> int:
        return self.seq_len - self.used

    def add(self, doc: Encoded) -> bool:
        """Put ``doc`` in the row if it fits; say whether it did."""
        if len(doc) > self.free or len(doc) == 0:
            return False
        self.docs.append(doc)
        self.used += len(doc)
        return True

    def arrays(self) -> dict[str, np.ndarray]:
        T = self.seq_len
        out = {
            "ids": np.full(T, self.pad_id, np.int64),
            "targets": np.full(T, IGNORE, np.int64),
            "segment_ids": np.full(T, PAD_SEGMENT, np.int64),
            "positions": np.zeros(T, np.int64),
            "weights": np.zeros(T, np.float32),
            "modality": np.zeros(T, np.int64),
        }
        at = 0
        for segment, doc in enumerate(self.docs):
            n = len(doc)
            row = slice(at, at + n)
            out["ids"][row] = doc.ids
            out["targets"][at : at + n - 1] = doc.ids[1:]
            out["segment_ids"][row] = segment
            out["positions"][row] = np.arange(n)
            out["weights"][at : at + n - 1] = doc.loss_mask[1:]
            out["modality"][at : at + n - 1] = doc.modality[1:]
            at += n
        return out


def rows_to_batch(rows: Sequence[RowPacker]) -> PackedBatch:
    arrays = [r.arrays() for r in rows]
    return PackedBatch(**{k: torch.from_numpy(np.stack([a[k] for a in arrays])) for k in arrays[0]})


def pack(documents: Iterable[Encoded], seq_len: int, pad_id: int) -> PackedBatch:
    """Pack documents into as few rows as first-fit finds, keeping their order within each row."""
    rows: list[RowPacker] = []
    for doc in documents:
        if len(doc) == 0:
            continue
        for piece in split_long(doc, seq_len):
            if not any(row.add(piece) for row in rows):
                rows.append(RowPacker(seq_len, pad_id))
                rows[-1].add(piece)
    if not rows:
        raise ValueError("nothing to pack: no documents were given")
    return rows_to_batch(rows)
