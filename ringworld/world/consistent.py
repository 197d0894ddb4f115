"""Every world consistent with what a model was shown, and the judge that holds a clip to them.

A context rarely fixes the world state. Two frames hide the velocity of an object that bounced
off another between them (it stood still, and now moves back); one frame and a list of actions
hide which object is the agent and how the others move; a caption names each object's direction,
not its speed (where ``max_speed`` > 1). So a clip is not compared with the one world its episode
was sampled from. The hidden variables are enumerated, and a clip is right when **one** world
consistent with the context, the same for the whole clip, puts every object where the clip shows
it: colour, shape, position within the oracle's tolerance, and nothing extra.

| task          | known                                      | hidden                                  |
| ------------- | ------------------------------------------ | --------------------------------------- |
| predict       | the objects in frames 0 and 1              | velocities at frame 0 that frame 1 leaves open |
| act           | the objects in frame 0, the actions        | which object is the agent; the others' velocities |
| text_to_video | frame 0 as drawn, each object's direction  | the speed behind each direction          |

What bounds the cost: a start state is a choice of agent and of one velocity per other object:
for n objects at ``max_speed`` s, at most ``(2s+1)^(2n)`` without an agent and ``n (2s+1)^(2n-2)``
with one (``worst_case``). The first judged frame
prunes each object's velocities on their own (it moved where that velocity takes it, or stood
still within reach of something it could have hit), and only the product of the survivors is
simulated: an object seen moving keeps one velocity, so a clip costs a handful of simulated
worlds. ``check_judgeable`` refuses a world whose worst case passes ``MAX_WORLDS``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from ringworld.world.oracle import POSITION_TOLERANCE, Seen
from ringworld.world.sim import ACTION_DELTAS, Obj, State, WorldConfig, bounce, step

MAX_WORLDS = 100_000  # start states one clip may need simulated; beyond it a world is refused

Velocity = tuple[int, int]


def velocities(config: WorldConfig) -> tuple[Velocity, ...]:
    """Every velocity an object of this world can have: (vx, vy) on the lattice, |v| <= max_speed cells."""
    steps = [config.grid * k for k in range(-config.max_speed, config.max_speed + 1)]
    return tuple(itertools.product(steps, steps))


def worst_case(config: WorldConfig) -> int:
    """The most start states any task's context can leave open in this world (see the module docstring)."""
    n, per_object = config.max_objects, len(velocities(config))
    return max(per_object**n, n * per_object ** (n - 1))


def check_judgeable(config: WorldConfig) -> None:
    """Raise a ValueError, before any model runs, if this world could need more than ``MAX_WORLDS``
    simulated worlds to judge one clip."""
    worst = worst_case(config)
    if worst > MAX_WORLDS:
        raise ValueError(
            f"this world can hide {worst:,} states from a model ({config.max_objects} objects, max_speed "
            f"{config.max_speed}), and the judge enumerates at most {MAX_WORLDS:,} per clip; evaluate a world "
            f"with fewer objects (--max-objects) or a lower max_speed"
        )


@dataclass(frozen=True)
class Unknowns:
    """A start state with its hidden variables open: every object's position is known (its
    ``vx, vy`` are ignored), its velocity is one of ``choices[i]``, and the agent is one of
    ``agents`` (``(None,)``: the world has no agent)."""

    objects: tuple[Obj, ...]
    choices: tuple[tuple[Velocity, ...], ...]
    agents: tuple[int | None, ...]
    config: WorldConfig

    @classmethod
    def from_frame(cls, objects: Sequence[Obj], config: WorldConfig, *, agent: bool) -> Unknowns:
        """Only positions known: any velocity, and (``agent``) any object the agent."""
        every = velocities(config)
        agents = tuple(range(len(objects))) if agent else (None,)
        return cls(tuple(objects), tuple(every for _ in objects), agents, config)

    @classmethod
    def from_directions(cls, objects: Sequence[Obj], directions: Sequence[Velocity], config: WorldConfig) -> Unknowns:
        """Positions known, and each object's direction (the signs of ``directions[i]``), not its speed."""
        choices = tuple(
            tuple(v for v in velocities(config) if (_sign(v[0]), _sign(v[1])) == (_sign(d[0]), _sign(d[1])))
            for d in directions
        )
        return cls(tuple(objects), choices, (None,), config)

    def worlds(self, after: list[Seen] | None = None, action: str | None = None) -> Iterator[State]:
        """Every start state, or (``after``: the parse of the next frame, reached by ``action``)
        only those whose objects could each have gone where ``after`` shows them."""
        for agent, choices in self._choices(after, action):
            for chosen in itertools.product(*choices):
                objects = [replace(o, vx=v[0], vy=v[1]) for o, v in zip(self.objects, chosen, strict=True)]
                if agent is not None:
                    objects.insert(0, objects.pop(agent))
                yield State(tuple(objects), has_agent=agent is not None, config=self.config)

    def count(self, after: list[Seen] | None = None, action: str | None = None) -> int:
        """How many states ``worlds`` yields, without making them."""
        return sum(math.prod(map(len, choices)) for _, choices in self._choices(after, action))

    def _choices(self, after: list[Seen] | None, action: str | None) -> Iterator[tuple[int | None, list[tuple]]]:
        """Per possible agent, each object's velocities left (the agent's own is unused: (0, 0))."""
        for agent in self.agents:
            if after is not None and agent is not None and not self._agent_could(agent, after, action):
                continue
            choices = [((0, 0),) if i == agent else c for i, c in enumerate(self.choices)]
            if after is not None:
                choices = [
                    c if i == agent else tuple(v for v in c if self._could(i, v, after)) for i, c in enumerate(choices)
                ]
            yield agent, choices

    def _could(self, i: int, v: Velocity, after: list[Seen]) -> bool:
        """Object i, moving at ``v``, could be where ``after`` shows it one step on."""
        o, cfg = self.objects[i], self.config
        seen = _by_color(after).get(o.color)
        if seen is None or seen.shape != o.shape:
            return False
        x, _ = bounce(o.x, v[0], cfg.max_position)
        y, _ = bounce(o.y, v[1], cfg.max_position)
        if _near(seen, x, y):
            return True
        # it stood still: at rest, or sent back by a collision, which needs something within reach
        return _near(seen, o.x, o.y) and (v == (0, 0) or self._crowded(i))

    def _agent_could(self, i: int, after: list[Seen], action: str | None) -> bool:
        """Object i, as the agent, could be where ``after`` shows it after ``action`` (moved or blocked)."""
        o, cfg = self.objects[i], self.config
        seen = _by_color(after).get(o.color)
        if seen is None or seen.shape != o.shape:
            return False
        dx, dy = ACTION_DELTAS[action] if action is not None else (0, 0)
        x = min(max(o.x + dx * cfg.step, 0), cfg.max_position)
        y = min(max(o.y + dy * cfg.step, 0), cfg.max_position)
        return _near(seen, x, y) or _near(seen, o.x, o.y)

    def _crowded(self, i: int) -> bool:
        """Another object is near enough to object i to collide with it within one step."""
        cfg, o = self.config, self.objects[i]
        moves = max(cfg.max_speed * cfg.grid, cfg.step)
        reach = cfg.size + cfg.gap + 2 * moves
        return any(abs(p.x - o.x) < reach and abs(p.y - o.y) < reach for j, p in enumerate(self.objects) if j != i)


def _sign(v: int) -> int:
    return (v > 0) - (v < 0)


def _by_color(seen: list[Seen]) -> dict[str, Seen]:
    return {s.color: s for s in seen}


def _near(seen: Seen, x: int, y: int, tolerance: int = POSITION_TOLERANCE) -> bool:
    return abs(seen.x - x) <= tolerance and abs(seen.y - y) <= tolerance


def misdrawn(seen: Seen | None, o: Obj) -> str | None:
    """How a frame fails to show object ``o`` at all (missing, or another shape), or None."""
    if seen is None:
        return f"the {o.color} {o.shape} is missing"
    if seen.shape != o.shape:
        return f"the {o.color} {o.shape} is drawn as a {seen.shape}"
    return None


def extra_object(seen: list[Seen], objects: Sequence[Obj]) -> str | None:
    """The first object a frame shows that is none of ``objects``, or None."""
    colors = {o.color for o in objects}
    extra = [s for s in seen if s.color not in colors]
    return f"an extra {extra[0].color} {extra[0].shape} at ({extra[0].x}, {extra[0].y})" if extra else None


def mismatch(seen: list[Seen], state: State, tolerance: int = POSITION_TOLERANCE) -> str | None:
    """How a frame's parse differs from a state (the first object that does), or None if it shows it."""
    by_color = _by_color(seen)
    for o in state.objects:
        s = by_color.get(o.color)
        wrong = misdrawn(s, o)
        if wrong is not None:
            return wrong
        if not _near(s, o.x, o.y, tolerance):
            return f"the {o.color} {o.shape} is at ({s.x}, {s.y}), where a consistent world has ({o.x}, {o.y})"
    return extra_object(seen, state.objects)


def play(start: State, steps: int, actions: Sequence[str] | None = None) -> Iterator[State]:
    """The states after ``start``, one per step (lazily: a judge stops at the first wrong one)."""
    state = start
    for t in range(steps):
        state = step(state, actions[t] if actions is not None else None)
        yield state


@dataclass(frozen=True)
class Verdict:
    """How much of a clip one consistent world explains. ``frames`` frames were judged after the
    start (frame 0); the first ``right`` of them are right; ``broke`` says where the best world
    parted from the clip first: "frame 2: the red circle is missing"."""

    frames: int
    right: int
    broke: str = ""

    @property
    def correct(self) -> bool:
        return self.right == self.frames


def judge(unknowns: Unknowns, seen: Sequence[list[Seen]], actions: Sequence[str] | None = None) -> Verdict:
    """Judge the clip whose frames 1, 2, ... parse to ``seen`` (``actions[t]`` taken at step t)
    against every start state ``unknowns`` leaves open."""
    if not seen:
        return Verdict(0, 0)
    first_action = actions[0] if actions is not None else None
    count = unknowns.count(seen[0], first_action)
    if count > MAX_WORLDS:
        raise ValueError(
            f"this clip leaves {count:,} worlds open, more than the judge's {MAX_WORLDS:,}; "
            f"evaluate a world with fewer objects (--max-objects)"
        )
    best, broke = -1, ""
    for start in unknowns.worlds(seen[0], first_action):
        right = 0
        for k, state in enumerate(play(start, len(seen), actions)):
            wrong = mismatch(seen[k], state)
            if wrong is not None:
                if right > best:
                    best, broke = right, f"frame {k + 1}: {wrong}"
                break
            right += 1
        else:
            return Verdict(len(seen), len(seen))
    if best < 0:  # no start state could reach frame 1 as drawn: say which object rules them all out
        return Verdict(len(seen), 0, f"frame 1: {_first_impossible(unknowns, seen[0], first_action)}")
    return Verdict(len(seen), best, broke)


def _first_impossible(unknowns: Unknowns, after: list[Seen], action: str | None) -> str:
    """What in frame 1 no start state explains: the first object no role and velocity explain."""
    by_color = _by_color(after)
    for i, o in enumerate(unknowns.objects):
        wrong = misdrawn(by_color.get(o.color), o)
        if wrong is not None:
            return wrong
        as_agent = i in unknowns.agents and unknowns._agent_could(i, after, action)
        if not as_agent and not any(unknowns._could(i, v, after) for v in unknowns.choices[i]):
            s = by_color[o.color]
            return f"the {o.color} {o.shape} is at ({s.x}, {s.y}), where no consistent world puts it"
    # each object could have got there alone, but not all of them at once
    return extra_object(after, unknowns.objects) or "no consistent world moves the objects together this way"


def consistent(
    unknowns: Unknowns, seen: Sequence[list[Seen]] = (), actions: Sequence[str] | None = None
) -> Iterator[list[State]]:
    """Each start state that explains every frame of ``seen``, as its states from the start to the last seen frame."""
    first = seen[0] if seen else None
    for start in unknowns.worlds(first, actions[0] if actions and seen else None):
        states = [start, *play(start, len(seen), actions)]
        if all(mismatch(s, st) is None for s, st in zip(seen, states[1:], strict=True)):
            yield states


def hides_something(
    unknowns: Unknowns, seen: Sequence[list[Seen]], steps: int, actions: Sequence[str] | None = None
) -> bool:
    """Whether worlds consistent with the context (``unknowns`` and the frames ``seen`` after its
    start) go on to different futures over the next ``steps`` steps (``actions`` cover them all)."""
    futures: set[tuple] = set()
    for states in consistent(unknowns, seen, actions):
        later = actions[len(seen) :] if actions is not None else None
        future = tuple(tuple(sorted((o.color, o.x, o.y) for o in s.objects)) for s in play(states[-1], steps, later))
        futures.add(future)
        if len(futures) > 1:
            return True
    return False
