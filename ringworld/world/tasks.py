"""Task samplers: seeded world episodes turned into documents, with the truth kept for scoring.

| task          | document                                              | loss on          |
| ------------- | ----------------------------------------------------- | ---------------- |
| text_to_image | Text(caption), Image                                  | the image        |
| image_to_text | Image, Text(instruction), Text(caption)               | the caption      |
| text_to_video | Text(caption with motion), Video                      | the video        |
| predict       | Video(frames: the first ``context`` then the future)  | every frame      |
| act           | Video(frames, actions between them), agent present    | the frames       |
| qa            | Image or Video, Text(question), Text(answer)          | the answer       |
| needle_text   | Text(filler + magic number), Text(question), Text(n)  | the number       |
| needle_video  | Video(haystack + one flash frame), Text(q), Text(c)   | the colour word  |

With ``say_motion``, prediction and action videos say how every object moves before each frame from
a random one on (``Video.notes``, ``motion_note``): from the third frame on in prediction (two frames
show the velocities), from the second with actions. Earlier frames go unsaid, so a prompt of
frames alone is a document the model has seen; at inference it is made to speak before each frame.

The needle tasks (``ringworld.world.needle``) make long documents and are not in the default
mixture (``DEFAULT_WEIGHTS``): name them in the weights to train on them, with their sizes fitted
to the row length by ``fit_needles``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from ringworld.documents import ACTIONS, Document, Image, Text, Video
from ringworld.world.captions import CAPTION_PROMPT, caption, motion_note, question
from ringworld.world.needle import CodecLike, Needle, haystack_size, needle_limits, text_needle, video_needle
from ringworld.world.sim import State, WorldConfig, random_state, render, rollout


@dataclass
class TaskSample:
    task: str
    document: Document
    states: list[State]  # the state behind every frame, in order
    actions: list[str] | None = None
    answer: str | None = None  # qa only
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TaskConfig:
    world: WorldConfig = field(default_factory=WorldConfig)
    video_frames: int = 4  # frames in text_to_video, predict and act documents
    # the largest needle haystacks; the defaults fit 1024-id rows of the default world, and
    # ``fit_needles`` sizes them for a codec and a row length
    needle_frames: int = 12  # haystack frames in needle_video documents
    needle_sentences: int = 24  # filler sentences in needle_text documents
    say_motion: bool = False  # prediction and action videos say each move before drawing it


def text_to_image(rng: np.random.Generator, cfg: TaskConfig) -> TaskSample:
    state = random_state(rng, cfg.world, agent=False)
    doc = [Text(caption(state, rng), loss=False), Image(pixels=render(state))]
    return TaskSample("text_to_image", doc, [state])


def image_to_text(rng: np.random.Generator, cfg: TaskConfig) -> TaskSample:
    state = random_state(rng, cfg.world, agent=False)
    # an instruction, as QA has its question: after an image, training has a caption, a question or
    # <|eos|> follow, and without one a caption's first word has no clear start
    doc = [Image(pixels=render(state), loss=False), Text(CAPTION_PROMPT, loss=False), Text(caption(state, rng))]
    return TaskSample("image_to_text", doc, [state])


def text_to_video(rng: np.random.Generator, cfg: TaskConfig) -> TaskSample:
    states = rollout(random_state(rng, cfg.world), cfg.video_frames - 1)
    doc = [Text(caption(states[0], rng, motion=True), loss=False), Video(pixels=render(states))]
    return TaskSample("text_to_video", doc, states)


def predict(rng: np.random.Generator, cfg: TaskConfig) -> TaskSample:
    states = rollout(random_state(rng, cfg.world), cfg.video_frames - 1)
    notes = _motion_notes(rng, states, first=1) if cfg.say_motion else None
    return TaskSample("predict", [Video(pixels=render(states), notes=notes)], states)


def act(rng: np.random.Generator, cfg: TaskConfig) -> TaskSample:
    actions = [ACTIONS[int(i)] for i in rng.integers(len(ACTIONS), size=cfg.video_frames - 1)]
    states = rollout(random_state(rng, cfg.world, agent=True), cfg.video_frames - 1, actions)
    notes = _motion_notes(rng, states, first=0) if cfg.say_motion else None
    return TaskSample("act", [Video(pixels=render(states), actions=actions, notes=notes)], states, actions)


def _motion_notes(rng: np.random.Generator, states: list[State], first: int) -> list[str] | None:
    """The motion said before every frame from a random one after frame ``first`` on."""
    gaps = len(states) - 1
    if gaps <= first:
        return None
    start = int(rng.integers(first, gaps))
    return ["" if t < start else motion_note(states[t], states[t + 1]) for t in range(gaps)]


def qa(rng: np.random.Generator, cfg: TaskConfig) -> TaskSample:
    video = bool(rng.random() < 0.5)
    states = rollout(random_state(rng, cfg.world), cfg.video_frames - 1 if video else 0)
    # "which way is it moving?" is only fair when no object bounced during the clip
    steady = all(
        (o.vx, o.vy) == (p.vx, p.vy) for s in states for o, p in zip(s.objects, states[0].objects, strict=True)
    )
    q, a = question(states[0], rng, video=video and steady)
    frames = render(states)
    seen = Video(pixels=frames, loss=False) if video else Image(pixels=frames[0], loss=False)
    return TaskSample("qa", [seen, Text(q, loss=False), Text(a)], states, answer=a)


def _needle(task: str, needle: Needle) -> TaskSample:
    meta = {"at": needle.at, "haystack": needle.haystack, "depth": needle.depth}
    return TaskSample(task, needle.document, needle.states, answer=needle.answer, meta=meta)


EDGE_DEPTHS = 0.2  # needles put at the very start or end this often: the edges are the hardest to learn


def needle_depth(rng: np.random.Generator) -> float:
    """Uniform in [0, 1], except that EDGE_DEPTHS of the needles sit exactly at 0 or 1 (a uniform
    depth would put one there only once in about twice the haystack's length)."""
    if rng.random() < EDGE_DEPTHS:
        return float(rng.integers(2))
    return float(rng.random())


def needle_text(rng: np.random.Generator, cfg: TaskConfig) -> TaskSample:
    n = haystack_size(rng, cfg.needle_sentences)
    return _needle("needle_text", text_needle(rng, n, needle_depth(rng), cfg.world))


def needle_video(rng: np.random.Generator, cfg: TaskConfig) -> TaskSample:
    n = haystack_size(rng, cfg.needle_frames)
    return _needle("needle_video", video_needle(rng, n, needle_depth(rng), cfg.world))


def fit_needles(cfg: TaskConfig, codec: CodecLike, seq_len: int) -> TaskConfig:
    """``cfg`` with the largest needle haystacks whose documents fit rows of ``seq_len`` ids."""
    frames, sentences = needle_limits(codec, seq_len, cfg.world)
    return replace(cfg, needle_frames=frames, needle_sentences=sentences)


TASKS: dict[str, Callable[[np.random.Generator, TaskConfig], TaskSample]] = {
    "text_to_image": text_to_image,
    "image_to_text": image_to_text,
    "text_to_video": text_to_video,
    "predict": predict,
    "act": act,
    "qa": qa,
    "needle_text": needle_text,
    "needle_video": needle_video,
}
NEEDLE_TASKS: tuple[str, ...] = ("needle_text", "needle_video")
# The mixture when no weights are given: the scored tasks, drawing twice and text->video half as often
# (the demo's, measured in #11 and kept through #21: docs/results.md).
DEFAULT_WEIGHTS: dict[str, float] = {
    "text_to_image": 2.0,
    "image_to_text": 1.0,
    "text_to_video": 0.5,
    "predict": 1.0,
    "act": 1.0,
    "qa": 1.0,
}
DEFAULT_TASKS: tuple[str, ...] = tuple(DEFAULT_WEIGHTS)


def sample_task(name: str, rng: np.random.Generator, cfg: TaskConfig = TaskConfig()) -> TaskSample:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; tasks are {', '.join(TASKS)}")
    return TASKS[name](rng, cfg)


def check_task_weights(weights: dict[str, float]) -> None:
    """Raise a ValueError naming the problem unless ``weights`` weighs known tasks, >= 0, not all 0."""
    unknown = set(weights) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(sorted(unknown))}; tasks are {', '.join(TASKS)}")
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"task weights must be >= 0 and not all zero, got {weights}")


def sample_mixture(
    rng: np.random.Generator, weights: dict[str, float] | None = None, cfg: TaskConfig = TaskConfig()
) -> TaskSample:
    """One sample from a weighted mixture of tasks (``DEFAULT_WEIGHTS`` when ``weights`` is None)."""
    weights = weights or DEFAULT_WEIGHTS
    check_task_weights(weights)
    names = list(weights)
    p = np.array([weights[n] for n in names], dtype=float)
    return sample_task(names[int(rng.choice(len(names), p=p / p.sum()))], rng, cfg)


def caption_corpus(n: int, seed: int = 0, cfg: TaskConfig = TaskConfig()) -> list[str]:
    """Captions, questions and answers of ``n`` random scenes: the text tokenizer's default corpus."""
    rng = np.random.default_rng(seed)
    corpus = []
    for i in range(n):
        states = rollout(random_state(rng, cfg.world, agent=bool(i % 2)), 1)
        video = bool(i % 3 == 0)
        q, a = question(states[0], rng, video=video)
        corpus += [caption(states[0], rng, motion=video), q, a, CAPTION_PROMPT]
    return corpus
