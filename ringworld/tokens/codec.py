"""Documents <-> token ids, in one vocabulary.

Layout of one document (``h, w = grid``)::

    <|bos|> segment segment ... <|eos|>
    Text    its BPE ids; two adjacent Text segments get <|sep|> between them
    Image   <|image|> row0 <|eol|> ... row{h-1} <|eol|> <|/image|>          (a row is w codes)
    Video   <|video|> frame0 <|eof|> [action0] frame1 <|eof|> ... <|/video|> (a frame is the rows)
    Action  <|actions|> a a a <|/actions|>

A video's action t sits right after frame t's ``<|eof|>``: every frame but the last has one, or
none does. Loss follows the segment: its structure tokens take the segment's flag, ``<|bos|>``
takes none, ``<|eos|>`` and ``<|sep|>`` take the flag of the segment before them.

Decoding is strict by default: an id sequence that is not the encoding of a document raises
``MalformedTokens`` naming the position and the token. ``lenient=True`` repairs instead (pads
short rows and missing rows with code 0, cuts long rows, closes unclosed spans, drops stray
tokens) and lists one line per repair in ``Decoded.problems``: the mode for model samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ringworld.documents import Action, Document, Image, Segment, Text, Video
from ringworld.tokens.text import TextTokenizer
from ringworld.tokens.vocab import SPECIAL_TOKENS, Vocab


class VisionLike(Protocol):
    """What the codec needs of a vision tokenizer (``ringworld.tokens.vision``)."""

    frame_size: int  # frames are frame_size x frame_size

    def encode(self, pixels: np.ndarray) -> np.ndarray: ...  # (N, H, W, 3) uint8 -> (N, h, w) int64

    def decode(self, codes: np.ndarray) -> np.ndarray: ...  # (N, h, w) int -> (N, H, W, 3) uint8


class MalformedTokens(ValueError):
    """An id sequence that is not the encoding of any document."""


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


# Token kinds for the parser: text, code, action, out of range, then one per special token.
TEXT, CODE, ACTION, BAD = 0, 1, 2, 3
_S = {name: 4 + i for i, name in enumerate(SPECIAL_TOKENS)}
BOS, EOS, PAD, SEP = _S["<|bos|>"], _S["<|eos|>"], _S["<|pad|>"], _S["<|sep|>"]
IMAGE, CLOSE_IMAGE, EOL = _S["<|image|>"], _S["<|/image|>"], _S["<|eol|>"]
VIDEO, CLOSE_VIDEO, EOF = _S["<|video|>"], _S["<|/video|>"], _S["<|eof|>"]
ACTIONS, CLOSE_ACTIONS = _S["<|actions|>"], _S["<|/actions|>"]
END = -1  # past the last id
# Tokens that cannot sit inside a span: met there, they close it (lenient) rather than being dropped.
CLOSERS = frozenset({TEXT, BOS, EOS, IMAGE, VIDEO, ACTIONS, END})
FILL_ACTION = "stay"  # what lenient decoding puts where a video misses an action


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
        # kinds of one well-formed frame body (rows with their <|eol|>), for the fast path
        self._frame_kinds = np.full((h, w + 1), CODE, dtype=np.int8)
        self._frame_kinds[:, w] = EOL
        self._frame_kinds = self._frame_kinds.ravel()

    @classmethod
    def build(cls, text: TextTokenizer, vision: VisionLike) -> Codec:
        """A codec whose grid and code count come from ``vision.grid`` and ``vision.num_codes``."""
        vocab = Vocab(text_size=text.vocab_size, num_codes=int(vision.num_codes))  # type: ignore[attr-defined]
        return cls(text, vocab, tuple(vision.grid), vision)  # type: ignore[attr-defined]

    @property
    def image_length(self) -> int:
        """Tokens one image takes, wrappers included."""
        h, w = self.grid
        return h * (w + 1) + 2

    # encode ------------------------------------------------------------------------------
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
                add(self._video_ids(codes[i], seg.actions), seg.loss)
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

    def _video_ids(self, codes: np.ndarray, actions: list[str] | None) -> np.ndarray:
        frames = self._grid_ids(codes)  # (T, F)
        t, f = frames.shape
        block = np.empty((t, f + 1 + (actions is not None)), dtype=np.int64)  # (T, F + 1 [+ 1])
        block[:, :f] = frames
        block[:, f] = self._sp["<|eof|>"]
        body = block.ravel()
        if actions is not None:  # action t after frame t's <|eof|>; the last frame has none
            block[:-1, f + 1] = [self.vocab.action_id(a) for a in actions]
            body = body[:-1]
        return np.concatenate([[self._sp["<|video|>"]], body, [self._sp["<|/video|>"]]])

    # decode ------------------------------------------------------------------------------
    def decode(self, ids: np.ndarray | list[int], *, lenient: bool = False) -> Decoded:
        """The document ``ids`` encode; see the module docstring for strict and lenient modes."""
        arr = np.asarray(ids)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"decode takes one sequence of integer ids, got shape {arr.shape} ({arr.dtype})")
        parser = _Parser(self, arr.astype(np.int64), lenient)
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
                out.append(Video(pixels=px, actions=seg.actions, loss=seg.loss))
                at += t
            else:
                out.append(seg)
        return out


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _has_codes(seg: Segment) -> bool:
    return isinstance(seg, (Image, Video)) and seg.codes is not None


class _Parser:
    """Recursive-descent reading of one id sequence. Every fault goes through ``fault``: strict
    mode raises there, lenient mode notes the repair and carries on, so the two agree exactly
    on what is malformed. Well-formed image and frame blocks are read in one numpy step."""

    def __init__(self, codec: Codec, ids: np.ndarray, lenient: bool, fast: bool = True) -> None:
        self.codec, self.vocab, self.ids, self.n = codec, codec.vocab, ids, len(ids)
        self.lenient, self.fast = lenient, fast
        self.problems: list[str] = []
        v = codec.vocab
        kind = np.full(ids.shape, BAD, dtype=np.int8)
        kind[v.is_text(ids)] = TEXT
        kind[v.is_code(ids)] = CODE
        kind[v.is_action(ids)] = ACTION
        special = v.is_special(ids)
        kind[special] = 4 + (ids[special] - v.special_ids.start)
        self.kind = kind
        # run_end(i) = first position after the run of equal kinds holding i
        self.bounds = np.append(np.flatnonzero(kind[1:] != kind[:-1]) + 1, self.n)

    # helpers -----------------------------------------------------------------------------
    def fault(self, message: str, repair: str) -> None:
        if not self.lenient:
            raise MalformedTokens(message)
        self.problems.append(f"{message}; {repair}")

    def k(self, i: int) -> int:
        return int(self.kind[i]) if 0 <= i < self.n else END

    def d(self, i: int) -> str:
        return "the end of the sequence" if i >= self.n else self.vocab.describe(self.ids[i])

    def run_end(self, i: int) -> int:
        return int(self.bounds[np.searchsorted(self.bounds, i, side="right")])

    def block(self, i: int, close: int) -> bool:
        """Whether a well-formed frame body starts at ``i`` and is followed by ``close``."""
        end = i + len(self.codec._frame_kinds)
        return (
            self.fast
            and end < self.n
            and self.kind[end] == close
            and np.array_equal(self.kind[i:end], self.codec._frame_kinds)
        )

    def block_codes(self, i: int) -> np.ndarray:
        h, w = self.codec.grid
        end = i + len(self.codec._frame_kinds)
        return self.ids[i:end].reshape(h, w + 1)[:, :w] - self.codec._cs  # (h, w)

    # grammar -----------------------------------------------------------------------------
    def document(self) -> list[Segment]:
        segs: list[Segment] = []
        i = 0
        if self.k(0) == BOS:
            i = 1
        else:
            self.fault(f"missing <|bos|> at position 0 (found {self.d(0)})", "read on without it")
        eos = None
        while i < self.n:
            k = self.k(i)
            if k == TEXT:
                j = self.run_end(i)
                segs.append(Text(self.text(i, j)))
                i = j
            elif k == SEP:
                if not (self.k(i - 1) == TEXT and self.k(i + 1) == TEXT):
                    self.fault(f"position {i}: <|sep|> must sit between two text segments", "dropped it")
                i += 1
            elif k == IMAGE:
                seg, i = self.image(i)
                segs.append(seg)
            elif k == VIDEO:
                seg, i = self.video(i)
                segs.append(seg)
            elif k == ACTIONS:
                seg, i = self.actions(i)
                segs.append(seg)
            elif k == EOS:
                eos, i = i, i + 1
                break
            else:
                i = self.stray(i)
        if eos is None:
            self.fault(f"missing <|eos|> at the end (position {self.n})", "ended the document there")
        elif i < self.n:
            self.fault(
                f"position {i}: {self.d(i)} after <|eos|> at position {eos}; one sequence holds one document",
                f"dropped the {self.n - i} ids after <|eos|>",
            )
        return segs

    def stray(self, i: int) -> int:
        """A token that cannot stand between segments; a run of its kind is dropped as one."""
        k, j = self.k(i), self.run_end(i)
        if k in (CODE, EOL, EOF, CLOSE_IMAGE, CLOSE_VIDEO):
            message = f"position {i}: {self.d(i)} outside an image or video span"
        elif k in (ACTION, CLOSE_ACTIONS):
            message = f"position {i}: {self.d(i)} outside an <|actions|> span or a video"
        elif k == BOS:
            message = f"position {i}: {self.d(i)} inside a document; <|bos|> only starts one"
        elif k == PAD:
            message = f"position {i}: {self.d(i)} inside a document; cut padding off before decoding"
        else:  # BAD
            message = f"position {i}: {self.d(i)}"
        self.fault(message, "dropped it" if j == i + 1 else f"dropped it and the {j - i - 1} like it after it")
        return j

    def text(self, i: int, j: int) -> str:
        data = self.codec.text.decode_bytes(self.ids[i:j].tolist())
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            self.fault(
                f"positions {i}..{j - 1}: text bytes are not valid UTF-8 ({e.reason} at byte {e.start})",
                "wrote U+FFFD for the bad bytes",
            )
            return data.decode("utf-8", errors="replace")

    def image(self, p: int) -> tuple[Image, int]:
        i = p + 1
        if self.block(i, CLOSE_IMAGE):
            return Image(codes=self.block_codes(i)), i + len(self.codec._frame_kinds) + 1
        codes, i, _ = self.grid(i, CLOSE_IMAGE, "image", "an image", p, "<|image|>")
        return Image(codes=codes), i

    def video(self, p: int) -> tuple[Video, int]:
        i = p + 1
        frames: list[np.ndarray] = []
        acts: list[str | None] = []  # acts[t]: the action after frame t
        act_at: list[int] = []
        while True:
            k = self.k(i)
            if k == CLOSE_VIDEO:
                i += 1
                break
            if k in (CODE, EOL, EOF):  # a frame (a lone <|eof|> is an empty one)
                t, closed = len(frames), True
                if self.block(i, EOF):
                    frames.append(self.block_codes(i))
                    i += len(self.codec._frame_kinds) + 1
                else:
                    what = f"video frame {t}"
                    codes, i, closed = self.grid(i, EOF, what, what, p, "<|video|>", CLOSE_VIDEO)
                    frames.append(codes)
                acts.append(None)  # every frame has an action slot, even one cut short
                act_at.append(i)
                if not closed:
                    break
                if self.k(i) == ACTION:
                    acts[-1] = self.vocab.action_of(self.ids[i])
                    i += 1
                continue
            if k in CLOSERS:
                self.unclosed(i, "a video", p, "<|video|>")
                break
            hint = " (an action sits right after a frame's <|eof|>)" if k == ACTION else ""
            self.fault(f"position {i}: {self.d(i)} inside a video (opened at position {p}){hint}", "dropped it")
            i += 1
        return Video(codes=self.frames(frames), actions=self.video_actions(acts, act_at, p)), i

    def frames(self, frames: list[np.ndarray]) -> np.ndarray:
        h, w = self.codec.grid
        return np.stack(frames) if frames else np.zeros((0, h, w), dtype=np.int64)  # (T, h, w)

    def video_actions(self, acts: list[str | None], act_at: list[int], p: int) -> list[str] | None:
        if acts and acts[-1] is not None:
            self.fault(
                f"position {act_at[-1]}: {self.d(act_at[-1])} after the last frame of the video at "
                f"position {p}; actions sit between frames",
                "dropped it",
            )
        inner = acts[:-1]
        missing = [t for t, a in enumerate(inner) if a is None]
        if not inner or len(missing) == len(inner):
            return None
        if missing:
            self.fault(
                f"video at position {p}: no action after frame(s) {missing}; a video has an action "
                f"between every two frames or none",
                f"filled in {FILL_ACTION!r}",
            )
        return [a if a is not None else FILL_ACTION for a in inner]

    def actions(self, p: int) -> tuple[Action, int]:
        i = p + 1
        names: list[str] = []
        while True:
            k = self.k(i)
            if k == ACTION:
                j = self.run_end(i)
                names += [self.vocab.action_of(a) for a in self.ids[i:j]]
                i = j
            elif k == CLOSE_ACTIONS:
                i += 1
                break
            elif k in CLOSERS:
                self.unclosed(i, "an <|actions|> span", p, "<|actions|>")
                break
            else:
                self.fault(
                    f"position {i}: {self.d(i)} inside an <|actions|> span (opened at position {p})",
                    "dropped it",
                )
                i += 1
        return Action(names), i

    def unclosed(self, i: int, where: str, p: int, opener: str) -> None:
        if i >= self.n:
            self.fault(f"unclosed {opener} at position {p}", "closed it at the end")
        else:
            self.fault(
                f"position {i}: {self.d(i)} inside {where} (the {opener} at position {p} is unclosed)",
                f"closed it at position {i}",
            )

    def grid(
        self, i: int, close: int, what: str, where: str, p: int, opener: str, parent_close: int | None = None
    ) -> tuple[np.ndarray, int, bool]:
        """Rows of one image or frame from ``i`` up to ``close``: (h, w) codes, the position after
        it, and False when a token outside the span cut it short (the caller's span is closed too)."""
        h, w = self.codec.grid
        rows: list[np.ndarray] = []
        pending: list[np.ndarray] = []  # codes of the row being read; lenient may drop ids within it
        row_at = i
        while True:
            k = self.k(i)
            if len(rows) == h and not pending and close == EOF and k not in CLOSERS and k != EOF:
                # most likely the <|eof|> alone is missing: end the frame, let the video read on
                self.fault(f"position {i}: {what} has no <|eof|> after its {h} rows", "ended the frame there")
                return np.stack(rows), i, True
            if len(rows) == h and not pending and k in (CODE, EOL):
                self.fault(
                    f"position {i}: {what} has more than {h} rows; this tokenizer's grid is {h} tall",
                    "dropped the extra rows",
                )
                while self.k(i) in (CODE, EOL):
                    i = self.run_end(i)
                continue
            if k == CODE:
                j = self.run_end(i)
                pending.append(self.ids[i:j] - self.codec._cs)
                i = j
            elif k == EOL:
                rows.append(self.row(pending, row_at, what, len(rows)))
                pending, i = [], i + 1
                row_at = i
            elif k == close or k == parent_close:
                if k == parent_close:
                    self.fault(f"position {i}: {what} ends without <|eof|>", "ended the frame there")
                elif pending:
                    self.fault(f"position {i}: {what} row {len(rows)} ends without <|eol|>", "took it as a row")
                if pending:
                    rows.append(self.row(pending, row_at, what, len(rows)))
                return self.pad_rows(rows, i, what), i + (k == close), True
            elif k in CLOSERS:
                self.unclosed(i, where, p, opener)
                if pending:
                    rows.append(self.row(pending, row_at, what, len(rows)))
                return self.pad_rows(rows, i, what), i, False
            else:
                self.fault(f"position {i}: {self.d(i)} inside {where} (opened at position {p})", "dropped it")
                i += 1

    def row(self, pending: list[np.ndarray], at: int, what: str, r: int) -> np.ndarray:
        w = self.codec.grid[1]
        codes = np.concatenate(pending) if pending else np.zeros(0, dtype=np.int64)
        if len(codes) != w:
            self.fault(
                f"position {at}: {what} row {r} has {_n(len(codes), 'code')}; this tokenizer's grid is {w} wide",
                "padded it with code 0" if len(codes) < w else f"cut it to {w}",
            )
            codes = np.pad(codes[:w], (0, max(0, w - len(codes))))
        return codes

    def pad_rows(self, rows: list[np.ndarray], i: int, what: str) -> np.ndarray:
        h, w = self.codec.grid
        if len(rows) < h:
            self.fault(
                f"position {i}: {what} has {_n(len(rows), 'row')}; this tokenizer's grid is {h} tall",
                "padded it with rows of code 0",
            )
            rows = rows + [np.zeros(w, dtype=np.int64)] * (h - len(rows))
        return np.stack(rows)  # (h, w)
