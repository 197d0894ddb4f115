"""How the next token is picked from a batch of logits: greedy, or sampled with temperature, top-k
and top-p; and classifier-free guidance, which mixes a row's logits with its unconditional twin's."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked: greedy at ``temperature == 0``, else sampled from the
    temperature-scaled distribution cut to the ``top_k`` most likely ids and the smallest set
    holding ``top_p`` of the mass (0 and 1 switch those off)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")


GREEDY = Sampling(temperature=0.0)


def sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) -> ids (B,). Disallowed ids carry -inf and are never picked."""
    if sampling.temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / sampling.temperature
    if sampling.top_k:
        kth = logits.topk(min(sampling.top_k, logits.size(-1)), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop an id once the mass before it already reaches top_p (the most likely id always stays)
        drop = probs.cumsum(-1) - probs >= sampling.top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + scale * (cond - uncond)`` (scale 1 = cond alone).
    Masked ids (-inf in both) stay -inf."""
    mixed = uncond + scale * (cond - uncond)
    return mixed.masked_fill(torch.isinf(cond) & (cond < 0), float("-inf"))
