"""Reference models shaped like ``WorldModel``, whose scores the judge must get exactly right.

``OracleModel`` is a perfect world model: it reads each prompt back into the world (the oracle
parses its frames, ``parse_caption`` its caption), enumerates what the prompt leaves hidden
(``ringworld.world.consistent``), commits to one consistent world by its own seeded choice and
renders it. ``CopyModel`` repeats the last frame it was shown. Both answer through ``generate``
with token ids, as the engine does, so the eval runs its own code path on them: what they score
is the ceiling and a floor of a task (``bench/ceiling.py``), and the judge's tests.
"""

from __future__ import annotations

import itertools
import sys

import numpy as np

from ringworld.documents import Image, Text, Video
from ringworld.tokens.codec import Codec
from ringworld.world.captions import CAPTION_PROMPT, Mention, caption, parse_caption, questions, region
from ringworld.world.consistent import Unknowns, consistent, play
from ringworld.world.oracle import parse_frames
from ringworld.world.sim import Obj, State, WorldConfig, render

_VERTICAL = {"up": -1, "down": 1}
_HORIZONTAL = {"left": -1, "right": 1}


def _direction(words: str | None) -> tuple[int, int]:
    """(sx, sy) of a caption's direction words: "up and to the left" -> (-1, -1)."""
    words = words or "still"
    return (
        next((v for k, v in _HORIZONTAL.items() if k in words), 0),
        next((v for k, v in _VERTICAL.items() if k in words), 0),
    )


class OracleModel:
    """A perfect model of ``world`` (see the module docstring); ``video_frames`` as ``WorldModel``'s:
    the frames it makes in one go, and so the context it keeps when a rollout goes on."""

    says_motion = False  # it draws without saying

    def __init__(self, codec: Codec, world: WorldConfig, *, video_frames: int = 6, seed: int = 0):
        self.codec, self.world, self.video_frames = codec, world, video_frames
        self.rng = np.random.default_rng(seed)

    def room(self, prompts) -> int:
        """It has no context to run out of."""
        return sys.maxsize

    def generate(self, prompts, *, video_frames=0, video_actions=None, **_) -> list[np.ndarray]:
        out = []
        for i, prompt in enumerate(prompts):
            prompt = np.asarray(prompt)
            frames = video_frames[i] if isinstance(video_frames, (list, tuple)) else video_frames
            actions = None if video_actions is None else [self.codec.vocab.action_of(a) for a in video_actions[i]]
            doc, media = self._answer(prompt, frames, actions)
            ids = self.codec.encode(doc).ids
            ids = ids[:-1] if media else ids  # a media span stops at its closing tag, text at <|eos|>
            if len(ids) < len(prompt) or not (ids[: len(prompt)] == prompt).all():
                raise RuntimeError("the reference model's document does not continue its prompt; this is a bug")
            out.append(ids[len(prompt) :])
        return out

    def _answer(self, prompt: np.ndarray, frames: int, actions: list[str] | None) -> tuple[list, bool]:
        """The whole document the prompt opens, the model's part filled in; whether that part is media."""
        sp = self.codec.vocab.special
        last = int(prompt[-1])
        given = self.codec.decode(prompt, lenient=True).segments  # media as the prompt's own codes
        segments = self.codec.decode_pixels(given)  # and as pixels, to read
        texts = [s.text for s in segments if isinstance(s, Text)]
        if last == sp("<|image|>"):
            return [Text(texts[-1]), Image(pixels=render(self.draw(texts[-1])))], True
        if last == sp("<|video|>"):
            return [Text(texts[-1]), Video(pixels=render(self.film(texts[-1], frames)))], True
        if last == sp("<|eof|>"):
            shown = next(s for s in segments if isinstance(s, Video)).pixels
            made = self.codec.vision.encode(render(self.go_on(shown, frames - len(shown), actions)))
            codes = np.concatenate([next(s for s in given if isinstance(s, Video)).codes, made])
            return [Video(codes=codes, actions=actions)], True
        if last == sp("<|sep|>"):
            media = segments[0]
            seen = media.pixels if isinstance(media, Video) else media.pixels[None]
            return [given[0], Text(texts[-1]), Text(self.reply(seen, texts[-1]))], False
        raise ValueError(f"the oracle model does not know this prompt (last token {self.codec.vocab.describe(last)})")

    # what the model does, task by task ------------------------------------------------------
    def _objects(self, frame: np.ndarray) -> list[Obj]:
        return [Obj(s.color, s.shape, s.x, s.y) for s in parse_frames(frame[None], self.world)[0]]

    def _place(self, mentions: list[Mention]) -> list[Obj]:
        """The mentioned objects, each on a random free cell of its region."""
        g, cells = self.world.grid, range(0, self.world.max_position + 1, self.world.grid)
        for _ in range(1000):
            placed: list[Obj] = []
            for m in mentions:
                spots = [
                    (x, y)
                    for x, y in itertools.product(cells, cells)
                    if region(Obj("", "", x, y), self.world) == (m.row, m.column)
                    and all(max(abs(x - o.x), abs(y - o.y)) >= self.world.size + self.world.gap for o in placed)
                ]
                if not spots:
                    break
                x, y = spots[int(self.rng.integers(len(spots)))]
                sx, sy = _direction(m.direction)
                speed = int(self.rng.integers(1, self.world.max_speed + 1))
                placed.append(Obj(m.color, m.shape, x, y, sx * speed * g, sy * speed * g))
            else:
                return placed
        raise ValueError(f"no room for {mentions}")

    def draw(self, text: str) -> State:
        return State(tuple(self._place(parse_caption(text))), config=self.world)

    def film(self, text: str, frames: int) -> list[State]:
        start = self.draw(text)
        return [start, *play(start, frames - 1)]

    def go_on(self, shown: np.ndarray, steps: int, actions: list[str] | None) -> list[State]:
        """The next ``steps`` states of one world consistent with the frames ``shown``."""
        seen = parse_frames(shown, self.world)
        unknowns = Unknowns.from_frame(self._objects(shown[0]), self.world, agent=actions is not None)
        worlds = list(consistent(unknowns, seen[1:], actions))
        states = worlds[int(self.rng.integers(len(worlds)))]
        later = actions[len(shown) - 1 :] if actions is not None else None
        return list(play(states[-1], steps, later))

    def reply(self, seen: np.ndarray, question: str) -> str:
        objects = self._objects(seen[0])
        if question == CAPTION_PROMPT:
            return caption(State(tuple(objects), config=self.world), self.rng)
        if len(seen) > 1:  # a video: each object's velocity is its first move (asked only when steady)
            after = {o.color: o for o in self._objects(seen[1])}
            objects = [Obj(o.color, o.shape, o.x, o.y, after[o.color].x - o.x, after[o.color].y - o.y) for o in objects]
        answers = dict(questions(State(tuple(objects), config=self.world), self.rng, video=len(seen) > 1))
        return answers[question]


class CopyModel(OracleModel):
    """The oracle model, except that it continues a video by repeating the last frame shown."""

    def go_on(self, shown: np.ndarray, steps: int, actions: list[str] | None) -> list[State]:
        last = State(tuple(self._objects(shown[-1])), config=self.world)
        return [last] * steps
