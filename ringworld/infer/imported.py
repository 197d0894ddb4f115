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
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from ringworld.device import default_device
from ringworld.documents import Document, Image, Text
from ringworld.extras import transformers_module
from ringworld.families import CANNOT_DRAW, TEXT_ONLY, Family, family_named
from ringworld.infer.engine import Engine, Prefill
from ringworld.infer.sampling import Sampling
from ringworld.infer.tasks import DEFAULT_GUIDANCE, DRAWING
from ringworld.tokens.family import HF_DIR, FamilyCodec
from ringworld.train.checkpoint import load_model, read_config, resolve_checkpoint

CAPTION_QUESTION = "Describe the image."  # what an imported model is asked for a caption


@dataclass
class ImportedModel:
    engine: Engine
    codec: FamilyCodec
    family: Family
    checkpoint: Path

    @cached_property
    def processor(self):
        """The folder's processor (its image processor and tokenizer, and the chat template it writes a turn
        holding an image with), or None for a family without one (LWM-Text)."""
        try:
            return transformers_module().AutoProcessor.from_pretrained(self.checkpoint / "tokenizer" / HF_DIR)
        except (OSError, ValueError, TypeError):
            return None

    @property
    def frame_size(self) -> int:
        """The side of the square frames its VQ tokenizer takes."""
        if self.codec.vision is None:
            raise ValueError(TEXT_ONLY.format(family=self.family.name))
        return self.codec.vision.frame_size


def load_imported(
    run: str | Path,
    device: str | torch.device | None = None,
    *,
    compile: bool = False,
    prefill: Prefill | None = None,
) -> ImportedModel:
    """The latest checkpoint of a run made by ``ringworld import hf`` (or trained from one), on ``device``;
    ``prefill`` says how its engine prefills prompts (e.g. ``ringworld.parallel.context.RingPrefill``)."""
    device = torch.device(device) if device is not None else default_device()
    model, checkpoint = load_model(run, device)
    config = read_config(checkpoint)
    if "hf" not in config:
        raise ValueError(f"{checkpoint} was not imported from a Hugging Face folder; load it with load_world_model")
    family = family_named(config["hf"]["family"])
    codec = FamilyCodec.load(checkpoint / "tokenizer" / HF_DIR, device=device)
    bias, layout = None, codec.layout
    if not family.draws and len(codec.layout.code_ids):  # it reads images but never writes one: as in transformers,
        bias = torch.zeros(model.cfg.vocab_size)  # no code is ever picked, and no image span opens
        bias[torch.from_numpy(codec.layout.code_ids)] = float("-inf")
        layout = codec.layout.without_images()
    engine = Engine(model, codec, compile=compile, prefill=prefill, logit_bias=bias, layout=layout)
    return ImportedModel(engine, codec, family, checkpoint)


def is_imported(run: str | Path) -> bool:
    """Whether the latest checkpoint of ``run`` (or the checkpoint ``run``) came from ``ringworld import hf``."""
    return "hf" in read_config(resolve_checkpoint(run))


def drawing_prompts(im: ImportedModel, caption: str) -> tuple[np.ndarray, np.ndarray]:
    """The prompt that opens an image after ``caption``, and the opening alone, which guidance mixes against."""
    if im.codec.vision is None:
        raise ValueError(TEXT_ONLY.format(family=im.family.name))
    if not im.family.draws:
        raise ValueError(CANNOT_DRAW.format(family=im.family.name))
    if not caption.strip():
        raise ValueError('the prompt is empty: give a caption, e.g. "a red apple"')
    opening = np.asarray(im.codec.layout.image_open, dtype=np.int64)
    return np.r_[im.codec.prompt([Text(caption)]), opening], np.r_[im.codec.layout.bos, opening]


def drawing_budget(im: ImportedModel) -> int:
    """New ids that make one image: its rows and closing ids (the grammar forces every one after the codes)."""
    return im.codec.layout.body_length + len(im.codec.layout.image_close)


def image_of(im: ImportedModel, tokens: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: the image that ``tokens``, generated after a drawing prompt, write."""
    opening = np.asarray(im.codec.layout.image_open, dtype=np.int64)
    (image,) = [s for s in im.codec.decode(np.r_[opening, tokens]) if isinstance(s, Image)]
    return im.codec.vision.decode(image.codes[None])[0]


def draw(
    im: ImportedModel, prompts: Sequence[str], *, guidance: float = DEFAULT_GUIDANCE, sampling: Sampling = DRAWING
) -> np.ndarray:
    """One image per prompt, (N, H, W, 3) uint8: the prompt, the family's image opening, then its rows
    under its grammar, guided against the opening alone (classifier-free guidance, in one batch)."""
    pairs = [drawing_prompts(im, p) for p in prompts]
    made = im.engine.generate(
        [cond for cond, _ in pairs],
        max_new_tokens=drawing_budget(im),
        sampling=sampling,
        guidance=guidance,
        uncond_prompts=[uncond for _, uncond in pairs],
    )
    return np.stack([image_of(im, tokens) for tokens in made.tokens])


def question_prompt(im: ImportedModel, image: np.ndarray | None, question: str) -> np.ndarray:
    """The ids that ask ``question`` (about ``image``, if given) and leave the answer to the model. A
    question that writes the family's image-opening token itself is refused: it would open an image."""
    ids = im.codec.prompt(chat(im, image, question))
    layout = im.codec.layout
    if layout.image_open and int(np.sum(ids == layout.image_open[0])) != (image is not None):
        name = im.codec.tokenizer.convert_ids_to_tokens(layout.image_open[0])
        raise ValueError(f"the question holds {name}, which opens an image in {im.family.name}'s layout; leave it out")
    return ids


def answer_text(im: ImportedModel, tokens: np.ndarray) -> str:
    """The text the model wrote in ``tokens``."""
    return " ".join(s.text for s in im.codec.decode(tokens) if isinstance(s, Text)).strip()


def reply(
    im: ImportedModel, images: Sequence[np.ndarray], questions: Sequence[str], *, max_new_tokens: int = 256
) -> list[str]:
    """Greedy answers to a question about each image ((H, W, 3) uint8, the VQ tokenizer's frame size):
    the image, then the question, in the folder's chat template where it has one; each answer at most
    ``max_new_tokens`` ids, and what fits in the model's context."""
    prompts = [question_prompt(im, image, q) for image, q in zip(images, questions, strict=True)]
    return answers(im, prompts, max_new_tokens=max_new_tokens)


def answers(
    im: ImportedModel, prompts: Sequence[np.ndarray], *, max_new_tokens: int, batch_size: int = 64
) -> list[str]:
    """The greedy answer to each prompt, ``batch_size`` prompts a forward: at most ``max_new_tokens`` ids,
    and what fits in the model's context."""
    out = []
    for start in range(0, len(prompts), batch_size):
        part = prompts[start : start + batch_size]
        made = im.engine.generate(part, max_new_tokens=min(max_new_tokens, im.engine.room(part)))
        out += [answer_text(im, tokens) for tokens in made.tokens]
    return out


def chat(im: ImportedModel, image: np.ndarray | None, question: str) -> Document:
    """The user's turn holding ``image`` (if any) and ``question``, up to the assistant's turn, in the
    folder's chat template where it has one: its processor's for a turn with an image (or any turn, if
    the processor has one), else its tokenizer's; without a template, the image then the question."""
    seen = [] if image is None else [Image(pixels=image)]
    processor = im.processor
    if processor is not None and getattr(processor, "chat_template", None) and hasattr(processor, "image_token"):
        content = [{"type": "image"}] if image is not None else []
        message = [{"role": "user", "content": [*content, {"type": "text", "text": question}]}]
        text = processor.apply_chat_template(message, add_generation_prompt=True, tokenize=False)
    elif image is None and im.codec.tokenizer.chat_template:
        message = [{"role": "user", "content": question}]
        text = im.codec.tokenizer.apply_chat_template(message, add_generation_prompt=True, tokenize=False)
    else:
        return [*seen, Text(question)]
    text = text.removeprefix(im.codec.tokenizer.bos_token or "")  # the codec writes the family's begin id itself
    if image is None:
        return [Text(text)]
    before, _, after = text.partition(processor.image_token)
    return [*([Text(before)] if before else []), *seen, *([Text(after)] if after else [])]
