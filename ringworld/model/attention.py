"""One attention entry for the decoder: dense causal, or causal within documents for packed rows.

Packed rows carry ``segment_ids``: a token may attend to earlier tokens of its own document only.
How that mask is applied is chosen by what was measured to be faster (``bench/attention.py``):

| where                          | kernel                                              |
| ------------------------------ | --------------------------------------------------- |
| no segments                    | SDPA, ``is_causal=True`` (flash kernels on CPU/GPU) |
| segments, accelerator          | FlexAttention with a BlockMask (skips empty blocks) |
| segments, CPU, training        | SDPA with a boolean mask (Flex has no CPU backward) |
| segments, CPU, no grad, long   | FlexAttention (compiled), faster from 2K tokens on  |

Ring attention (context parallel, #5) plugs in here too, so the model never knows which it got.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

# CPU FlexAttention forward beat SDPA-with-mask from this many tokens on (bench/attention.py)
FLEX_MIN_LEN_CPU = 2048

_compiled_flex = None


def _flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask) -> torch.Tensor:
    global _compiled_flex
    if _compiled_flex is None:  # eager flex materialises the whole score matrix: always compile it
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex(q, k, v, block_mask=block_mask, enable_gqa=q.size(1) != k.size(1))


@dataclass
class DocumentMask:
    """Causal-within-document masking for one batch of rows, built once and shared by every layer."""

    segment_ids: torch.Tensor  # (B, T) int; equal ids = same document
    kernel: str  # "flex" or "sdpa"
    mask: torch.Tensor | BlockMask  # (B, 1, T, T) bool for sdpa, a BlockMask for flex


def use_flex(device: torch.device, seq_len: int, grad: bool) -> bool:
    if device.type == "cpu":
        return not grad and seq_len >= FLEX_MIN_LEN_CPU
    return True


def document_mask(segment_ids: torch.Tensor | None, *, grad: bool | None = None) -> DocumentMask | None:
    """The mask for packed rows (None when there are no segments: plain causal attention)."""
    if segment_ids is None:
        return None
    B, T = segment_ids.shape
    grad = torch.is_grad_enabled() if grad is None else grad
    if use_flex(segment_ids.device, T, grad):

        def same_document_causal(b, h, q_idx, kv_idx):
            return (segment_ids[b, q_idx] == segment_ids[b, kv_idx]) & (q_idx >= kv_idx)

        block_mask = create_block_mask(same_document_causal, B, None, T, T, device=segment_ids.device)
        return DocumentMask(segment_ids, "flex", block_mask)
    causal = torch.ones(T, T, dtype=torch.bool, device=segment_ids.device).tril()
    same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]  # (B, 1, T, T)
    return DocumentMask(segment_ids, "sdpa", same & causal)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: DocumentMask | None) -> torch.Tensor:
    """Causal attention. q: (B, H, T, hd); k, v: (B, Hkv, T, hd) with H a multiple of Hkv -> (B, H, T, hd)."""
    gqa = q.size(1) != k.size(1)
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    if mask.kernel == "flex":
        return _flex(q, k, v, mask.mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.mask, enable_gqa=gqa)
