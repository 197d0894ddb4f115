"""Documents: the one currency between the world, real data, the tokenizers and the model.

A document is a list of segments. Every segment says whether the model should learn to
predict it (``loss``); a QA document, for instance, takes loss only on the answer.

Images and videos carry either ``pixels`` (uint8 RGB, as the world renders them or as they
are read from disk) or ``codes`` (integer grids from the vision tokenizer), never both.
The codec turns pixels into codes with the vision tokenizer when it meets them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ACTIONS: tuple[str, ...] = ("up", "down", "left", "right", "stay")


@dataclass
class Text:
    text: str
    loss: bool = True


def _check_one_of(pixels: np.ndarray | None, codes: np.ndarray | None, what: str) -> None:
    if (pixels is None) == (codes is None):
        raise ValueError(f"{what} needs exactly one of pixels= or codes=")


@dataclass
class Image:
    pixels: np.ndarray | None = None  # (H, W, 3) uint8
    codes: np.ndarray | None = None  # (h, w) int
    loss: bool = True

    def __post_init__(self) -> None:
        _check_one_of(self.pixels, self.codes, "Image")
        if self.pixels is not None and (self.pixels.ndim != 3 or self.pixels.shape[-1] != 3):
            raise ValueError(f"Image pixels must be (H, W, 3) uint8, got shape {self.pixels.shape}")
        if self.codes is not None and self.codes.ndim != 2:
            raise ValueError(f"Image codes must be (h, w), got shape {self.codes.shape}")


@dataclass
class Video:
    pixels: np.ndarray | None = None  # (T, H, W, 3) uint8
    codes: np.ndarray | None = None  # (T, h, w) int
    # actions[t] is taken between frame t and frame t + 1 (so len == T - 1), or None
    actions: list[str] | None = None
    loss: bool = True
    # notes[t]: text said between frame t and frame t + 1, after actions[t] ("" says nothing); or None.
    # World prediction and action documents say there how each object moves (``TaskConfig.say_motion``)
    notes: list[str] | None = None

    def __post_init__(self) -> None:
        _check_one_of(self.pixels, self.codes, "Video")
        if self.pixels is not None and (self.pixels.ndim != 4 or self.pixels.shape[-1] != 3):
            raise ValueError(f"Video pixels must be (T, H, W, 3) uint8, got shape {self.pixels.shape}")
        if self.codes is not None and self.codes.ndim != 3:
            raise ValueError(f"Video codes must be (T, h, w), got shape {self.codes.shape}")
        if self.actions is not None:
            if len(self.actions) != self.num_frames - 1:
                raise ValueError(
                    f"a video of {self.num_frames} frames takes {self.num_frames - 1} actions "
                    f"(one between each pair of frames), got {len(self.actions)}"
                )
            _check_actions(self.actions)
        if self.notes is not None and len(self.notes) != self.num_frames - 1:
            raise ValueError(
                f"a video of {self.num_frames} frames takes {self.num_frames - 1} notes "
                f'(one between each pair of frames, "" for none), got {len(self.notes)}'
            )

    @property
    def num_frames(self) -> int:
        return len(self.pixels if self.pixels is not None else self.codes)


@dataclass
class Action:
    actions: list[str] = field(default_factory=list)
    loss: bool = True

    def __post_init__(self) -> None:
        _check_actions(self.actions)


def _check_actions(actions: list[str]) -> None:
    for a in actions:
        if a not in ACTIONS:
            raise ValueError(f"unknown action {a!r}; actions are {', '.join(ACTIONS)}")


Segment = Text | Image | Video | Action
Document = list[Segment]
