"""Loss balanced between modalities (LWM): the mean loss of text targets and of vision targets,
combined with fixed weights, so hundreds of image codes per caption do not drown the language.

Means are taken over the whole global batch: a step's token counts per modality are known before
any forward (they come from the packed weights), so gradient accumulation and data parallelism
give the same loss and gradients as one big batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ringworld.data.packing import IGNORE, PackedBatch
from ringworld.tokens.vocab import MODALITY_TEXT, MODALITY_VISION, Vocab

MODALITIES = {"text": MODALITY_TEXT, "vision": MODALITY_VISION}


@dataclass(frozen=True)
class LossWeights:
    text: float = 0.5
    vision: float = 0.5

    def __post_init__(self) -> None:
        if self.text < 0 or self.vision < 0 or self.text + self.vision <= 0:
            raise ValueError(f"loss weights must be >= 0 and not both 0, got text={self.text} vision={self.vision}")

    def as_tensor(self, device: torch.device) -> torch.Tensor:
        w = torch.zeros(max(MODALITIES.values()) + 1, device=device)
        for name, m in MODALITIES.items():
            w[m] = getattr(self, name)
        return w  # (M,)


def modality_counts(batch: PackedBatch) -> torch.Tensor:
    """(M,) float64 sum of target weights per modality: the denominators of the balanced loss."""
    m = len(MODALITIES)
    return torch.zeros(m, dtype=torch.float64, device=batch.weights.device).index_add_(
        0, batch.modality.flatten(), batch.weights.flatten().double()
    )


def modality_sums(logits: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """(M,) fp32 sum of weighted cross-entropy per modality. logits (B, T, V), any dtype."""
    ce = F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(), ignore_index=IGNORE, reduction="none")
    m = len(MODALITIES)
    return torch.zeros(m, dtype=torch.float32, device=ce.device).index_add(
        0, batch.modality.flatten(), ce * batch.weights.flatten()
    )


def balanced_loss(sums: torch.Tensor, counts: torch.Tensor, weights: LossWeights) -> torch.Tensor:
    """sum_m w_m * sums_m / counts_m over the modalities present in ``counts``, weights renormalised to
    those present (a batch with no vision targets is all text loss, not half of it)."""
    w = weights.as_tensor(sums.device)
    w = torch.where(counts > 0, w, torch.zeros_like(w))  # (M,)
    per_modality = sums / counts.clamp(min=1).to(sums.dtype)
    return (w * per_modality).sum() / w.sum().clamp(min=torch.finfo(w.dtype).tiny)


def check_has_targets(counts: torch.Tensor, weights: LossWeights) -> None:
    """Raise unless some modality with a non-zero loss weight has targets (counts on the CPU)."""
    if not any(counts[m] > 0 and getattr(weights, name) > 0 for name, m in MODALITIES.items()):
        raise ValueError("no target in the batch carries a loss weight; check the loss masks and loss weights")


def per_modality_means(sums: torch.Tensor, counts: torch.Tensor) -> dict[str, float]:
    """{'text': mean loss, 'vision': mean loss}; NaN for a modality with no targets."""
    return {
        name: (float(sums[m]) / float(counts[m])) if counts[m] > 0 else float("nan") for name, m in MODALITIES.items()
    }


def most_frequent_code(batch: PackedBatch, vocab: Vocab) -> int | None:
    """The visual code (not id) most often a target in ``batch``: a frame's background. None without vision targets."""
    targets = batch.targets[batch.weights > 0]
    codes = targets[(targets >= vocab.code_ids.start) & (targets < vocab.code_ids.stop)] - vocab.code_ids.start
    return int(codes.bincount().argmax()) if codes.numel() else None


def weigh_background(batch: PackedBatch, code_id: int, weight: float) -> PackedBatch:
    """``batch`` with the loss weight of every target ``code_id`` multiplied by ``weight``.

    A frame is mostly background: at full weight its cells are nearly all of the vision loss, and
    the model first learns to paint background everywhere and objects nowhere (issue #11)."""
    if weight == 1:
        return batch
    weights = torch.where(batch.targets == code_id, batch.weights * weight, batch.weights)
    return replace(batch, weights=weights)


def background_logit_bias(vocab_size: int, code_id: int | None, weight: float) -> torch.Tensor | None:
    """(V,) what to add to the logits of a model trained with ``weigh_background``: a target class
    weighted ``w`` is learned with probability ``w x`` its true odds, so ``log(1 / w)`` on its logit
    restores them (logit adjustment, Menon et al. 2021). None when there is nothing to undo."""
    if code_id is None or weight == 1:
        return None
    bias = torch.zeros(vocab_size)
    bias[code_id] = -math.log(weight)
    return bias
