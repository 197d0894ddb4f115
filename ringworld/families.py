"""The public model families ringworld loads, and what each one is: one table for the decoder's mapping
(``ringworld.model.hf``), the VQ tokenizers (``ringworld.tokens.hf_vision``) and import/export
(``ringworld.jobs.hf``).

| family | HF class | its VQ tokenizer |
| --- | --- | --- |
| llama | ``LlamaForCausalLM`` (LWM-Text) | none: text only |
| qwen3 | ``Qwen3ForCausalLM`` | none: text only |
| emu3 | ``Emu3ForConditionalGeneration`` | ``Emu3VQVAE``: encodes and decodes (draws) |
| chameleon | ``ChameleonForConditionalGeneration`` | ``ChameleonVQVAE``: encodes only (no decoder was released) |
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """One public model family: its HF class and where its parts sit in its state dict."""

    name: str  # HF model_type
    architecture: str  # HF class name, as config.json's "architectures" names it
    prefix: str  # of the decoder's layers, embedding and final norm ("model.", "model.text_model.")
    vision: str | None  # HF class of its VQ tokenizer, if it has one
    vision_prefix: str | None  # of the VQ tokenizer's weights
    draws: bool  # whether its VQ tokenizer decodes codes to pixels


FAMILIES = {
    f.name: f
    for f in (
        Family("llama", "LlamaForCausalLM", "model.", None, None, draws=False),
        Family("qwen3", "Qwen3ForCausalLM", "model.", None, None, draws=False),
        Family("emu3", "Emu3ForConditionalGeneration", "model.text_model.", "Emu3VQVAE", "model.vqmodel.", draws=True),
        Family(
            "chameleon", "ChameleonForConditionalGeneration", "model.", "ChameleonVQVAE", "model.vqmodel.", draws=False
        ),
    )
}
TEXT_ONLY = "{family} models read and write text only: they have no VQ tokenizer, so they take no images"
CANNOT_DRAW = (
    "{family} cannot draw: its VQ decoder was never released, so its image codes have no pixels; "
    "it reads images (captions, questions) but writes text only"
)


def family_named(model_type: str) -> Family:
    """The family of an HF ``model_type``; a ValueError naming the known ones for any other."""
    if model_type not in FAMILIES:
        known = ", ".join(f"{f.architecture} ({f.name})" for f in FAMILIES.values())
        raise ValueError(f"HF model type {model_type!r} is not one ringworld can load; it loads {known}")
    return FAMILIES[model_type]
