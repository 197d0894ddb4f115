"""A run imported from a public family (``ringworld import hf``), ready to generate.

    im = load_imported("runs/emu3")
    images = draw(im, ["a red apple"])                   # (1, H, W, 3), Emu3 only
    answers = reply(im, [image], ["what is this?"])      # every family that reads images

Its engine follows the family's token layout (``ringworld.tokens.family``). Where the family cannot
draw (Chameleon: no VQ decoder was released), its logits never pick an image code, as in transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ringworld.device import default_device
from ringworld.documents import Document, Image, Text
from ringworld.extras import transformers_module
from ringworld.families import CANNOT_DRAW, Family, family_named
from ringworld.infer.engine import Engine
from ringworld.infer.sampling import Sampling
from ringworld.infer.tasks import DEFAULT_GUIDANCE, DRAWING
from ringworld.tokens.family import FamilyCodec
from ringworld.train.checkpoint import load_model, read_config


@dataclass
class ImportedModel:
    engine: Engine
    codec: FamilyCodec
    family: Family
    checkpoint: Path

    @property
    def frame_size(self) -> int:
        """The side of the square frames its VQ tokenizer takes."""
        if self.codec.vision is None:
            raise ValueError(f"{self.family.name} models read and write text only: they take no images")
        return self.codec.vision.frame_size


def load_imported(run: str | Path, device: str | torch.device | None = None, *, compile: bool = False) -> ImportedModel:
    """The latest checkpoint of a run made by ``ringworld import hf`` (or trained from one), on ``device``."""
    device = torch.device(device) if device is not None else default_device()
    model, checkpoint = load_model(run, device)
    config = read_config(checkpoint)
    if "hf" not in config:
        raise ValueError(f"{checkpoint} was not imported from a Hugging Face folder; load it with load_world_model")
    family = family_named(config["hf"]["family"])
    codec = FamilyCodec.load(checkpoint / "tokenizer" / "hf", device=device)
    bias = None
    if not family.draws and len(codec.layout.code_ids):  # it reads images but never writes one
        bias = torch.zeros(model.cfg.vocab_size)
        bias[torch.from_numpy(codec.layout.code_ids)] = float("-inf")
    return ImportedModel(Engine(model, codec, compile=compile, logit_bias=bias), codec, family, checkpoint)


def draw(
    im: ImportedModel, prompts: Sequence[str], *, guidance: float = DEFAULT_GUIDANCE, sampling: Sampling = DRAWING
) -> np.ndarray:
    """One image per prompt, (N, H, W, 3) uint8: the prompt, the family's image opening, then its rows
    under its grammar, guided against the opening alone (classifier-free guidance, in one batch)."""
    if not im.family.draws:
        raise ValueError(CANNOT_DRAW.format(family=im.family.name))
    layout = im.codec.layout
    opening = np.asarray(layout.image_open, dtype=np.int64)
    cond = [np.concatenate([im.codec.prompt([Text(p)]), opening]) for p in prompts]
    uncond = [np.concatenate([[layout.bos], opening])] * len(prompts)
    made = im.engine.generate(
        cond,
        max_new_tokens=layout.body_length + len(layout.image_close),
        sampling=sampling,
        guidance=guidance,
        uncond_prompts=uncond,
    )
    codes = []
    for tokens in made.tokens:
        (image,) = [s for s in im.codec.decode(np.concatenate([opening, tokens])) if isinstance(s, Image)]
        codes.append(image.codes)
    return im.codec.vision.decode(np.stack(codes))


def reply(
    im: ImportedModel, images: Sequence[np.ndarray], questions: Sequence[str], *, max_new_tokens: int = 256
) -> list[str]:
    """Greedy answers to a question about each image ((H, W, 3) uint8, the VQ tokenizer's frame size):
    the image, then the question, in the folder's chat template where it has one; each answer at most
    ``max_new_tokens`` ids, and what fits in the model's context."""
    prompts = [im.codec.prompt(chat(im, image, question)) for image, question in zip(images, questions, strict=True)]
    made = im.engine.generate(prompts, max_new_tokens=min(max_new_tokens, im.engine.room(prompts)))
    return [" ".join(s.text for s in im.codec.decode(t) if isinstance(s, Text)).strip() for t in made.tokens]


def chat(im: ImportedModel, image: np.ndarray, question: str) -> Document:
    """The user's turn holding ``image`` and ``question``, as the folder's processor writes it with its chat
    template (up to the assistant's turn), else the image then the question."""
    template = _chat_template(im)
    if template is None:
        return [Image(pixels=image), Text(question)]
    processor, marker = template
    message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(message, add_generation_prompt=True, tokenize=False)
    before, _, after = text.partition(marker)
    bos = im.codec.tokenizer.bos_token or ""
    before = before.removeprefix(bos)  # the codec writes the family's begin id itself
    return [*([Text(before)] if before else []), Image(pixels=image), *([Text(after)] if after else [])]


def _chat_template(im: ImportedModel):
    """(the folder's processor, its image placeholder), if it has a chat template."""
    transformers = transformers_module()
    folder = im.checkpoint / "tokenizer" / "hf"
    try:
        processor = transformers.AutoProcessor.from_pretrained(folder)
    except (OSError, ValueError, TypeError):
        return None
    if getattr(processor, "chat_template", None) is None or not hasattr(processor, "image_token"):
        return None
    return processor, processor.image_token
