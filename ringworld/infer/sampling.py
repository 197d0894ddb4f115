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


def probabilities(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """logits (B, V) -> (B, V) the distribution ``sampling`` draws from: temperature-scaled, cut to
    its top-k and top-p. Disallowed ids (-inf) get 0."""
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
    return logits.softmax(-1)


def draw(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One id per row of probs (B, V), by inverting its cumulative distribution at uniform (B,) in
    [0, 1): id i comes with probability p_i, and an id of probability 0 never does."""
    cdf = probs.cumsum(-1)  # (B, V)
    ids = torch.searchsorted(cdf, uniform[:, None] * cdf[:, -1:], right=True).squeeze(-1)
    # u * total may round up to total: then the last id with any mass, not one past it
    last = torch.where(probs > 0, torch.arange(probs.size(-1), device=probs.device), -1).amax(-1)
    return torch.minimum(ids, last)


def sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) -> ids (B,), one uniform draw of ``generator`` per row. Disallowed ids carry
    -inf and are never picked."""
    if sampling.temperature == 0:
        return logits.argmax(-1)
    probs = probabilities(logits, sampling)
    return draw(probs, torch.rand(len(probs), generator=generator, device=probs.device))


def sample_rows(logits: torch.Tensor, samplings: list[Sampling], generators: list[torch.Generator]) -> torch.Tensor:
    """logits (k, V) -> ids (k,), row i sampled with its own ``samplings[i]`` (temperature > 0) and
    ``generators[i]``: the ids ``sample`` gives each row alone, in a few batched ops (rows sharing
    settings share them)."""
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(samplings):
        groups.setdefault((s.temperature, s.top_k, s.top_p), []).append(i)
    if len(groups) == 1:
        probs = probabilities(logits, samplings[0])
    else:
        probs = torch.empty_like(logits, dtype=torch.float32)
        for rows in groups.values():
            probs[rows] = probabilities(logits[rows], samplings[rows[0]])
    uniform = torch.cat([torch.rand(1, generator=g, device=probs.device) for g in generators])
    return draw(probs, uniform)


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + scale * (cond - uncond)`` (scale 1 = cond alone).
    Masked ids (-inf in both) stay -inf."""
    mixed = uncond + scale * (cond - uncond)
    return mixed.masked_fill(torch.isinf(cond) & (cond < 0), float("-inf"))
