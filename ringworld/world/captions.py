"""Captions, questions and answers about a state, in varied wording; and a caption parser.

Where an object is: the cell of a 3x3 grid that holds its centre, e.g. ("top", "left").
How it moves: the signs of its velocity, e.g. "up and to the left".
Every phrasing keeps "<colour> <shape>" together and puts where before how, so
``parse_caption`` can read any caption written here back into (colour, shape, region, motion).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ringworld.world.sim import COLORS, SHAPES, Obj, State, WorldConfig

ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")

_ROW_WORDS = {"top": ("top", "upper"), "bottom": ("bottom", "lower")}
_CORNER = ("in the {r} {c}", "near the {r} {c}", "in the {r} {c} corner")
_SIDE = ("on the {c}", "at the {c} side", "near the {c} edge")
_TOP_BOTTOM = ("at the {r}", "near the {r}", "along the {r} edge")
_MIDDLE = ("in the middle", "in the center", "near the center")
_MOVING = ("moving {d}", "heading {d}", "drifting {d}")
_STILL = ("standing still", "not moving", "at rest")
_OPENERS = ("", "there is ", "we see ", "the scene shows ")
CAPTION_PROMPT = "describe the scene."  # the instruction a caption answers (image -> text)


def region(obj: Obj, config: WorldConfig) -> tuple[str, str]:
    """(row, column) of the 3x3 grid cell holding the object's centre."""
    centre_x, centre_y = obj.x + config.size / 2, obj.y + config.size / 2
    third = config.frame_size / 3
    return ROWS[min(int(centre_y // third), 2)], COLUMNS[min(int(centre_x // third), 2)]


def region_name(row: str, column: str) -> str:
    """Canonical name of a cell, the form answers use: "top left", "top", "middle", "left"."""
    if row == "middle" and column == "center":
        return "middle"
    if row == "middle":
        return column
    if column == "center":
        return row
    return f"{row} {column}"


def direction(obj: Obj) -> str:
    """Canonical direction of motion: "right", "up and to the left", ..., or "still"."""
    return direction_of(obj.vx, obj.vy)


def direction_of(dx: int, dy: int) -> str:
    """Canonical direction of a move by (dx, dy) pixels, y downwards."""
    vertical = {-1: "up", 0: "", 1: "down"}[int(np.sign(dy))]
    horizontal = {-1: "left", 0: "", 1: "right"}[int(np.sign(dx))]
    if vertical and horizontal:
        return f"{vertical} and to the {horizontal}"
    return vertical or horizontal or "still"


def _region_phrase(row: str, column: str, rng: np.random.Generator) -> str:
    r = _pick(_ROW_WORDS.get(row, (row,)), rng)
    if row == "middle" and column == "center":
        return _pick(_MIDDLE, rng)
    if row == "middle":
        return _pick(_SIDE, rng).format(c=column)
    if column == "center":  # "upper"/"lower" need a noun after them: here the row's own word
        return _pick(_TOP_BOTTOM, rng).format(r=row)
    return _pick(_CORNER, rng).format(r=r, c=column)


def _motion_phrase(obj: Obj, rng: np.random.Generator) -> str:
    d = direction(obj)
    return _pick(_STILL, rng) if d == "still" else _pick(_MOVING, rng).format(d=d)


def _pick(options: tuple[str, ...], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def describe_object(obj: Obj, config: WorldConfig, rng: np.random.Generator, motion: bool = False) -> str:
    article = "an" if obj.color[0] in "aeiou" else "a"
    words = f"{article} {obj.color} {obj.shape} {_region_phrase(*region(obj, config), rng)}"
    return f"{words} {_motion_phrase(obj, rng)}" if motion else words


def caption(state: State, rng: np.random.Generator, motion: bool = False) -> str:
    """A caption naming every object in reading order (top to bottom, then left to right), where it
    is, and (``motion=True``) how it moves."""
    # objects in reading order, the order an image is drawn in: the next object to draw is the next
    # one named (measured: text->image and captions learned faster than with a random order, #11)
    order = sorted(range(len(state.objects)), key=lambda i: (state.objects[i].y, state.objects[i].x))
    parts = [describe_object(state.objects[i], state.config, rng, motion) for i in order]
    joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    text = _pick(_OPENERS, rng) + joined
    if state.has_agent and rng.random() < 0.5:
        agent = state.objects[0]
        text += f". You control the {agent.color} {agent.shape}"
    return text[0].upper() + text[1:] + "."


@dataclass(frozen=True)
class Mention:
    color: str
    shape: str
    row: str
    column: str
    direction: str | None  # None when the caption says nothing of motion


_OBJECT = re.compile(rf"\b({'|'.join(COLORS)}) ({'|'.join(SHAPES)})\b")
_MOTION_START = re.compile(r"\b(?:moving|heading|drifting|standing|not moving|at rest)\b")
_STILL_WORDS = re.compile(r"\b(?:standing still|not moving|at rest)\b")
_TOP, _BOTTOM = re.compile(r"\b(?:top|upper)\b"), re.compile(r"\b(?:bottom|lower)\b")
_LEFT, _RIGHT = re.compile(r"\bleft\b"), re.compile(r"\bright\b")
_DIRECTION = re.compile(r"\b(?:moving|heading|drifting) ((?:up|down)(?: and to the (?:left|right))?|left|right)\b")


def parse_caption(text: str) -> list[Mention]:
    """Read a caption back into the objects it mentions (a "you control ..." tail is skipped)."""
    text = text.lower().split(". you control")[0]
    found = list(_OBJECT.finditer(text))
    mentions = []
    for i, m in enumerate(found):
        clause = text[m.end() : found[i + 1].start() if i + 1 < len(found) else len(text)]
        where = _MOTION_START.split(clause)[0]  # the region comes before any motion words
        row = "top" if _TOP.search(where) else "bottom" if _BOTTOM.search(where) else "middle"
        column = "left" if _LEFT.search(where) else "right" if _RIGHT.search(where) else "center"
        moving = _DIRECTION.search(clause)
        motion = moving.group(1) if moving else "still" if _STILL_WORDS.search(clause) else None
        mentions.append(Mention(m.group(1), m.group(2), row, column, motion))
    return mentions


def motion_note(before: State, after: State) -> str:
    """How each object moves from ``before`` to ``after``, in reading order of ``before``: "red
    circle left, blue square still". One wording, so the words are a function of the motion: what
    a world video says between two frames (``TaskConfig.say_motion``). Velocities are at most one
    lattice step, so the direction is the whole move (a bounce is a move the other way)."""
    order = sorted(range(len(before.objects)), key=lambda i: (before.objects[i].y, before.objects[i].x))
    moves = []
    for i in order:
        a, b = before.objects[i], after.objects[i]
        moves.append(f"{a.color} {a.shape} {direction_of(b.x - a.x, b.y - a.y)}")
    return ", ".join(moves)


_NOTE_MOVE = re.compile(
    rf"\b({'|'.join(COLORS)}) ({'|'.join(SHAPES)}) (still|(?:up|down)(?: and to the (?:left|right))?|left|right)\b"
)


def parse_motion_note(text: str) -> dict[str, str]:
    """A ``motion_note`` read back: {colour: direction} of every object it names."""
    return {m.group(1): m.group(3) for m in _NOTE_MOVE.finditer(text.lower())}


def questions(state: State, rng: np.random.Generator, video: bool = False) -> list[tuple[str, str]]:
    """Every question this state can answer without ambiguity, as (question, answer) pairs."""
    objs, cfg = state.objects, state.config
    shapes = [o.shape for o in objs]
    qa = [("how many objects are there?", NUMBERS[len(objs)])]
    for o in objs:
        if shapes.count(o.shape) == 1:
            qa.append((f"what colour is the {o.shape}?", o.color))
        qa.append((f"what shape is the {o.color} object?", o.shape))
        qa.append((f"where is the {o.color} {o.shape}?", region_name(*region(o, cfg))))
        if video:
            qa.append((f"which way is the {o.color} {o.shape} moving?", direction(o)))
    return qa


QUESTION_KINDS = {  # the opening words of each question ``questions`` asks, and its kind
    "how many": "count",
    "what colour": "colour",
    "what shape": "shape",
    "where is": "place",
    "which way": "motion",
}


def question_kind(question: str) -> str:
    """Which of ``QUESTION_KINDS`` a question is ("other" for one ``questions`` never asks)."""
    return next((kind for start, kind in QUESTION_KINDS.items() if question.lower().startswith(start)), "other")


def question(state: State, rng: np.random.Generator, video: bool = False) -> tuple[str, str]:
    """One random (question, answer) pair about the state."""
    qa = questions(state, rng, video)
    return qa[int(rng.integers(len(qa)))]
