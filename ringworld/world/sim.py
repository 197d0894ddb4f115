"""The sprite world: a few coloured shapes on a plain background, moving with simple physics.

Every object is an ``s x s`` sprite (``s = WorldConfig.object_size``) stamped at an integer
position, so a rendered frame is an exact composition of stamps and the oracle can invert it.
Colours are unique within a scene, which makes "the red circle" unambiguous in captions and
lets the oracle match objects by colour. Objects bounce off the walls and off each other and
never overlap; the optional agent (always object 0) moves only by actions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ringworld.documents import ACTIONS

SHAPES: tuple[str, ...] = ("square", "circle", "triangle")

# Saturated colours far apart in RGB (closest pair, yellow/orange, is 83 apart), so nearest-colour
# classification survives Gaussian noise and tokenizer reconstructions.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 30),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
    "purple": (160, 60, 200),
    "orange": (250, 140, 20),
    "cyan": (30, 200, 210),
    "white": (240, 240, 240),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
BACKGROUND: tuple[int, int, int] = (0, 0, 0)

ACTION_DELTAS: dict[str, tuple[int, int]] = {  # (dx, dy); y grows downwards
    "up": (0, -1),
    "down": (0, 1),
    "left": (-1, 0),
    "right": (1, 0),
    "stay": (0, 0),
}
assert tuple(ACTION_DELTAS) == ACTIONS


@dataclass(frozen=True)
class WorldConfig:
    frame_size: int = 32  # frames are frame_size x frame_size RGB
    object_size: int = 0  # sprite side in pixels; 0 = frame_size // 4
    min_objects: int = 1
    max_objects: int = 3
    # Positions and velocities are multiples of ``snap`` pixels; 0 = object_size // 2. With the
    # default vision patch (4 px, a divisor of the half sprite) every sprite then covers whole
    # patches, so a scene is a handful of distinct codes and a small model learns it in minutes.
    # snap=1 frees positions to any pixel.
    snap: int = 0
    max_speed: int = 1  # velocities are integers in [-max_speed, max_speed] times snap pixels per step
    agent_step: int = 0  # pixels an action moves the agent; 0 = snap
    gap: int = 1  # objects keep at least this many pixels between them

    def __post_init__(self) -> None:
        if not 16 <= self.frame_size <= 256:
            raise ValueError(f"frame_size must be in [16, 256], got {self.frame_size}")
        if self.max_objects > len(COLORS) or not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= {len(COLORS)} (one colour per object), "
                f"got {self.min_objects}..{self.max_objects}"
            )
        if not 4 <= self.size <= self.frame_size // 2:
            raise ValueError(f"object_size must be in [4, frame_size/2], got {self.size}")
        if self.max_position % self.grid:
            raise ValueError(
                f"snap {self.grid} does not divide the free range {self.max_position} px "
                f"(frame_size - object_size); pick a snap that does, or snap=1"
            )

    @property
    def size(self) -> int:
        return self.object_size or self.frame_size // 4

    @property
    def grid(self) -> int:
        """The lattice positions and velocities live on, in pixels."""
        return self.snap or max(1, self.size // 2)

    @property
    def step(self) -> int:
        return self.agent_step or self.grid

    @property
    def max_position(self) -> int:
        return self.frame_size - self.size


@dataclass(frozen=True)
class Obj:
    color: str
    shape: str
    x: int  # left column of the sprite
    y: int  # top row of the sprite
    vx: int = 0
    vy: int = 0


@dataclass(frozen=True)
class State:
    objects: tuple[Obj, ...]
    has_agent: bool = False  # when True, objects[0] is the agent
    config: WorldConfig = field(default_factory=WorldConfig)

    @property
    def agent(self) -> Obj | None:
        return self.objects[0] if self.has_agent else None


def sprite(shape: str, size: int) -> np.ndarray:
    """(size, size) bool bitmap of a shape. Crisp (no anti-aliasing) so rendering is invertible."""
    c = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size]
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "circle":
        return (xx - c) ** 2 + (yy - c) ** 2 <= (size / 2) ** 2 - 0.25 * size / 4
    if shape == "triangle":  # apex up, base on the bottom row
        half_width = (yy + 1) / size * size / 2
        return np.abs(xx - c) <= half_width
    raise ValueError(f"unknown shape {shape!r}; shapes are {', '.join(SHAPES)}")


class _SpriteCache(dict):
    """Sprites by (shape, size), made once."""

    def __missing__(self, key: tuple[str, int]) -> np.ndarray:
        self[key] = sprite(*key)
        return self[key]


_SPRITES = _SpriteCache()


def _overlap(a: Obj, b: Obj, size: int, gap: int) -> bool:
    reach = size + gap
    return abs(a.x - b.x) < reach and abs(a.y - b.y) < reach


def bounce(p: int, v: int, hi: int) -> tuple[int, int]:
    """Position and velocity along one axis after one step from ``p`` at ``v``, walls at 0 and ``hi``."""
    p += v
    if p < 0:
        return -p, -v
    if p > hi:
        return 2 * hi - p, -v
    return p, v


def random_state(
    rng: np.random.Generator,
    config: WorldConfig = WorldConfig(),
    *,
    agent: bool = False,
    num_objects: int | None = None,
) -> State:
    """A random scene: distinct colours, random shapes, positions with no overlap."""
    n = num_objects or int(rng.integers(config.min_objects, config.max_objects + 1))
    colors = rng.choice(len(COLORS), size=n, replace=False)
    objects: list[Obj] = []
    for i, c in enumerate(colors):
        for _ in range(1000):
            still = agent and i == 0
            speed, g, cells = config.max_speed, config.grid, config.max_position // config.grid
            obj = Obj(
                color=COLORS[c],
                shape=SHAPES[int(rng.integers(len(SHAPES)))],
                x=g * int(rng.integers(0, cells + 1)),
                y=g * int(rng.integers(0, cells + 1)),
                vx=0 if still else g * int(rng.integers(-speed, speed + 1)),
                vy=0 if still else g * int(rng.integers(-speed, speed + 1)),
            )
            if not any(_overlap(obj, o, config.size, config.gap) for o in objects):
                objects.append(obj)
                break
        else:
            raise ValueError(f"cannot place {n} objects of size {config.size} in {config.frame_size}px")
    return State(tuple(objects), has_agent=agent, config=config)


def step(state: State, action: str | None = None) -> State:
    """Advance one time step. The agent moves by ``action`` (blocked by walls and objects);
    the others move by their velocity, bounce off walls, and reverse on contact."""
    cfg = state.config
    old = list(state.objects)
    new = list(old)
    moving = list(range(len(old)))
    if state.has_agent:
        moving.remove(0)
        if action is not None:
            if action not in ACTION_DELTAS:
                raise ValueError(f"unknown action {action!r}; actions are {', '.join(ACTIONS)}")
            dx, dy = ACTION_DELTAS[action]
            a = old[0]
            x = min(max(a.x + dx * cfg.step, 0), cfg.max_position)
            y = min(max(a.y + dy * cfg.step, 0), cfg.max_position)
            moved = replace(a, x=x, y=y)
            if not any(_overlap(moved, o, cfg.size, cfg.gap) for o in old[1:]):
                new[0] = moved
    elif action is not None:
        raise ValueError("this state has no agent to take an action")
    for i in moving:
        o = old[i]
        x, vx = bounce(o.x, o.vx, cfg.max_position)
        y, vy = bounce(o.y, o.vy, cfg.max_position)
        new[i] = replace(o, x=x, y=y, vx=vx, vy=vy)
    # Objects that would touch go back to where they were and reverse. Old positions never
    # overlap and the agent's move was checked against them, so this settles.
    reverted: set[int] = set()
    while True:
        clash = {
            k
            for i in range(len(new))
            for j in range(i + 1, len(new))
            if _overlap(new[i], new[j], cfg.size, cfg.gap)
            for k in (i, j)
            if k in moving and k not in reverted
        }
        if not clash:
            break
        for k in clash:
            o = old[k]
            new[k] = replace(o, vx=-o.vx, vy=-o.vy)
        reverted |= clash
    return replace(state, objects=tuple(new))


def rollout(state: State, steps: int, actions: list[str] | None = None) -> list[State]:
    """``steps + 1`` states starting with ``state``; ``actions[t]`` drives the agent at step t."""
    if actions is not None and len(actions) != steps:
        raise ValueError(f"{steps} steps need {steps} actions, got {len(actions)}")
    states = [state]
    for t in range(steps):
        states.append(step(states[-1], actions[t] if actions is not None else None))
    return states


def render(states: list[State] | State) -> np.ndarray:
    """Render one state to (H, W, 3) uint8, or a list of states to (N, H, W, 3), vectorised."""
    single = isinstance(states, State)
    batch = [states] if single else states
    if not batch:
        raise ValueError("render needs at least one state")
    cfg = batch[0].config
    if any(s.config != cfg for s in batch):
        raise ValueError("render takes states of one world config at a time")
    n, size, hw = len(batch), cfg.size, cfg.frame_size
    frames = np.empty((n, hw, hw, 3), dtype=np.uint8)
    frames[:] = BACKGROUND
    # one flat list of stamps: (frame index, x, y, colour, shape)
    stamps = [(i, o.x, o.y, o.color, o.shape) for i, s in enumerate(batch) for o in s.objects]
    if stamps:
        idx = np.array([s[0] for s in stamps])
        xs = np.array([s[1] for s in stamps])
        ys = np.array([s[2] for s in stamps])
        colors = np.array([PALETTE[s[3]] for s in stamps], dtype=np.uint8)  # (S, 3)
        masks = np.stack([_SPRITES[(s[4], size)] for s in stamps])  # (S, s, s)
        ar = np.arange(size)
        rows = (ys[:, None] + ar)[:, :, None]  # (S, s, 1)
        cols = (xs[:, None] + ar)[:, None, :]  # (S, 1, s)
        window = frames[idx[:, None, None], rows, cols]  # (S, s, s, 3)
        frames[idx[:, None, None], rows, cols] = np.where(masks[..., None], colors[:, None, None], window)
    return frames[0] if single else frames


def state_to_dict(state: State) -> dict:
    """A JSON-ready view of a state (objects with colour, shape, position, velocity)."""
    return {
        "objects": [
            {"color": o.color, "shape": o.shape, "x": o.x, "y": o.y, "vx": o.vx, "vy": o.vy} for o in state.objects
        ],
        "agent": 0 if state.has_agent else None,
    }


def random_frames(rng: np.random.Generator, n: int, world: WorldConfig) -> tuple[np.ndarray, list[State]]:
    """``n`` random scenes (half with an agent) rendered: (n, H, W, 3) uint8 and their states."""
    states = [random_state(rng, world, agent=bool(rng.integers(2))) for _ in range(n)]
    return render(states), states
