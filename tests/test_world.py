"""The sprite world: determinism, rendering, dynamics, and the oracle that judges everything."""

from dataclasses import replace

import numpy as np
import pytest

from ringworld.world.oracle import Seen, agreement, parse_frame, parse_frames, score
from ringworld.world.sim import (
    COLORS,
    PALETTE,
    SHAPES,
    Obj,
    State,
    WorldConfig,
    random_state,
    render,
    rollout,
    sprite,
    step,
)


def _states(n: int, seed: int, config: WorldConfig = WorldConfig()) -> list[State]:
    rng = np.random.default_rng(seed)
    return [random_state(rng, config, agent=bool(i % 2)) for i in range(n)]


def test_same_seed_same_world():
    a, b = _states(50, seed=7), _states(50, seed=7)
    assert a == b
    assert np.array_equal(render(a), render(b))
    assert _states(50, seed=8) != a


def test_sprites_are_distinct_and_fill_their_box():
    for size in (6, 8, 16, 32):
        bitmaps = [sprite(s, size) for s in SHAPES]
        for i in range(len(bitmaps)):
            for j in range(i + 1, len(bitmaps)):
                assert (bitmaps[i] != bitmaps[j]).any()
        for b in bitmaps:  # every sprite touches all four sides of its box
            assert b[0].any() and b[-1].any() and b[:, 0].any() and b[:, -1].any()


def test_render_paints_each_object_exactly():
    config = WorldConfig()
    state = State((Obj("red", "circle", 2, 3), Obj("blue", "triangle", 20, 20)), config=config)
    frame = render(state)
    covered = np.zeros(frame.shape[:2], dtype=bool)
    for o in state.objects:
        painted = (frame == PALETTE[o.color]).all(-1)
        expected = np.zeros_like(painted)
        expected[o.y : o.y + config.size, o.x : o.x + config.size] = sprite(o.shape, config.size)
        assert np.array_equal(painted, expected)
        covered |= expected
    assert (frame[~covered] == 0).all()  # the rest is background


def test_render_batch_matches_one_by_one():
    states = _states(40, seed=1)
    batch = render(states)
    assert batch.shape == (40, 32, 32, 3) and batch.dtype == np.uint8
    assert all(np.array_equal(batch[i], render(s)) for i, s in enumerate(states))


@pytest.mark.parametrize("frame_size", [32, 64, 128])
def test_objects_stay_inside_and_never_overlap(frame_size):
    config = WorldConfig(frame_size=frame_size, max_objects=4)
    rng = np.random.default_rng(frame_size)
    for _ in range(30):
        state = random_state(rng, config, agent=True)
        actions = [str(a) for a in rng.choice(["up", "down", "left", "right", "stay"], size=40)]
        for s in rollout(state, 40, actions):
            for i, a in enumerate(s.objects):
                assert 0 <= a.x <= config.max_position and 0 <= a.y <= config.max_position
                for b in s.objects[i + 1 :]:
                    assert abs(a.x - b.x) >= config.size + config.gap or abs(a.y - b.y) >= config.size + config.gap


def test_walls_bounce():
    config = WorldConfig()
    state = State((Obj("red", "square", 1, 10, vx=-2, vy=0),), config=config)
    nxt = step(state)
    assert (nxt.objects[0].x, nxt.objects[0].vx) == (1, 2)  # 1 - 2 = -1 reflects to 1
    state = State((Obj("red", "square", config.max_position - 1, 10, vx=2, vy=1),), config=config)
    nxt = step(state)
    assert (nxt.objects[0].x, nxt.objects[0].vx, nxt.objects[0].y) == (config.max_position - 1, -2, 11)


def test_agent_moves_by_actions_only():
    config = WorldConfig()
    agent = Obj("green", "circle", 10, 10)
    state = State((agent, Obj("red", "square", 24, 0, vx=0, vy=0)), has_agent=True, config=config)
    assert step(state).objects[0] == agent  # no action, no motion
    assert step(state, "right").objects[0].x == 10 + config.step
    assert step(state, "up").objects[0].y == 10 - config.step
    assert step(state, "stay").objects[0] == agent
    corner = replace(state, objects=(replace(agent, x=0, y=0), state.objects[1]))
    assert step(corner, "left").objects[0].x == 0  # walls stop the agent
    with pytest.raises(ValueError, match="unknown action"):
        step(state, "jump")
    with pytest.raises(ValueError, match="no agent"):
        step(replace(state, has_agent=False), "up")


def test_agent_is_blocked_by_objects():
    config = WorldConfig()
    state = State((Obj("green", "circle", 10, 10), Obj("red", "square", 20, 10)), has_agent=True, config=config)
    assert step(state, "right").objects[0].x == 10  # 14 would touch the square at 20 (gap 1)


def test_oracle_is_exact_on_10000_rendered_frames():
    states = _states(10_000, seed=123)
    assert agreement(render(states), states, tolerance=0) == 1.0


@pytest.mark.parametrize("frame_size", [64, 128])
def test_oracle_is_exact_at_other_sizes(frame_size):
    states = _states(300, seed=5, config=WorldConfig(frame_size=frame_size))
    assert agreement(render(states), states, tolerance=0) == 1.0


def test_oracle_is_robust_to_noise():
    states = _states(3000, seed=9)
    frames = render(states).astype(np.float64)
    noisy = np.clip(frames + np.random.default_rng(0).normal(0, 10, frames.shape), 0, 255).astype(np.uint8)
    assert agreement(noisy, states, tolerance=0) >= 0.999


def test_oracle_reads_blurred_edges():
    """A box blur, like a soft reconstruction, moves no object by more than the tolerance."""
    states = _states(500, seed=11)
    frames = render(states).astype(np.float64)
    padded = np.pad(frames, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    blur = sum(padded[:, dy : dy + 32, dx : dx + 32] for dy in range(3) for dx in range(3)) / 9
    blurred = (0.5 * frames + 0.5 * blur).round().astype(np.uint8)
    assert agreement(blurred, states, tolerance=1) >= 0.99


def test_score_names_what_is_wrong():
    intended = [Obj("red", "circle", 4, 4), Obj("blue", "square", 20, 20)]
    right = [Seen("red", "circle", 4, 4, 1.0), Seen("blue", "square", 21, 20, 1.0)]
    assert score(right, intended, tolerance=1).correct
    assert not score(right, intended, tolerance=0).correct
    wrong_shape = [Seen("red", "triangle", 4, 4, 1.0), right[1]]
    assert score(wrong_shape, intended).matched == 1
    extra = [*right, Seen("green", "square", 0, 0, 1.0)]
    s = score(extra, intended)
    assert (s.matched, s.extra, s.correct) == (2, 1, False)
    assert score(right[:1], intended).object_accuracy == 0.5


def test_oracle_on_empty_and_bad_input():
    assert parse_frame(np.zeros((32, 32, 3), np.uint8)) == []
    with pytest.raises(ValueError, match="64x64 but the world config is 32x32"):
        parse_frames(np.zeros((1, 64, 64, 3), np.uint8))
    assert len(COLORS) >= 6 and len(SHAPES) >= 3


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="frame_size"):
        WorldConfig(frame_size=8)
    with pytest.raises(ValueError, match="one colour per object"):
        WorldConfig(max_objects=20)
