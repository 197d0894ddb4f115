"""Needle in a haystack (LWM-style): one fact hidden in a long document, then a question about it.

| kind  | haystack                              | needle                           | question, answer (loss on it) |
| ----- | ------------------------------------- | -------------------------------- | ----------------------------- |
| text  | captions of random scenes             | "The magic number is 48213."     | "What is the magic number?",  |
|       |                                       |                                  | "48213"                       |
| video | a world rollout with no squares in it | one frame filled with one colour | "What colour flashed in the   |
|       |                                       |                                  | video?", "red"                |

Why the video needle is learnable by a tiny model through content alone: a square sprite is solid
colour, so on the sprite lattice the vision tokenizer gives each colour's solid patch its own code.
The haystack objects are circles and triangles only, so those solid-colour codes appear nowhere
but in the flash frame: the answer position needs one attention head that finds "the solid-colour
code" wherever it sits and one map from that code to its colour word (the map the ``qa`` task's
"what colour is the square?" also trains). The text needle is the classic induction pattern: find
"magic number is" and copy the digits after it.

The sampler knows no tokenizer, so haystacks are sized in sentences and frames;
``needle_limits`` turns a row length into those sizes for a codec, and ``needle_document`` builds
evaluation documents whose prompt has (almost exactly) a given number of tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from ringworld.documents import Document, Text, Video
from ringworld.world.captions import caption
from ringworld.world.sim import COLORS, PALETTE, State, WorldConfig, random_state, render, rollout

KINDS: tuple[str, ...] = ("text", "video")
DIGITS = 5  # digits of the magic number
MIN_FRACTION = 1 / 8  # training haystacks hold between this fraction of the maximum and all of it
_NEEDLES = (
    "The magic number is {n}.",
    "The special magic number is {n}.",
    "Remember this: the magic number is {n}.",
    "Here is a secret: the magic number is {n}.",
)
NUMBER_QUESTIONS = ("What is the magic number?", "What was the magic number?", "Which magic number was mentioned?")
FLASH_QUESTIONS = ("What colour flashed in the video?", "Which colour flashed?", "What colour was the flash?")
# Training haystacks of filler text are sized so that the longest stays within a row unless its
# sentences run this many standard deviations over their mean length (a sum of many sentences).
_Z = 4.0
_MISSES = 8  # filler sentences that did not fit before an exact-length haystack is closed


class CodecLike(Protocol):
    """What sizing needs of a codec (``ringworld.tokens.codec.Codec``; world/ does not import tokens/)."""

    grid: tuple[int, int]  # (h, w) codes per frame
    longest_frame: int  # ids of the longest video frame body
    text: Any  # .encode(str) -> list[int] and .encode_batch(list[str]) -> list[list[int]]

    def encode(self, doc: Document) -> Any: ...  # has len() = number of ids


@dataclass
class Needle:
    """A needle document: ``document[-1]`` is the answer (loss on), everything before it the prompt."""

    kind: str  # "text" or "video"
    document: Document
    answer: str
    states: list[State]  # video: the world state behind every frame (the flash hides one); text: none
    at: int  # the needle comes after this many haystack sentences or frames
    haystack: int  # filler sentences or haystack frames

    @property
    def depth(self) -> float:
        """Where the needle sits in the haystack: 0 = before all of it, 1 = after all of it."""
        return self.at / self.haystack


def filler_sentence(rng: np.random.Generator, world: WorldConfig) -> str:
    """One haystack sentence: the caption of a random scene (words the world's BPE knows)."""
    return caption(random_state(rng, world), rng, motion=bool(rng.random() < 0.5))


def _pick(options: tuple[str, ...], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def _magic(rng: np.random.Generator) -> tuple[str, str, str]:
    """(needle sentence, question, number) with a fresh random number."""
    number = "".join(str(d) for d in rng.integers(0, 10, size=DIGITS))
    return _pick(_NEEDLES, rng).format(n=number), _pick(NUMBER_QUESTIONS, rng), number


def _text(filler: list[str], at: int, sentence: str, question: str, number: str) -> Needle:
    haystack = " ".join([*filler[:at], sentence, *filler[at:]])
    doc = [Text(haystack, loss=False), Text(question, loss=False), Text(number)]
    return Needle("text", doc, number, [], at, len(filler))


def _haystack_start(rng: np.random.Generator, world: WorldConfig) -> State:
    """A random scene without squares (a flash is a solid square of colour in every cell)."""
    state = random_state(rng, world)
    shapes = rng.choice(["circle", "triangle"], size=len(state.objects))
    return replace(state, objects=tuple(replace(o, shape=str(s)) for o, s in zip(state.objects, shapes, strict=True)))


def _video(rng: np.random.Generator, world: WorldConfig, frames: int, at: int, colour: str, question: str) -> Needle:
    return _flashed(_haystack_start(rng, world), frames, at, colour, question)


def _flashed(state: State, frames: int, at: int, colour: str, question: str) -> Needle:
    states = rollout(state, frames)  # frames + 1 states: the flash takes one frame's place
    pixels = render(states)  # (frames + 1, H, W, 3)
    pixels[at] = PALETTE[colour]
    doc = [Video(pixels=pixels, loss=False), Text(question, loss=False), Text(colour)]
    return Needle("video", doc, colour, states, at, frames)


def text_needle(rng: np.random.Generator, sentences: int, depth: float, world: WorldConfig) -> Needle:
    """The magic number hidden after ``round(depth * sentences)`` of ``sentences`` filler sentences."""
    sentence, question, number = _magic(rng)
    filler = [filler_sentence(rng, world) for _ in range(sentences)]
    return _text(filler, round(depth * sentences), sentence, question, number)


def video_needle(rng: np.random.Generator, frames: int, depth: float, world: WorldConfig) -> Needle:
    """A flash frame after ``round(depth * frames)`` of ``frames`` haystack frames."""
    colour, question = _pick(COLORS, rng), _pick(FLASH_QUESTIONS, rng)
    return _video(rng, world, frames, round(depth * frames), colour, question)


def haystack_size(rng: np.random.Generator, most: int) -> int:
    """A training haystack size, uniform in [most / 8, most]."""
    if most < 1:
        raise ValueError(f"a needle haystack needs at least 1 sentence or frame, got at most {most}")
    return int(rng.integers(max(1, round(most * MIN_FRACTION)), most + 1))


def judge(kind: str, answer: str, truth: str) -> bool:
    """Exact: text answers must carry the number's digits and no others; video answers the colour word."""
    if kind == "text":
        return "".join(ch for ch in answer if ch.isdigit()) == truth
    return answer.strip().rstrip(".").strip().lower() == truth


def prompt_length(codec: CodecLike, needle: Needle) -> int:
    """Ids of the prompt (``<|bos|>`` ... question ``<|sep|>``): the document without its answer
    and ``<|eos|>``, so as many ids as the answerless document encodes to."""
    return len(codec.encode(needle.document[:-1]))


def _frame_tokens(codec: CodecLike) -> int:
    """Ids a haystack frame takes at most: its rows (or, written as changes, a change at every cell),
    then <|eof|>. Frames of changes are mostly shorter, so such haystacks leave room unused."""
    return codec.longest_frame + 1


def _flash_codes(codec: CodecLike) -> Video:
    """A one-frame video given as codes: counts like the flash frame without the vision tokenizer."""
    return Video(codes=np.zeros((1, *codec.grid), dtype=np.int64), loss=False)


def needle_document(
    kind: str, codec: CodecLike, length: int, depth: float, rng: np.random.Generator, world: WorldConfig
) -> Needle:
    """An evaluation needle whose prompt has at most ``length`` ids and as many haystack frames or
    sentences as fit (short of ``length`` by less than one frame or one sentence), with the needle
    at fraction ``depth`` of the haystack (by frames, or by tokens for text)."""
    if not 0 <= depth <= 1:
        raise ValueError(f"depth is a fraction of the haystack in [0, 1], got {depth}")
    if kind == "video":
        colour, question = _pick(COLORS, rng), _pick(FLASH_QUESTIONS, rng)
        flash_only = len(codec.encode([_flash_codes(codec), Text(question)]))
        surely = (length - flash_only) // _frame_tokens(codec)  # frames that fit at their longest
        if surely < 1:
            raise ValueError(
                f"a video needle prompt takes at least {flash_only + _frame_tokens(codec)} ids, got {length}"
            )
        state = _haystack_start(rng, world)

        def needle(frames: int) -> Needle:
            return _flashed(state, frames, round(depth * frames), colour, question)

        def fits(frames: int) -> bool:
            return prompt_length(codec, needle(frames)) <= length

        # frames written as changes are mostly shorter than their longest: the most that fit, found
        # by doubling, then halving the gap (``fits`` holds for ``good`` and fails for ``bad``)
        good, bad = surely, surely + 1
        while fits(bad):
            good, bad = bad, 2 * bad
        while bad - good > 1:
            middle = (good + bad) // 2
            good, bad = (middle, bad) if fits(middle) else (good, middle)
        return needle(good)
    if kind != "text":
        raise ValueError(f"unknown needle kind {kind!r}; kinds are {', '.join(KINDS)}")
    sentence, question, number = _magic(rng)
    free = length - len(codec.encode([Text(sentence), Text(question)])) - 1  # 1: the space before the needle
    filler: list[str] = []
    costs: list[int] = []
    misses = 0
    while misses < _MISSES:
        s = filler_sentence(rng, world)
        cost = len(codec.text.encode(" " + s))  # a sentence's ids do not depend on its neighbours
        if cost <= free:
            filler.append(s)
            costs.append(cost)
            free -= cost
        else:
            misses += 1
    if not filler:
        raise ValueError(f"{length} ids hold no filler sentence around the magic number; ask for a longer prompt")
    before = np.r_[0, np.cumsum(costs)]  # tokens before each place the needle can go
    needle = _text(filler, int(np.abs(before / before[-1] - depth).argmin()), sentence, question, number)
    while prompt_length(codec, needle) > length:  # the first sentence has no space before it
        far = -1 if needle.at < len(filler) else 0  # drop the filler sentence farthest from the needle
        filler.pop(far)
        needle = _text(filler, needle.at - (far == 0), sentence, question, number)
    return needle


def needle_limits(codec: CodecLike, seq_len: int, world: WorldConfig, samples: int = 512) -> tuple[int, int]:
    """(haystack frames, filler sentences) at most, so that training needle documents fit rows of
    ``seq_len`` ids: for video at the longest a frame can be (exact for frames written whole), and for
    text with filler lengths measured on ``samples`` seeded sentences, keeping the longest haystack's
    mean length ``_Z`` standard deviations under the room left."""
    frame = _frame_tokens(codec)
    video_most = max(
        len(codec.encode([_flash_codes(codec), Text(q, loss=False), Text(c)])) for q in FLASH_QUESTIONS for c in COLORS
    )
    frames = (seq_len - video_most) // frame
    rng = np.random.default_rng(0)
    text_most = 1 + max(  # 1: the space before the needle
        len(codec.encode([Text(n.format(n=num), loss=False), Text(q, loss=False), Text(num)]))
        for n in _NEEDLES
        for q in NUMBER_QUESTIONS
        for num in (_magic(rng)[2] for _ in range(4))
    )
    costs = np.array(
        [len(ids) for ids in codec.text.encode_batch([" " + filler_sentence(rng, world) for _ in range(samples)])]
    )
    mean, std, room = costs.mean(), costs.std(), seq_len - text_most
    # largest m with m * mean + Z * std * sqrt(m) <= room
    root = (-_Z * std + math.sqrt((_Z * std) ** 2 + 4 * mean * max(room, 0))) / (2 * mean)
    sentences = math.floor(root**2)
    if frames < 1 or sentences < 1:
        raise ValueError(
            f"rows of {seq_len} ids are too short for needle documents (a video needle takes at least "
            f"{video_most + frame}, a text needle about {text_most + round(mean + _Z * std)}); raise --seq-len"
        )
    return frames, sentences
