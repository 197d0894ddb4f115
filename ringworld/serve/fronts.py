"""What the server asks of a model, in one shape for ringworld's world models and for runs imported from
a public family (``ringworld import hf``): the prompts of a chat and of a drawing, and what to make of
the tokens that come back. The HTTP app (``ringworld.serve.app``) sees only a ``Front``.

    front = load_front("runs/emu3")                     # WorldFront or FamilyFront, by the run's config
    prompt = front.question(image, "what is this?")     # ids; the worker's batch decodes the answer
    text = front.answer(prompt, tokens)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ringworld.documents import Image, Text, Video
from ringworld.infer import imported, tasks
from ringworld.infer.imported import ImportedModel
from ringworld.infer.tasks import WorldModel
from ringworld.world.captions import CAPTION_PROMPT


def asks_caption(text: str) -> bool:
    """Whether a message that holds an image asks for its caption: no text, or "describe ..."."""
    return not text or text.lower().startswith(("describe", "caption"))


@dataclass
class Drawing:
    """What one image request sends the worker, for each image."""

    prompt: np.ndarray
    uncond: np.ndarray  # guidance mixes against this prompt
    max_new_tokens: int
    stop: tuple[int, ...] | None = None  # None: the model's end id


class WorldFront:
    """A ringworld world model: it answers about images and videos, draws images and videos, and rolls
    its world forward (``wm``, for the video and rollout endpoints)."""

    def __init__(self, wm: WorldModel) -> None:
        self.wm, self.engine, self.checkpoint = wm, wm.engine, wm.checkpoint
        self.frame_size = wm.frame_size
        self.eos = wm.codec.vocab.special("<|eos|>")

    def question(self, media: np.ndarray | None, text: str) -> np.ndarray:
        """The prompt that asks ``text`` about ``media`` ((H, W, 3) image, (T, H, W, 3) video, or None);
        media with no text, or with "describe ...", asks for its caption."""
        if media is None:
            return tasks.question_prompt(self.wm, [Text(text)])
        seen = Image(pixels=media) if media.ndim == 3 else Video(pixels=media)
        if asks_caption(text):
            text = CAPTION_PROMPT
        return tasks.question_prompt(self.wm, [seen, Text(text)])

    def answer(self, prompt: np.ndarray, tokens: np.ndarray) -> str:
        return tasks.answer_text(self.wm, prompt, tokens)

    def drawing(self, caption: str) -> Drawing:
        prompt, uncond = tasks.drawing_prompts(self.wm, caption, Image)
        budget = tasks.drawing_budget(self.wm, Image, 1)
        return Drawing(prompt, uncond, budget["max_new_tokens"], budget["stop"])

    def image(self, prompt: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        return tasks.decoded_media(self.wm, np.r_[prompt, tokens], Image)


class FamilyFront:
    """A run imported from a public family: it answers about one image at a time, and draws where the
    family can (Emu3); it makes no videos (``wm`` is None)."""

    wm = None

    def __init__(self, im: ImportedModel) -> None:
        self.family, self.engine, self.checkpoint = im.family, im.engine, im.checkpoint
        self.model = im
        self.eos = im.codec.layout.eos

    @property
    def frame_size(self) -> int:
        """The side of the frames it reads (a ValueError for a family that takes no images)."""
        return self.model.frame_size

    def question(self, media: np.ndarray | None, text: str) -> np.ndarray:
        if media is not None and media.ndim == 4:
            raise ValueError(f"{self.family.name} models read images, not videos: send a PNG or a JPEG")
        if media is not None and asks_caption(text):
            text = imported.CAPTION_QUESTION
        return imported.question_prompt(self.model, media, text)

    def answer(self, prompt: np.ndarray, tokens: np.ndarray) -> str:
        return imported.answer_text(self.model, tokens)

    def drawing(self, caption: str) -> Drawing:
        prompt, uncond = imported.drawing_prompts(self.model, caption)
        return Drawing(prompt, uncond, imported.drawing_budget(self.model))

    def image(self, prompt: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        return imported.image_of(self.model, tokens)


Front = WorldFront | FamilyFront


def front_of(model: WorldModel | ImportedModel) -> Front:
    return FamilyFront(model) if isinstance(model, ImportedModel) else WorldFront(model)


def load_front(run: str | Path, device: str | torch.device | None = None, *, compile: bool = False) -> Front:
    """The latest checkpoint of ``run``, ringworld's own or imported, ready to serve."""
    if imported.is_imported(run):
        return FamilyFront(imported.load_imported(run, device, compile=compile))
    return WorldFront(tasks.load_world_model(run, device, compile=compile))
