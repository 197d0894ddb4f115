"""A public family's ids as training reads a vocabulary: ``FamilyVocab`` answers what ``Vocab`` answers
for ringworld's own ids (size, the special ids, text or vision, how to describe an id, JSON), so
shards, packing and the training loop take either. ``read_vocab`` reads either kind back from JSON.

Its facts are the family's layout (``ringworld.tokens.layout``, read from the folder by
``ringworld.tokens.family``): the begin, end and padding ids, the id of each VQ code, and the ids that
frame an image. The families write no videos, actions or cells.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np

from ringworld.tokens.layout import TokenLayout
from ringworld.tokens.vocab import MODALITY_TEXT, MODALITY_VISION, Vocab

KIND = "family"  # the "kind" of a family vocabulary's JSON; ringworld's own has none


@dataclass(frozen=True)
class FamilyVocab:
    size: int
    bos: int
    eos: int
    pad: int
    code_ids: tuple[int, ...]  # the id of each VQ code (none: a text-only family)
    image_open: tuple[int, ...]  # Emu3: <|image start|>, the size as text, <|image token|>
    row_end: int | None
    image_close: tuple[int, ...]

    @classmethod
    def of_layout(cls, layout: TokenLayout) -> FamilyVocab:
        return cls(
            size=int(layout.vocab_size),
            bos=int(layout.bos),
            eos=int(layout.eos),
            pad=int(layout.pad),
            code_ids=tuple(int(i) for i in layout.code_ids),
            image_open=tuple(int(i) for i in layout.image_open),
            row_end=None if layout.row_end is None else int(layout.row_end),
            image_close=tuple(int(i) for i in layout.image_close),
        )

    @cached_property
    def _framing(self) -> np.ndarray:
        """The ids around and inside an image that are no code and no text (Emu3's size, written as text
        between its first and last opening ids, stays text)."""
        ids = [*self.image_open[:1], *self.image_open[-1:], *self.image_close]
        return np.array(ids + ([self.row_end] if self.row_end is not None else []), dtype=np.int64)

    @cached_property
    def _codes(self) -> np.ndarray:
        return np.array(self.code_ids, dtype=np.int64)

    @cached_property
    def _code_of(self) -> dict[int, int]:
        return {id_: code for code, id_ in enumerate(self.code_ids)}

    def special(self, name: str) -> int:
        """The id training asks for by ringworld's name: <|bos|>, <|eos|>, <|pad|>, and <|image|> (the first
        id that opens an image)."""
        ids = {"<|bos|>": self.bos, "<|eos|>": self.eos, "<|pad|>": self.pad}
        if self.image_open:
            ids["<|image|>"] = self.image_open[0]
        if name not in ids:
            raise ValueError(f"a public family's vocabulary has no {name}; it names {' '.join(ids)}")
        return ids[name]

    @property
    def vision_openers(self) -> frozenset[int]:
        """The ids that open an image (a family writes no video)."""
        return frozenset(self.image_open[:1])

    def modality(self, ids: np.ndarray) -> np.ndarray:
        """Modality label of each id, (...) int -> (...) uint8: an image's codes, row ends and framing ids are
        vision; everything else is text."""
        ids = np.asarray(ids)
        bad = (ids < 0) | (ids >= self.size)
        if bad.any():
            raise ValueError(f"{self.describe(ids[bad].flat[0])}; ids must lie in 0..{self.size - 1}")
        vision = np.isin(ids, self._codes) | np.isin(ids, self._framing)
        return np.where(vision, MODALITY_VISION, MODALITY_TEXT).astype(np.uint8)

    def is_text(self, ids: Any) -> Any:
        """Whether each id is text: neither vision nor the begin, end or padding id."""
        arr = np.asarray(ids)
        text = (self.modality(arr) == MODALITY_TEXT) & ~np.isin(arr, [self.bos, self.eos, self.pad])
        return text if isinstance(ids, np.ndarray) else bool(text)

    def describe(self, id: int) -> str:
        """``id`` and what it stands for, for error messages: ``"id 120 (visual code 13)"``."""
        id = int(id)
        names = {self.bos: "begin", self.eos: "end", self.pad: "padding"}
        names |= {int(i): "image framing" for i in self._framing}
        if not 0 <= id < self.size:
            what = f"outside the vocabulary of size {self.size}"
        elif id in self._code_of:
            what = f"visual code {self._code_of[id]}"
        else:
            what = names.get(id, "text")
        return f"id {id} ({what})"

    def to_json(self) -> dict[str, Any]:
        return {"kind": KIND, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FamilyVocab:
        fields = {k: v for k, v in data.items() if k != "kind"}
        for key in ("code_ids", "image_open", "image_close"):
            fields[key] = tuple(fields[key])
        return cls(**fields)


def read_vocab(data: dict[str, Any]) -> Vocab | FamilyVocab:
    """The vocabulary a ``to_json`` wrote: ringworld's own or a public family's."""
    return FamilyVocab.from_json(data) if data.get("kind") == KIND else Vocab.from_json(data)
