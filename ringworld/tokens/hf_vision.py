"""A public family's VQ tokenizer behind ringworld's vision-tokenizer interface, run by transformers.

ringworld's own tokenizer (``ringworld.tokens.vision``, an FSQ autoencoder) and these share one shape
(``ringworld.tokens.codec.VisionLike``): ``frame_size``, ``grid``, ``num_codes``, ``encode`` uint8
frames (N, H, W, 3) -> codes (N, h, w) and ``decode`` back. Nothing of the VQ models is written again
here: the folder's own image processor scales the pixels, transformers' ``Emu3VQVAE`` or
``ChameleonVQVAE`` turns them into codes, and Emu3's decoder and processor turn codes back into pixels.
Chameleon's decoder was never released: its ``decode`` refuses with a message that says so.

    vision = HFVision.load(checkpoint / "tokenizer" / "hf")
    codes = vision.encode(frames)      # (N, h, w), what transformers' vqmodel.encode gives
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ringworld.extras import transformers_module
from ringworld.families import CANNOT_DRAW, TEXT_ONLY, Family, family_named

VISION_WEIGHTS = "vision.safetensors"  # beside the HF folder's config.json: the VQ tokenizer's weights


class HFVision:
    """The VQ tokenizer of an Emu3 or Chameleon folder, for square frames of ``frame_size`` pixels."""

    def __init__(self, family: Family, vq: torch.nn.Module, processor, frame_size: int) -> None:
        self.family, self.vq, self.processor = family, vq.eval(), processor
        self.factor = 2 ** (len(vq.config.channel_multiplier) - 1)  # pixels per code, each way
        if frame_size % self.factor:
            raise ValueError(
                f"frame_size {frame_size} is not a multiple of {self.factor}, the pixels per code of "
                f"{family.name}'s VQ tokenizer"
            )
        self.frame_size = frame_size
        self.grid = (frame_size // self.factor, frame_size // self.factor)
        config = vq.config
        self.num_codes = int(config.codebook_size if family.name == "emu3" else config.num_embeddings)

    @classmethod
    def load(cls, hf_dir: str | Path, *, frame_size: int | None = None, device: str | torch.device = "cpu") -> HFVision:
        """The VQ tokenizer an imported run keeps in ``hf_dir`` (``ringworld.jobs.hf``); ``frame_size``
        defaults to what the family's processor makes (its crop, or the side of its least pixel count)."""
        transformers = transformers_module()
        hf_dir = Path(hf_dir)
        config = transformers.AutoConfig.from_pretrained(hf_dir)
        family = family_named(config.model_type)
        if family.vision is None:
            raise ValueError(TEXT_ONLY.format(family=family.name))
        if not (hf_dir / VISION_WEIGHTS).is_file():
            raise ValueError(f"{hf_dir} has no {VISION_WEIGHTS}: import the model with `ringworld import hf` again")
        vq = getattr(transformers, family.vision)(config.vq_config)
        vq.load_state_dict(load_file(hf_dir / VISION_WEIGHTS))
        processor = transformers.AutoImageProcessor.from_pretrained(hf_dir)
        return cls(family, vq.to(device), processor, frame_size or _processor_side(processor, family))

    @property
    def device(self) -> torch.device:
        return next(self.vq.parameters()).device

    @torch.no_grad()
    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 frames -> (N, h, w) int64 codes, as transformers encodes them."""
        n = len(pixels)
        if pixels.shape[1:] != (self.frame_size, self.frame_size, 3):
            raise ValueError(
                f"frames are {pixels.shape[1:]}; this tokenizer takes ({self.frame_size}, {self.frame_size}, 3)"
            )
        scaled = self.processor(list(pixels), return_tensors="pt", **_as_given(self.family))
        values = scaled["pixel_values"].to(self.device, self.vq.dtype)
        if self.family.name == "emu3":
            codes = torch.stack(self.vq.encode(values, scaled["image_sizes"]).image_tokens)
        else:
            codes = self.vq.encode(values).image_tokens
        return codes.reshape(n, *self.grid).long().cpu().numpy()

    @torch.no_grad()
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(N, h, w) codes -> (N, H, W, 3) uint8 frames (Emu3; Chameleon has no decoder)."""
        if not self.family.draws:
            raise ValueError(CANNOT_DRAW.format(family=self.family.name))
        values = self.vq.decode(torch.as_tensor(np.asarray(codes), dtype=torch.long, device=self.device))
        images = self.processor.postprocess(list(values.float().cpu()), input_data_format="channels_first")
        return np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images["pixel_values"]])


def _as_given(family: Family) -> dict:
    """Processor options that take frames at the size given: no resize (and for Chameleon, no crop)."""
    return {"do_resize": False} | ({"do_center_crop": False} if family.name == "chameleon" else {})


def _processor_side(processor, family: Family) -> int:
    if family.name == "chameleon":
        return int(processor.crop_size["height"])
    return int(round(processor.min_pixels**0.5))
