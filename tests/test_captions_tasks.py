"""Captions read back exactly; questions have the right answers; tasks build the documents they promise."""

import numpy as np
import pytest

from ringworld.documents import Image, Video
from ringworld.world.captions import (
    QUESTION_KINDS,
    caption,
    direction,
    direction_of,
    motion_note,
    parse_caption,
    parse_motion_note,
    question,
    question_kind,
    questions,
    region,
    region_name,
)
from ringworld.world.sim import Obj, State, WorldConfig, random_state, rollout
from ringworld.world.tasks import TASKS, TaskConfig, caption_corpus, sample_mixture, sample_task


def test_captions_parse_back_to_the_state():
    rng = np.random.default_rng(0)
    wordings = set()
    for i in range(2000):
        state = random_state(rng, agent=bool(i % 2))
        motion = bool(i % 3)
        text = caption(state, rng, motion=motion)
        wordings.add(text.split(" a")[0])
        got = sorted((m.color, m.shape, m.row, m.column, m.direction) for m in parse_caption(text))
        want = sorted(
            (o.color, o.shape, *region(o, state.config), direction(o) if motion else None) for o in state.objects
        )
        assert got == want, text
        reading = sorted(state.objects, key=lambda o: (o.y, o.x))
        assert [(m.color, m.shape) for m in parse_caption(text)] == [(o.color, o.shape) for o in reading]
        assert " upper" not in text.replace("upper left", "").replace(
            "upper right", ""
        )  # "near the upper" is not English
        assert " lower" not in text.replace("lower left", "").replace("lower right", "")
    assert len(wordings) >= 4  # several phrasings, not one template


def test_regions_and_directions():
    cfg = WorldConfig()  # 32 px, objects 8 px: centres at x + 4
    assert region(Obj("red", "square", 0, 0), cfg) == ("top", "left")
    assert region(Obj("red", "square", 12, 12), cfg) == ("middle", "center")
    assert region(Obj("red", "square", 24, 12), cfg) == ("middle", "right")
    assert region_name("middle", "center") == "middle" and region_name("bottom", "right") == "bottom right"
    assert direction(Obj("red", "square", 0, 0, vx=-1, vy=-2)) == "up and to the left"
    assert direction(Obj("red", "square", 0, 0, vx=2, vy=0)) == "right"
    assert direction(Obj("red", "square", 0, 0)) == "still"


def test_questions_have_the_right_answers():
    state = State((Obj("red", "triangle", 0, 0, vx=1), Obj("blue", "circle", 24, 24, vy=-1)))
    qa = dict(questions(state, np.random.default_rng(0), video=True))
    assert qa["what colour is the triangle?"] == "red"
    assert qa["what shape is the blue object?"] == "circle"
    assert qa["where is the red triangle?"] == "top left"
    assert qa["which way is the blue circle moving?"] == "up"
    assert qa["how many objects are there?"] == "two"
    twins = State((Obj("red", "circle", 0, 0), Obj("blue", "circle", 24, 24)))
    assert not any(q.startswith("what colour is the circle") for q, _ in questions(twins, np.random.default_rng(0)))
    assert question(state, np.random.default_rng(3)) in questions(state, np.random.default_rng(3))
    kinds = {question_kind(q) for q in qa}
    assert kinds == set(QUESTION_KINDS.values()) and question_kind("is it raining?") == "other"


@pytest.mark.parametrize("task", list(TASKS))
def test_tasks_build_their_documents(task):
    cfg = TaskConfig(video_frames=5)
    sample = sample_task(task, np.random.default_rng(1), cfg)
    doc = sample.document
    kinds = [type(s).__name__ for s in doc]
    if task == "text_to_image":
        assert kinds == ["Text", "Image"] and [s.loss for s in doc] == [False, True]
        assert parse_caption(doc[0].text)  # the caption names the objects
    elif task == "image_to_text":
        assert kinds == ["Image", "Text", "Text"] and [s.loss for s in doc] == [False, False, True]
        assert parse_caption(doc[2].text)
    elif task == "text_to_video":
        assert kinds == ["Text", "Video"] and doc[1].num_frames == 5
    elif task == "predict":
        assert kinds == ["Video"] and doc[0].num_frames == 5 and doc[0].actions is None
    elif task == "act":
        assert kinds == ["Video"] and len(doc[0].actions) == 4 and sample.states[0].has_agent
        assert sample.states == rollout(sample.states[0], 4, sample.actions)
    elif task == "qa":
        assert kinds[1:] == ["Text", "Text"] and [s.loss for s in doc] == [False, False, True]
        assert doc[2].text == sample.answer
    frames = [s.pixels for s in doc if isinstance(s, (Image, Video))]
    assert len(sample.states) == sum(1 if f.ndim == 3 else len(f) for f in frames)


def test_tasks_are_deterministic_and_mix_by_weight():
    a = sample_mixture(np.random.default_rng(5))
    b = sample_mixture(np.random.default_rng(5))
    assert a.task == b.task and a.states == b.states
    rng = np.random.default_rng(0)
    names = [sample_mixture(rng, {"qa": 3.0, "predict": 1.0}).task for _ in range(400)]
    assert set(names) == {"qa", "predict"} and 0.65 < names.count("qa") / 400 < 0.85
    with pytest.raises(ValueError, match="unknown task"):
        sample_mixture(rng, {"dance": 1.0})
    with pytest.raises(ValueError, match="not all zero"):
        sample_mixture(rng, {"qa": 0.0})


def test_caption_corpus_is_text_only_and_seeded():
    corpus = caption_corpus(50, seed=2)
    assert corpus == caption_corpus(50, seed=2) and len(corpus) == 200
    assert all(isinstance(t, str) and t for t in corpus)


def test_motion_notes_say_every_move_and_start_at_a_random_frame():
    rng = np.random.default_rng(3)
    cfg = TaskConfig(video_frames=5, say_motion=True)
    starts = {"predict": set(), "act": set()}
    for i in range(200):
        sample = sample_task(("predict", "act")[i % 2], rng, cfg)
        video, states = sample.document[0], sample.states
        said = [t for t, note in enumerate(video.notes) if note]
        assert said == list(range(said[0], 4))  # once said, said before every frame after
        starts[sample.task].add(said[0])
        for t in said:
            pairs = zip(states[t].objects, states[t + 1].objects, strict=True)
            moves = {o.color: direction_of(b.x - o.x, b.y - o.y) for o, b in pairs}
            assert parse_motion_note(video.notes[t]) == moves
            assert video.notes[t] == motion_note(states[t], states[t + 1])
    # prediction says nothing before frame 2 (one frame shows no velocity); actions may from frame 1
    assert starts == {"predict": {1, 2, 3}, "act": {0, 1, 2, 3}}
    assert sample_task("predict", rng, TaskConfig(video_frames=5)).document[0].notes is None
