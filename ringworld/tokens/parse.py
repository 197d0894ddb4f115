"""Reading an id sequence back into a document: the codec's decoder, strict or lenient.

Strict reading raises ``MalformedTokens`` naming the position and the token of the first fault.
Lenient reading repairs instead (pads short rows and missing rows with code 0, cuts long rows,
closes unclosed spans, drops stray tokens) and lists one line per repair: the mode for model
samples. Both go through the same parser, so they agree exactly on what is malformed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ringworld.documents import Action, Image, Segment, Text, Video
from ringworld.tokens.vocab import SPECIAL_TOKENS

if TYPE_CHECKING:
    from ringworld.tokens.codec import Codec


class MalformedTokens(ValueError):
    """An id sequence that is not the encoding of any document."""


# Token kinds for the parser: text, code, action, out of range, then one per special token, then cell.
TEXT, CODE, ACTION, BAD = 0, 1, 2, 3
_S = {name: 4 + i for i, name in enumerate(SPECIAL_TOKENS)}
CELL = 4 + len(SPECIAL_TOKENS)
BOS, EOS, PAD, SEP = _S["<|bos|>"], _S["<|eos|>"], _S["<|pad|>"], _S["<|sep|>"]
IMAGE, CLOSE_IMAGE, EOL = _S["<|image|>"], _S["<|/image|>"], _S["<|eol|>"]
VIDEO, CLOSE_VIDEO, EOF = _S["<|video|>"], _S["<|/video|>"], _S["<|eof|>"]
ACTIONS, CLOSE_ACTIONS = _S["<|actions|>"], _S["<|/actions|>"]
END = -1  # past the last id
# Tokens that cannot sit inside a span: met there, they close it (lenient) rather than being dropped.
CLOSERS = frozenset({TEXT, BOS, EOS, IMAGE, VIDEO, ACTIONS, END})
FILL_ACTION = "stay"  # what lenient decoding puts where a video misses an action


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


class Parser:
    """Recursive-descent reading of one id sequence. Every fault goes through ``fault``: strict
    mode raises there, lenient mode notes the repair and carries on, so the two agree exactly
    on what is malformed. Well-formed image and frame blocks are read in one numpy step."""

    def __init__(self, codec: Codec, ids: np.ndarray, lenient: bool, fast: bool = True) -> None:
        self.codec, self.vocab, self.ids, self.n = codec, codec.vocab, ids, len(ids)
        h, w = codec.grid
        self.code_start, self.cell_start = codec.vocab.code_ids.start, codec.vocab.cell_ids.start
        # kinds of one well-formed frame body (rows with their <|eol|>), for the fast path
        self.frame_kinds = np.full((h, w + 1), CODE, dtype=np.int8)
        self.frame_kinds[:, w] = EOL
        self.frame_kinds = self.frame_kinds.ravel()
        self.lenient, self.fast = lenient, fast
        self.problems: list[str] = []
        v = codec.vocab
        kind = np.full(ids.shape, BAD, dtype=np.int8)
        kind[v.is_text(ids)] = TEXT
        kind[v.is_code(ids)] = CODE
        kind[v.is_action(ids)] = ACTION
        kind[v.is_cell(ids)] = CELL
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
        end = i + len(self.frame_kinds)
        return (
            self.fast
            and end < self.n
            and self.kind[end] == close
            and np.array_equal(self.kind[i:end], self.frame_kinds)
        )

    def block_codes(self, i: int) -> np.ndarray:
        h, w = self.codec.grid
        end = i + len(self.frame_kinds)
        return self.ids[i:end].reshape(h, w + 1)[:, :w] - self.code_start  # (h, w)

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
        if k in (CODE, CELL, EOL, EOF, CLOSE_IMAGE, CLOSE_VIDEO):
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
            return Image(codes=self.block_codes(i)), i + len(self.frame_kinds) + 1
        codes, i, _ = self.grid(i, CLOSE_IMAGE, "image", "an image", p, "<|image|>")
        return Image(codes=codes), i

    def video(self, p: int) -> tuple[Video, int]:
        i = p + 1
        frames: list[np.ndarray] = []
        acts: list[str | None] = []  # acts[t]: the action after frame t
        act_at: list[int] = []
        notes: list[str] = []  # notes[t]: the text after frame t (and its action)
        while True:
            k = self.k(i)
            if k == CLOSE_VIDEO:
                i += 1
                break
            if k in (CODE, CELL, EOL, EOF):  # a frame (a lone <|eof|> is an empty one)
                t, closed = len(frames), True
                if t and self.codec.delta_frames:
                    codes, i, closed = self.changes(i, frames[-1], f"video frame {t}", p)
                    frames.append(codes)
                elif self.block(i, EOF):
                    frames.append(self.block_codes(i))
                    i += len(self.frame_kinds) + 1
                else:
                    what = f"video frame {t}"
                    codes, i, closed = self.grid(i, EOF, what, what, p, "<|video|>", CLOSE_VIDEO)
                    frames.append(codes)
                acts.append(None)  # every frame has an action slot and a note slot, even one cut short
                act_at.append(i)
                notes.append("")
                if not closed:
                    break
                if self.k(i) == ACTION:
                    acts[-1] = self.vocab.action_of(self.ids[i])
                    i += 1
                if self.k(i) == TEXT:
                    j = self.run_end(i)
                    notes[-1] = self.text(i, j)
                    i = j
                continue
            if k in CLOSERS:
                self.unclosed(i, "a video", p, "<|video|>")
                break
            hint = " (an action sits right after a frame's <|eof|>)" if k == ACTION else ""
            self.fault(f"position {i}: {self.d(i)} inside a video (opened at position {p}){hint}", "dropped it")
            i += 1
        actions = self.video_actions(acts, act_at, p)
        return Video(codes=self.frames(frames), actions=actions, notes=self.video_notes(notes, p)), i

    def changes(self, i: int, before: np.ndarray, what: str, p: int) -> tuple[np.ndarray, int, bool]:
        """A frame written as its changes from ``before`` (``cell code`` pairs, then <|eof|>): its
        (h, w) codes, the position after it, and False when a token outside the span cut it short."""
        codes, last = before.copy(), -1
        while True:
            k = self.k(i)
            if k == CELL and self.k(i + 1) == CODE:
                cell = int(self.ids[i]) - self.cell_start
                if cell <= last:
                    self.fault(
                        f"position {i}: {what} changes cell {cell} after cell {last}; cells come in raster order, "
                        f"each once",
                        "applied it anyway",
                    )
                codes.flat[cell] = self.ids[i + 1] - self.code_start
                last, i = max(last, cell), i + 2
            elif k == EOF:
                return codes, i + 1, True
            elif k == CELL and self.k(i + 1) in CLOSERS:  # cut off between a cell and its code
                self.unclosed(i + 1, "a video", p, "<|video|>")
                return codes, i + 1, False
            elif k == CLOSE_VIDEO:
                self.fault(f"position {i}: {what} ends without <|eof|>", "ended the frame there")
                return codes, i, True
            elif k in CLOSERS:
                self.unclosed(i, "a video", p, "<|video|>")
                return codes, i, False
            else:
                self.fault(
                    f"position {i}: {self.d(i)} inside {what}, which lists its changes: a cell, then its visual code",
                    "dropped it",
                )
                i += 1

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

    def video_notes(self, notes: list[str], p: int) -> list[str] | None:
        if notes and notes[-1]:
            self.fault(
                f"video at position {p}: text after its last frame; a note sits between two frames",
                "dropped it",
            )
        inner = notes[:-1]
        return inner if any(inner) else None

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
                pending.append(self.ids[i:j] - self.code_start)
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
