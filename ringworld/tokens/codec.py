"""Documents <-> token ids, in one vocabulary.

Layout of one document (``h, w = grid``)::

    <|bos|> segment segment ... <|eos|>
    Text    its BPE ids; two adjacent Text segments get <|sep|> between them
    Image   <|image|> row0 <|eol|> ... row{h-1} <|eol|> <|/image|>          (a row is w codes)
    Video   <|video|> frame0 <|eof|> [action0] [note0] frame1 <|eof|> ... <|/video|> (a frame is the rows)
    Action  <|actions|> a a a <|/actions|>

With a vocabulary that has cells (``Vocab.num_cells == h * w``: ``Codec.build(..., delta_frames=True)``)
every video frame after the first is written as its *changes* from the frame before, after
Delta-IRIS (Micheli et al., 2024): ``cell code cell code ...`` for the cells whose code changed, in
raster order, then ``<|eof|>`` (an unchanged frame is ``<|eof|>`` alone). A frame the past fixes is
then a few ids of what moved rather than a whole grid of mostly background, so videos are short
and what is to be learned is the motion itself. Images and first frames keep the rows.

A video's action t sits right after frame t's ``<|eof|>``: every frame but the last has one, or
none does. Note t (``Video.notes``), text such as how each object moves next, comes after it and
before frame t + 1: the model says the motion, then draws it. Loss follows the segment: its
structure tokens take the segment's flag, ``<|bos|>`` takes none, ``<|eos|>`` and ``<|sep|>`` take
the flag of the segment before them.

Decoding (``ringworld.tokens.parse``) is strict by default: an id sequence that is not the encoding
of a document raises ``MalformedTokens`` naming the position and the token. ``lenient=True`` repairs instead (pads
short rows and missing rows with code 0, cuts long rows, closes unclosed spans, drops stray
tokens) and lists one line per repair in ``Decoded.problems``: the mode for model samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from ringworld.documents import Action, Document, Image, Segment, Text, Video
from ringworld.tokens.layout import TokenLayout, VideoLayout
from ringworld.tokens.parse import Parser
from ringworld.tokens.text import TextTokenizer
from ringworld.tokens.vocab import SPECIAL_TOKENS, Vocab


class VisionLike(Protocol):
    """What the codec needs of a vision tokenizer (``ringworld.tokens.vision``)."""

    frame_size: int  # frames are frame_size x frame_size

    def encode(self, pixels: np.ndarray) -> np.ndarray: ...  # (N, H, W, 3) uint8 -> (N, h, w) int64

    def decode(self, codes: np.ndarray) -> np.ndarray: ...  # (N, h, w) int -> (N, H, W, 3) uint8


@dataclass
class Encoded:
    ids: np.ndarray  # (L,) int64
    loss_mask: np.ndarray  # (L,) bool
    modality: np.ndarray  # (L,) uint8, MODALITY_TEXT or MODALITY_VISION

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Decoded:
    segments: Document  # images and videos carry codes; every loss flag is True
    problems: list[str] = field(default_factory=list)  # one line per lenient repair


class Codec:
    """Turns documents into ids of ``vocab`` and back; ``grid`` = (h, w) codes per image or frame."""

    def __init__(
        self,
        text: TextTokenizer,
        vocab: Vocab,
        grid: tuple[int, int],
        vision: VisionLike | None = None,
    ) -> None:
        if vocab.text_size != text.vocab_size:
            raise ValueError(
                f"vocab.text_size is {vocab.text_size} but the text tokenizer has {text.vocab_size} ids; "
                f"build the vocab as Vocab(text.vocab_size, num_codes)"
            )
        h, w = (int(x) for x in grid)
        if h < 1 or w < 1:
            raise ValueError(f"grid must be (h, w) with both >= 1, got {tuple(grid)}")
        if vocab.num_cells not in (0, h * w):
            raise ValueError(
                f"the vocab has {vocab.num_cells} cells but a {h}x{w} grid has {h * w}; build the vocab with "
                f"num_cells={h * w} to write video frames as changes, or 0 to write them whole"
            )
        for attr, ours in (("grid", (h, w)), ("num_codes", vocab.num_codes)):
            theirs = getattr(vision, attr, None)
            if theirs is not None and (tuple(theirs) if attr == "grid" else theirs) != ours:
                raise ValueError(
                    f"the vision tokenizer has {attr} {theirs} but the codec was given {ours}; "
                    f"use Codec.build(text, vision) to take both from the vision tokenizer"
                )
        self.text, self.vocab, self.grid, self.vision = text, vocab, (h, w), vision
        self._cs = vocab.code_ids.start
        self._sp = {name: vocab.special(name) for name in SPECIAL_TOKENS}
        self._action_ids = np.array(vocab.action_ids, dtype=np.int64)
        sp = self._sp
        self.layout = TokenLayout(  # what generation reads of this vocabulary (ringworld.infer)
            vocab_size=vocab.size,
            bos=sp["<|bos|>"],
            eos=sp["<|eos|>"],
            pad=sp["<|pad|>"],
            grid=(h, w),
            code_ids=np.arange(vocab.code_ids.start, vocab.code_ids.stop),
            image_open=(sp["<|image|>"],),
            row_end=sp["<|eol|>"],
            image_close=(sp["<|/image|>"],),
            video=VideoLayout(
                sp["<|video|>"], sp["<|/video|>"], sp["<|eof|>"], vocab.action_ids, vocab.cell_ids, vocab.text_ids
            ),
            hidden=(sp["<|bos|>"],),
        )

    @classmethod
    def build(cls, text: TextTokenizer, vision: VisionLike, *, delta_frames: bool = True) -> Codec:
        """A codec whose grid and code count come from ``vision.grid`` and ``vision.num_codes``;
        ``delta_frames`` writes video frames after the first as their changes (module docstring)."""
        h, w = vision.grid  # type: ignore[attr-defined]
        vocab = Vocab(
            text_size=text.vocab_size,
            num_codes=int(vision.num_codes),  # type: ignore[attr-defined]
            num_cells=h * w if delta_frames else 0,
        )
        return cls(text, vocab, (h, w), vision)

    @property
    def delta_frames(self) -> bool:
        """Whether video frames after the first are written as their changes."""
        return self.vocab.num_cells > 0

    @property
    def row_length(self) -> int:
        """Tokens of one row of a frame: w codes and its <|eol|>."""
        return self.grid[1] + 1

    @property
    def frame_length(self) -> int:
        """Tokens of one frame body: h rows."""
        return self.grid[0] * self.row_length

    @property
    def image_length(self) -> int:
        """Tokens one image takes, wrappers included."""
        return self.frame_length + 2

    @property
    def longest_frame(self) -> int:
        """Tokens of the longest video frame body: the rows, or a change at every cell."""
        return max(self.frame_length, 2 * self.vocab.num_cells)

    # encode ------------------------------------------------------------------------------
    def encode_batch(self, docs: list[Document]) -> list[Encoded]:
        """``[encode(doc) for doc in docs]``, with every frame given as pixels through the vision
        tokenizer in one call (one call a document costs ~3 ms of overhead each on a CPU)."""
        docs = [list(doc) for doc in docs]
        media = [(d, i) for d, doc in enumerate(docs) for i, seg in enumerate(doc) if _has_pixels(seg)]
        if not media:
            return [self.encode(doc) for doc in docs]
        frames = [self._check_pixels(_frames(docs[d][i]), i) for d, i in media]  # each (T, H, W, 3)
        codes = np.asarray(self.vision.encode(np.concatenate(frames)))  # type: ignore[union-attr]
        starts = np.cumsum([0] + [len(f) for f in frames])
        if codes.shape != (starts[-1], *self.grid):
            raise ValueError(
                f"the vision tokenizer returned codes of shape {codes.shape} for {starts[-1]} frames; this codec "
                f"expects ({starts[-1]}, {self.grid[0]}, {self.grid[1]}) — build it with Codec.build(text, vision)"
            )
        for (d, i), a, b in zip(media, starts[:-1], starts[1:], strict=True):
            seg = docs[d][i]  # the same segment (loss flags and all), given as codes
            docs[d][i] = replace(seg, pixels=None, codes=codes[a] if isinstance(seg, Image) else codes[a:b])
        return [self.encode(doc) for doc in docs]

    def encode(self, doc: Document) -> Encoded:
        doc = list(doc)
        codes = self._codes_of(doc)
        sp = self._sp
        parts: list[np.ndarray] = [np.array([sp["<|bos|>"]], dtype=np.int64)]
        losses: list[bool] = [False]

        def add(ids: np.ndarray | list[int], loss: bool) -> None:
            parts.append(np.asarray(ids, dtype=np.int64))
            losses.append(loss)

        prev: Segment | None = None
        for i, seg in enumerate(doc):
            if isinstance(seg, Text):
                if not seg.text:
                    raise ValueError(
                        f"segment {i} is an empty Text; drop it or give it some text "
                        f"(an empty segment has no tokens to stand for it)"
                    )
                if isinstance(prev, Text):
                    add([sp["<|sep|>"]], prev.loss)
                add(self.text.encode(seg.text), seg.loss)
            elif isinstance(seg, Image):
                rows = self._grid_ids(codes[i]).ravel()  # (h * (w + 1),)
                add(np.concatenate([[sp["<|image|>"]], rows, [sp["<|/image|>"]]]), seg.loss)
            elif isinstance(seg, Video):
                add(self._video_ids(codes[i], seg.actions, seg.notes), seg.loss)
            elif isinstance(seg, Action):
                acts = [self.vocab.action_id(a) for a in seg.actions]
                add([sp["<|actions|>"], *acts, sp["<|/actions|>"]], seg.loss)
            else:
                raise TypeError(
                    f"segment {i} is a {type(seg).__name__}; a document holds Text, Image, Video and Action segments"
                )
            prev = seg
        add([sp["<|eos|>"]], prev.loss if prev is not None else False)

        ids = np.concatenate(parts)
        loss_mask = np.repeat(np.array(losses), [len(p) for p in parts])
        return Encoded(ids=ids, loss_mask=loss_mask, modality=self.vocab.modality(ids))

    def _codes_of(self, doc: Document) -> list[np.ndarray | None]:
        """(T, h, w) int64 codes of each image (T = 1) or video, None for other segments;
        pixels go through the vision tokenizer in one batch."""
        out: list[np.ndarray | None] = [None] * len(doc)
        pixels: list[np.ndarray] = []
        where: list[int] = []
        for i, seg in enumerate(doc):
            if not isinstance(seg, (Image, Video)):
                continue
            single = isinstance(seg, Image)
            if seg.codes is not None:
                out[i] = self._check_codes(seg.codes[None] if single else seg.codes, i)
            else:
                pixels.append(self._check_pixels(seg.pixels[None] if single else seg.pixels, i))
                where.append(i)
        if not pixels:
            return out
        h, w = self.grid
        frames = np.concatenate(pixels)  # (N, H, W, 3)
        codes = np.asarray(self.vision.encode(frames))  # type: ignore[union-attr]
        if codes.shape != (len(frames), h, w):
            raise ValueError(
                f"the vision tokenizer returned codes of shape {codes.shape} for {len(frames)} frames; "
                f"this codec expects ({len(frames)}, {h}, {w}) — build it with Codec.build(text, vision)"
            )
        starts = np.cumsum([0] + [len(p) for p in pixels])
        for i, a, b in zip(where, starts[:-1], starts[1:], strict=True):
            out[i] = self._check_codes(codes[a:b], i)
        return out

    def _check_codes(self, codes: np.ndarray, i: int) -> np.ndarray:
        what = f"segment {i}"
        if not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"{what}: codes are {codes.dtype}; visual codes must be integers")
        if codes.shape[1:] != self.grid:
            got = "x".join(map(str, codes.shape[1:]))
            raise ValueError(
                f"{what}: codes are {got} per frame; this codec's grid is {self.grid[0]}x{self.grid[1]} — "
                f"tokenize with the vision tokenizer this codec was built with"
            )
        if codes.size and (codes.min() < 0 or codes.max() >= self.vocab.num_codes):
            raise ValueError(
                f"{what}: codes lie in {codes.min()}..{codes.max()}; this vocabulary has codes "
                f"0..{self.vocab.num_codes - 1} — the codes come from a different vision tokenizer"
            )
        return codes.astype(np.int64, copy=False)

    def _check_pixels(self, pixels: np.ndarray, i: int) -> np.ndarray:
        if self.vision is None:
            raise ValueError(
                f"segment {i} is given as pixels; encoding pixels needs a vision tokenizer — "
                f"build the codec with Codec.build(text, vision), or give the segment codes="
            )
        if pixels.dtype != np.uint8:
            raise ValueError(f"segment {i}: pixels are {pixels.dtype}; give uint8 RGB (0..255)")
        m = self.vision.frame_size
        if pixels.shape[1:3] != (m, m):
            raise ValueError(
                f"segment {i}: frames are {pixels.shape[2]}x{pixels.shape[1]}; the vision tokenizer "
                f"takes {m}x{m} — resize them first"
            )
        return pixels

    def _grid_ids(self, codes: np.ndarray) -> np.ndarray:
        """(T, h, w) codes -> (T, h * (w + 1)) ids, each row followed by <|eol|>."""
        t, h, w = codes.shape
        block = np.empty((t, h, w + 1), dtype=np.int64)
        block[..., :w] = codes + self._cs
        block[..., w] = self._sp["<|eol|>"]
        return block.reshape(t, h * (w + 1))

    def _video_ids(self, codes: np.ndarray, actions: list[str] | None, notes: list[str] | None) -> np.ndarray:
        """The first frame's rows, then for each frame after it: its action, its note, and its rows
        (or, with ``delta_frames``, its changes, in raster order); every frame then <|eof|>."""
        rows = self._grid_ids(codes)  # (T, F)
        flat = codes.reshape(len(codes), codes[0].size if len(codes) else 0)  # (T, h * w)
        eof = [self._sp["<|eof|>"]]
        parts = [[self._sp["<|video|>"]], *([rows[0], eof] if len(codes) else [])]
        for t in range(1, len(codes)):
            if actions is not None:
                parts.append([self.vocab.action_id(actions[t - 1])])
            if notes is not None and notes[t - 1]:
                parts.append(self.text.encode(notes[t - 1]))
            if self.delta_frames:
                cells = np.flatnonzero(flat[t] != flat[t - 1])
                pairs = np.stack([cells + self.vocab.cell_ids.start, flat[t, cells] + self._cs], axis=1)  # (k, 2)
                parts.append(pairs.ravel())
            else:
                parts.append(rows[t])
            parts.append(eof)
        parts.append([self._sp["<|/video|>"]])
        return np.concatenate(parts).astype(np.int64)

    # decode ------------------------------------------------------------------------------
    def decode(self, ids: np.ndarray | list[int], *, lenient: bool = False) -> Decoded:
        """The document ``ids`` encode; see the module docstring for strict and lenient modes."""
        arr = np.asarray(ids)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"decode takes one sequence of integer ids, got shape {arr.shape} ({arr.dtype})")
        parser = Parser(self, arr.astype(np.int64), lenient)
        segments = parser.document()
        return Decoded(segments=segments, problems=parser.problems)

    def decode_pixels(self, segments: Document) -> Document:
        """``segments`` with every image and video given as pixels (one vision call for all)."""
        if self.vision is None:
            raise ValueError("turning codes into pixels needs a vision tokenizer; build the codec with one")
        grids = [s.codes[None] if isinstance(s, Image) else s.codes for s in segments if _has_codes(s)]
        h, w = self.grid
        codes = np.concatenate(grids) if grids else np.zeros((0, h, w), dtype=np.int64)
        pixels = np.asarray(self.vision.decode(codes)) if len(codes) else None  # (N, H, W, 3)
        out: Document = []
        at = 0
        for seg in segments:
            if isinstance(seg, Image) and seg.codes is not None:
                out.append(Image(pixels=pixels[at], loss=seg.loss))  # type: ignore[index]
                at += 1
            elif isinstance(seg, Video) and seg.codes is not None:
                t = len(seg.codes)
                m = self.vision.frame_size
                px = pixels[at : at + t] if t else np.zeros((0, m, m, 3), dtype=np.uint8)  # type: ignore[index]
                out.append(Video(pixels=px, actions=seg.actions, loss=seg.loss, notes=seg.notes))
                at += t
            else:
                out.append(seg)
        return out


def _has_codes(seg: Segment) -> bool:
    return isinstance(seg, (Image, Video)) and seg.codes is not None


def _has_pixels(seg: Segment) -> bool:
    return isinstance(seg, (Image, Video)) and seg.pixels is not None


def _frames(seg: Image | Video) -> np.ndarray:
    """(T, H, W, 3) pixels of an image (T = 1) or a video."""
    return seg.pixels[None] if isinstance(seg, Image) else seg.pixels  # type: ignore[index]
