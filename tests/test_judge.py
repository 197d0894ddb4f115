"""The consistent-world judge is fair (a perfect model scores exactly 1.0) and strict (a model
that copies the last frame scores exactly what the simulator says; wrong clips fail)."""

import itertools
from dataclasses import replace

import numpy as np
import pytest
from world_models import demo_codec

from ringworld.eval.reference_models import CopyModel, OracleModel
from ringworld.eval.world import CONTEXT_FRAMES, EVAL_SEED, _episodes, evaluate, judge_video
from ringworld.jobs.demo import DEMO_WORLD
from ringworld.world.consistent import Unknowns, check_judgeable, hides_something, judge, mismatch
from ringworld.world.oracle import parse_frames
from ringworld.world.sim import ACTION_DELTAS, Obj, State, WorldConfig, random_state, render, rollout, step
from ringworld.world.tasks import TaskConfig

SAMPLES = 40
HORIZON = 4


@pytest.fixture(scope="module")
def codec():
    return demo_codec()


@pytest.fixture(scope="module")
def copied(codec):
    return evaluate(
        CopyModel(codec, DEMO_WORLD), samples=SAMPLES, horizon=HORIZON, judged_only=True, progress=False
    ).metrics


def test_a_perfect_model_scores_exactly_one_on_every_task(codec):
    perfect = OracleModel(codec, DEMO_WORLD, seed=3)
    metrics = evaluate(perfect, samples=SAMPLES, horizon=HORIZON, judged_only=True, progress=False).metrics
    for key in (
        "t2i_accuracy",
        "caption_accuracy",
        "t2v_accuracy",
        "action_accuracy",
        "action_accuracy_mean",
        "qa_accuracy",
    ):
        assert metrics[key] == 1.0, key
    assert metrics["predict_accuracy"] == [1.0] * HORIZON
    assert metrics["action_accuracy_per_step"] == [1.0] * HORIZON
    assert metrics["qa_accuracy_by_kind"] and set(metrics["qa_accuracy_by_kind"].values()) == {1.0}
    # and the contexts did hide something: a judge of the sampled world alone would fail it
    assert metrics["predict_hidden_share"] > 0 and metrics["act_hidden_share"] > 0


def _positions(state: State) -> list[tuple]:
    return sorted((o.color, o.x, o.y) for o in state.objects)


def _every_velocity(world: WorldConfig, n: int):
    lattice = [world.grid * k for k in range(-world.max_speed, world.max_speed + 1)]
    return itertools.product(itertools.product(lattice, lattice), repeat=n)


def _copy_right_steps(start_states, steps: int, actions, still) -> int:
    """The most steps in a row that some start state keeps every object where ``still`` has it."""
    best = 0
    for start in start_states:
        states = rollout(start, steps, actions)[1:]
        best = max(best, next((k for k, s in enumerate(states) if _positions(s) != still), steps))
    return best


def test_copying_the_last_frame_scores_what_the_simulator_says(copied):
    """Brute force over every velocity (no pruning, no judge code): copying is right up to step k
    when some world that the context allows stands still for k steps."""
    cfg = TaskConfig(world=DEMO_WORLD, video_frames=CONTEXT_FRAMES + HORIZON)
    predict_steps = []
    for e in _episodes("predict", SAMPLES, cfg, EVAL_SEED):
        first, second = e.states[0], e.states[1]
        starts = [
            State(
                tuple(replace(o, vx=v[0], vy=v[1]) for o, v in zip(first.objects, vs, strict=True)), config=DEMO_WORLD
            )
            for vs in _every_velocity(DEMO_WORLD, len(first.objects))
        ]
        allowed = [step(s) for s in starts if _positions(step(s)) == _positions(second)]
        predict_steps.append(_copy_right_steps(allowed, HORIZON, None, _positions(second)))
    expected = [round(float(np.mean([r >= k for r in predict_steps])), 4) for k in range(1, HORIZON + 1)]
    assert copied["predict_accuracy"] == expected
    assert 0 < expected[0] < 1

    act_steps = []
    for e in _episodes("act", SAMPLES, replace(cfg, video_frames=1 + HORIZON), EVAL_SEED):
        objects = e.states[0].objects
        starts = []
        for agent in range(len(objects)):
            others = [o for i, o in enumerate(objects) if i != agent]
            for vs in _every_velocity(DEMO_WORLD, len(others)):
                moved = [replace(o, vx=v[0], vy=v[1]) for o, v in zip(others, vs, strict=True)]
                starts.append(State((replace(objects[agent], vx=0, vy=0), *moved), True, DEMO_WORLD))
        act_steps.append(_copy_right_steps(starts, HORIZON, e.actions, _positions(e.states[0])))
    expected = [round(float(np.mean([r >= k for r in act_steps])), 4) for k in range(1, HORIZON + 1)]
    assert copied["action_accuracy_per_step"] == expected
    assert copied["action_accuracy"] == expected[-1]
    assert copied["action_accuracy_mean"] == pytest.approx(np.mean(expected), abs=1e-4)
    assert expected[0] > expected[-1] > 0


def test_an_action_clip_right_for_the_agent_but_wrong_for_another_object_fails():
    rng = np.random.default_rng(0)
    actions = ["right", "down", "down", "left"]
    for _ in range(100):  # an episode whose second object moves on its own all along
        start = random_state(rng, DEMO_WORLD, agent=True, num_objects=2)
        states = rollout(start, len(actions), actions)
        if all(s.objects[1].vx or s.objects[1].vy for s in states):
            break
    truth = render(states)
    unknowns = Unknowns.from_frame(start.objects, DEMO_WORLD, agent=True)
    assert judge(unknowns, parse_frames(truth[1:], DEMO_WORLD), actions).correct
    # frame 2 with the other object back where it was in frame 1: the agent is right throughout
    frozen = list(states)
    frozen[2] = replace(states[2], objects=(states[2].objects[0], states[1].objects[1]))
    verdict = judge(unknowns, parse_frames(render(frozen)[1:], DEMO_WORLD), actions)
    assert not verdict.correct and verdict.right == 1
    other = states[0].objects[1]
    assert verdict.broke.startswith("frame 2:") and f"{other.color} {other.shape}" in verdict.broke


def test_a_video_whose_second_frame_ignores_a_wall_fails():
    world = DEMO_WORLD
    top = world.max_position
    start = State((Obj("red", "circle", top, 16, world.grid, 0),), config=world)  # at the right wall, moving right
    bounced = render(rollout(start, 3))
    assert judge_video(bounced, start, world).correct
    pressed = render([start, start, *rollout(start, 3)[2:]])  # frame 1: still against the wall
    verdict = judge_video(pressed, start, world)
    assert not verdict.correct and verdict.right == 0 and verdict.broke.startswith("frame 1: the red circle")


def test_frame_zero_of_a_video_must_show_the_caption():
    start = State((Obj("red", "circle", 0, 0, 8, 0),), config=DEMO_WORLD)
    elsewhere = State((Obj("red", "circle", 40, 40, 8, 0),), config=DEMO_WORLD)
    verdict = judge_video(render(rollout(elsewhere, 2)), start, DEMO_WORLD)
    assert not verdict.correct and verdict.broke == "frame 0: the red circle is in the bottom right, not the top left"


def test_a_collision_hides_velocities_and_either_continuation_is_right():
    """Two objects one cell apart, moving into each other: both go back, so frames 0 and 1 are
    the same, and standing still or moving apart are both consistent with them."""
    g, world = DEMO_WORLD.grid, DEMO_WORLD
    start = State((Obj("red", "square", 16, 16, g, 0), Obj("blue", "circle", 32, 16, -g, 0)), config=world)
    apart = rollout(start, 3)
    assert _positions(apart[1]) == _positions(apart[0]) and _positions(apart[2]) != _positions(apart[1])
    still = rollout(State(tuple(replace(o, vx=0) for o in start.objects), config=world), 3)
    unknowns = Unknowns.from_frame(start.objects, world, agent=False)
    assert hides_something(unknowns, parse_frames(render(apart[1:2]), world), 2)
    for clip in (apart, still):
        assert judge(unknowns, parse_frames(render(clip[1:]), world)).correct
    jump = replace(apart[2], objects=(replace(apart[2].objects[0], x=0), apart[2].objects[1]))  # two cells at once
    verdict = judge(unknowns, parse_frames(render([apart[1], jump]), world))
    assert verdict.right == 1 and verdict.broke.startswith("frame 2: the red square is at (0, 16)")


def test_two_free_moves_hide_nothing():
    world = DEMO_WORLD
    start = State((Obj("red", "square", 0, 0, 8, 8),), config=world)
    unknowns = Unknowns.from_frame(start.objects, world, agent=False)
    assert not hides_something(unknowns, parse_frames(render(rollout(start, 1)[1:]), world), 4)


def test_worlds_too_large_to_judge_are_refused_up_front():
    check_judgeable(DEMO_WORLD)
    check_judgeable(WorldConfig())  # the CLI's default world
    check_judgeable(WorldConfig(max_objects=5))  # 9^5 start states at worst
    for world in (WorldConfig(max_objects=6), WorldConfig(max_objects=8), WorldConfig(max_speed=3)):
        with pytest.raises(ValueError, match="--max-objects"):
            check_judgeable(world)


def _brute_right(starts, seen, actions) -> int:
    """The longest run of frames from frame 1 that one of ``starts`` explains, with no pruning."""
    best = 0
    for start in starts:
        states = rollout(start, len(seen), actions)[1:]
        best = max(best, next((k for k, s in enumerate(seen) if mismatch(s, states[k]) is not None), len(seen)))
    return best


@pytest.mark.parametrize("agent", [False, True])
def test_pruning_loses_no_world_in_a_crowded_world(agent):
    """In a world crowded enough that collisions are common, the judge's verdict on true and on
    corrupted clips equals a brute force over every start state, unpruned."""
    world = WorldConfig(frame_size=24, object_size=6, snap=3, max_objects=3, min_objects=3, gap=1)
    rng = np.random.default_rng(1)
    collided = 0
    for _ in range(12):
        start = random_state(rng, world, agent=agent)
        actions = [str(a) for a in rng.choice(list(ACTION_DELTAS), size=3)] if agent else None
        states = rollout(start, 3, actions)
        collided += any(_positions(a) == _positions(b) for a, b in zip(states, states[1:], strict=False))
        frames = render(states)
        corrupt = frames.copy()
        corrupt[2] = frames[1]  # a frame that stands still
        unknowns = Unknowns.from_frame(start.objects, world, agent=agent)
        starts = list(unknowns.worlds())
        for clip in (frames, corrupt):
            seen = parse_frames(clip[1:], world)
            assert judge(unknowns, seen, actions).right == _brute_right(starts, seen, actions)
    assert collided  # the crowding did make objects stand still
