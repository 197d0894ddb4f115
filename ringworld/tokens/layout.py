"""A token layout as data: which ids frame an image, end its rows and stand for its codes, and which ids
mean begin, end and padding. Generation reads nothing else of a vocabulary (``ringworld.infer``).

ringworld's own layout is one instance (``Codec.layout``), the public families' are others
(``layout_of_family``)::

    ringworld   <|image|>  rows: w codes + <|eol|>  <|/image|>        (and videos, actions, cells)
    Emu3        <|image start|> h*w <|image token|>  rows: w codes + <|extra_200|>  <|extra_201|> <|image end|>
    Chameleon   <racm3:break>  h x w codes, rows without ends  <eoss>

Only ringworld's layout has videos (``VideoLayout``): the families write images only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class VideoLayout:
    """ringworld's video structure: ``<|video|> frame <|eof|> [action] [note] frame <|eof|> ... <|/video|>``."""

    open: int
    close: int
    eof: int
    action_ids: range
    cell_ids: range  # empty unless frames after the first are written as their changes
    text_ids: range  # what a note may hold


@dataclass(frozen=True)
class TokenLayout:
    vocab_size: int
    bos: int
    eos: int
    pad: int
    grid: tuple[int, int]  # (h, w) codes of an image
    code_ids: np.ndarray  # (num_codes,) the id of each visual code
    image_open: tuple[int, ...]  # the ids before an image's rows (none: the layout has no images)
    row_end: int | None  # the id after each row, if rows have one
    image_close: tuple[int, ...]  # the ids after the rows
    video: VideoLayout | None = None
    hidden: tuple[int, ...] = ()  # ids never written outside a span besides the codes (e.g. <|bos|>)

    def __post_init__(self) -> None:
        if bool(self.image_open) != bool(self.image_close):
            raise ValueError("an image has opening and closing ids, or the layout has neither (no images)")
        ids = np.asarray(self.code_ids)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"code ids lie in {ids.min()}..{ids.max()}, outside the vocabulary of {self.vocab_size}")

    @property
    def row_length(self) -> int:
        """Ids of one row: its codes and its end, if it has one."""
        return self.grid[1] + (self.row_end is not None)

    @property
    def body_length(self) -> int:
        """Ids of an image's rows, without its opening and closing ids."""
        return self.grid[0] * self.row_length

    def without_images(self) -> TokenLayout:
        """This layout for a model that writes no image (it reads them in prompts): no span opens, so an
        image's opening id is an id like any other, and the codes are never written."""
        return replace(self, grid=(0, 0), image_open=(), row_end=None, image_close=())

    def image_ids(self, codes: np.ndarray) -> np.ndarray:
        """(h, w) codes -> the ids of the image: opening, rows, closing."""
        h, w = self.grid
        if codes.shape != (h, w):
            raise ValueError(f"codes are {codes.shape}; this layout's images are {h}x{w}")
        rows = np.asarray(self.code_ids)[codes]  # (h, w)
        if self.row_end is not None:
            rows = np.concatenate([rows, np.full((h, 1), self.row_end)], axis=1)
        return np.concatenate([self.image_open, rows.ravel(), self.image_close]).astype(np.int64)
