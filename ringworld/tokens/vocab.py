"""One id space for every modality: ``[text BPE ids | special tokens | visual codes | actions | cells]``.

Each range is contiguous and disjoint, so one embedding table and one LM head serve all
modalities, and the kind of any id is read off by comparing it with the range bounds. Cells name
the places of a frame's grid (raster order); a vocabulary has them when its codec writes video
frames after the first as their changes (``ringworld.tokens.codec``), none otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ringworld.documents import ACTIONS

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|bos|>",
    "<|eos|>",
    "<|pad|>",
    "<|sep|>",  # between two adjacent Text segments
    "<|image|>",
    "<|/image|>",
    "<|eol|>",  # ends every image row
    "<|video|>",
    "<|/video|>",
    "<|eof|>",  # ends every video frame
    "<|actions|>",  # wraps a standalone Action segment
    "<|/actions|>",
)
_SPECIAL_INDEX = {name: i for i, name in enumerate(SPECIAL_TOKENS)}
_ACTION_INDEX = {name: i for i, name in enumerate(ACTIONS)}

# Modality labels, for loss reported and weighted per modality.
MODALITY_TEXT = 0
MODALITY_VISION = 1
VISION_SPECIALS: tuple[str, ...] = (
    "<|image|>",
    "<|/image|>",
    "<|eol|>",
    "<|video|>",
    "<|/video|>",
    "<|eof|>",
)


def _in_range(ids: Any, r: range) -> Any:
    """``r.start <= ids < r.stop`` elementwise for arrays, a plain bool for one id."""
    if isinstance(ids, np.ndarray):
        return (ids >= r.start) & (ids < r.stop)
    return r.start <= int(ids) < r.stop


@dataclass(frozen=True)
class Vocab:
    """The id layout for a text tokenizer of ``text_size`` ids and a vision tokenizer of ``num_codes``."""

    text_size: int
    num_codes: int
    num_cells: int = 0  # grid places (h * w) when video frames are written as changes, else 0

    def __post_init__(self) -> None:
        for name in ("text_size", "num_codes", "num_cells"):
            value = getattr(self, name)
            least = 0 if name == "num_cells" else 1
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least:
                raise ValueError(f"Vocab {name} must be an int >= {least}, got {value!r}")

    # ranges ------------------------------------------------------------------------------
    @property
    def text_ids(self) -> range:
        return range(0, self.text_size)

    @property
    def special_ids(self) -> range:
        return range(self.text_size, self.text_size + len(SPECIAL_TOKENS))

    @property
    def code_ids(self) -> range:
        start = self.special_ids.stop
        return range(start, start + self.num_codes)

    @property
    def action_ids(self) -> range:
        start = self.code_ids.stop
        return range(start, start + len(ACTIONS))

    @property
    def cell_ids(self) -> range:
        start = self.action_ids.stop
        return range(start, start + self.num_cells)

    @property
    def size(self) -> int:
        return self.cell_ids.stop

    # kinds -------------------------------------------------------------------------------
    def is_text(self, ids: Any) -> Any:
        return _in_range(ids, self.text_ids)

    def is_special(self, ids: Any) -> Any:
        return _in_range(ids, self.special_ids)

    def is_code(self, ids: Any) -> Any:
        return _in_range(ids, self.code_ids)

    def is_action(self, ids: Any) -> Any:
        return _in_range(ids, self.action_ids)

    def is_cell(self, ids: Any) -> Any:
        return _in_range(ids, self.cell_ids)

    # names <-> ids -----------------------------------------------------------------------
    def special(self, name: str) -> int:
        if name not in _SPECIAL_INDEX:
            raise ValueError(f"unknown special token {name!r}; the specials are {' '.join(SPECIAL_TOKENS)}")
        return self.special_ids.start + _SPECIAL_INDEX[name]

    @property
    def vision_openers(self) -> frozenset[int]:
        """The ids that open an image or a video."""
        return frozenset((self.special("<|image|>"), self.special("<|video|>")))

    def code_id(self, code: Any) -> Any:
        """Id of visual code ``code`` (an int or an integer array)."""
        codes = np.asarray(code)
        if codes.size and (codes.min() < 0 or codes.max() >= self.num_codes):
            raise ValueError(
                f"visual codes must lie in 0..{self.num_codes - 1}, got values in "
                f"{codes.min()}..{codes.max()}; the codes come from a different vision tokenizer"
            )
        if isinstance(code, np.ndarray):
            return code.astype(np.int64) + self.code_ids.start
        return int(code) + self.code_ids.start

    def code_of(self, ids: Any) -> Any:
        """Visual code of id ``ids`` (an int or an integer array); raises if any is not a code."""
        arr = np.asarray(ids)
        ok = self.is_code(arr)
        if not np.all(ok):
            first = int(arr[~ok].flat[0]) if arr.ndim else int(arr)
            raise ValueError(f"{self.describe(first)} is not a visual code")
        if isinstance(ids, np.ndarray):
            return ids.astype(np.int64) - self.code_ids.start
        return int(ids) - self.code_ids.start

    def action_id(self, name: str) -> int:
        if name not in _ACTION_INDEX:
            raise ValueError(f"unknown action {name!r}; actions are {', '.join(ACTIONS)}")
        return self.action_ids.start + _ACTION_INDEX[name]

    def action_of(self, id: int) -> str:
        if not self.is_action(id):
            raise ValueError(f"{self.describe(id)} is not an action")
        return ACTIONS[int(id) - self.action_ids.start]

    def describe(self, id: int) -> str:
        """``id`` and what it stands for, for error messages: ``"id 530 (<|eol|>)"``."""
        id = int(id)
        if self.is_text(id):
            what = "text"
        elif self.is_special(id):
            what = SPECIAL_TOKENS[id - self.special_ids.start]
        elif self.is_code(id):
            what = f"visual code {id - self.code_ids.start}"
        elif self.is_action(id):
            what = f"action {ACTIONS[id - self.action_ids.start]}"
        elif self.is_cell(id):
            what = f"cell {id - self.cell_ids.start}"
        else:
            what = f"outside the vocabulary of size {self.size}"
        return f"id {id} ({what})"

    def modality(self, ids: np.ndarray) -> np.ndarray:
        """Modality label of each id: (...) int -> (...) uint8.

        Visual codes, cells and the image/video structure tokens are ``MODALITY_VISION``; everything
        else is ``MODALITY_TEXT``, actions included: an action is a discrete symbol from a small
        set, predicted like a word, and its loss is on the scale of text losses, not of codes.
        """
        ids = np.asarray(ids)
        bad = (ids < 0) | (ids >= self.size)
        if bad.any():
            raise ValueError(f"{self.describe(ids[bad].flat[0])}; ids must lie in 0..{self.size - 1}")
        vision = self.is_code(ids) | self.is_cell(ids) | np.isin(ids, [self.special(name) for name in VISION_SPECIALS])
        return np.where(vision, MODALITY_VISION, MODALITY_TEXT).astype(np.uint8)

    # persistence -------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "text_size": int(self.text_size),
            "num_codes": int(self.num_codes),
            "num_cells": int(self.num_cells),
            "special_tokens": list(SPECIAL_TOKENS),
            "actions": list(ACTIONS),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Vocab:
        for key, ours in (("special_tokens", SPECIAL_TOKENS), ("actions", ACTIONS)):
            theirs = tuple(data.get(key, ours))
            if theirs != ours:
                raise ValueError(
                    f"this vocab was saved with {key} {list(theirs)}, but this ringworld uses "
                    f"{list(ours)}; the ids would mean different things — retokenize the data"
                )
        return cls(
            text_size=int(data["text_size"]), num_codes=int(data["num_codes"]), num_cells=int(data.get("num_cells", 0))
        )
