"""One attention entry for the decoder: dense causal, or causal within documents for packed rows.

Packed rows carry ``segment_ids``: a token may attend to earlier tokens of its own document only.
Three kernels do that exactly; which one runs follows measurements (``bench/attention.py``,
table in docs/results.md):

| kernel        | how                                                            | picked for        |
| ------------- | -------------------------------------------------------------- | ----------------- |
| ``documents`` | gather each document into a row of its own (rows bucketed by   | CPU, rows >= 512  |
|               | length), plain causal SDPA, scatter back: no masked-out work   |                   |
| ``mask``      | SDPA with a (B, 1, T, T) boolean mask                          | CPU, short rows   |
| ``flex``      | FlexAttention with a BlockMask (compiled, skips empty blocks)  | accelerators      |
| ``blockwise`` | tiled online softmax in plain PyTorch (``model/blockwise.py``) | asked for         |

On a 2-core CPU, ``documents`` is 1.3x (512 tokens) to 13x (4K tokens of world documents) faster
than the mask in training; compiled Flex lost to both there (and has no CPU backward). Rows that
are one document each (or no ``segment_ids``) take plain causal SDPA.

A mask is anything with ``attend(q, k, v)``. The model builds a ``DocumentMask`` from its rows'
segment ids unless its caller hands it another one: ``ringworld.parallel.context.RingMask`` makes every
layer's attention go round a context-parallel ring when the rows are zigzag shards of longer rows,
so the model never knows which it got.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from ringworld.model.blockwise import blockwise_attention

KERNELS = ("documents", "flex", "mask", "blockwise")
DOCUMENTS_MIN_LEN_CPU = 512  # below this the boolean mask was as fast or faster (bench/attention.py)
BUCKET = 64  # documents are gathered into rows padded to a multiple of this many tokens

_compiled_flex = None
_compiled_block_mask = None


def _flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask) -> torch.Tensor:
    global _compiled_flex
    if _compiled_flex is None:  # eager flex materialises the whole score matrix: always compile it
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex(q, k, v, block_mask=block_mask, enable_gqa=q.size(1) != k.size(1))


def _block_mask_builder(device: torch.device):
    """``create_block_mask``, compiled on accelerators: eager, it materialises the full (B, T, T) mask."""
    global _compiled_block_mask
    if device.type == "cpu":
        return create_block_mask
    if _compiled_block_mask is None:
        _compiled_block_mask = torch.compile(create_block_mask)
    return _compiled_block_mask


@dataclass
class DocumentBuckets:
    """Where each document's tokens sit once documents are gathered into rows of their own.

    Documents are grouped by length rounded up to ``BUCKET``; bucket ``b`` is an ``(n_b, L_b)`` block
    of slots, and the blocks are laid end to end in one slot axis of length S.
    """

    slots: torch.Tensor  # (S,) token (flat index into B*T) in each slot; past a document's end, its first token
    real: torch.Tensor  # (S,) bool, the slot holds a token of its document (not padding)
    scatter: torch.Tensor  # (B*T,) the one real slot of each token
    shapes: list[tuple[int, int]]  # (n_b, L_b) of each bucket


class _Gather(torch.autograd.Function):
    """``x.index_select(0, index)`` whose backward is a gather too (``inverse``, zeroed where
    ``keep`` is False) instead of index_select's accumulating scatter, which is slow on CPU.

    Exact here because every token has exactly one slot that can carry gradient. The other copies
    sit in padding slots after their document's end, and their gradient is exactly zero for two
    reasons together: no real query attends to them (causal mask), and the padding queries that
    do get zero output gradient, because the gather back to tokens (``keep=real``) drops them.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor, keep: torch.Tensor | None):
        ctx.save_for_backward(inverse, keep)
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        inverse, keep = ctx.saved_tensors
        grad = grad.index_select(0, inverse)
        if keep is not None:
            grad = grad * keep.view(-1, *([1] * (grad.dim() - 1)))
        return grad, None, None, None


class Mask(Protocol):
    """How one batch of rows attends, built once per forward and shared by every layer."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: (B, H, T, hd); k, v: (B, Hkv, T, hd) with H a multiple of Hkv -> (B, H, T, hd)."""
        ...


@dataclass
class DocumentMask:
    """Causal attention within documents, by one of the kernels above."""

    segment_ids: torch.Tensor | None  # (B, T) int; equal ids = same document; None: one document a row
    kernel: str  # one of KERNELS
    # per kernel: buckets, a BlockMask, a (B, 1, T, T) bool tensor, or nothing (blockwise)
    mask: DocumentBuckets | BlockMask | torch.Tensor | None

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.kernel == "documents":
            return _by_document(q, k, v, self.mask)
        if self.kernel == "flex":
            return _flex(q, k, v, self.mask)
        if self.kernel == "blockwise":
            return blockwise_attention(q, k, v, self.segment_ids)
        return _sdpa(q, k, v, attn_mask=self.mask)


def pick_kernel(device: torch.device, seq_len: int) -> str:
    if device.type != "cpu":
        return "flex"
    return "documents" if seq_len >= DOCUMENTS_MIN_LEN_CPU else "mask"


def document_runs(segment_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Documents are maximal runs of one segment id in a row (a row's padding is one more run):
    (R,) the flat index (into B*T) of each run's first token, and (R,) its length."""
    B, T = segment_ids.shape
    change = torch.ones(B, T, dtype=torch.bool, device=segment_ids.device)
    change[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    starts = change.flatten().nonzero().squeeze(1)
    return starts, torch.diff(starts, append=torch.tensor([B * T], device=segment_ids.device))


def document_buckets(segment_ids: torch.Tensor) -> DocumentBuckets:
    """Documents are maximal runs of one segment id in a row (a row's padding is one more run)."""
    B, T = segment_ids.shape
    device = segment_ids.device
    starts, lengths = document_runs(segment_ids)
    sizes = (lengths + BUCKET - 1) // BUCKET * BUCKET  # (R,) padded length of each document
    slots, real, shapes = [], [], []
    for size in sizes.unique().tolist():
        runs = (sizes == size).nonzero().squeeze(1)
        j = torch.arange(size, device=device)  # (L,)
        inside = j[None] < lengths[runs, None]  # (n, L)
        slots.append((starts[runs, None] + torch.where(inside, j[None], 0)).flatten())
        real.append(inside.flatten())
        shapes.append((len(runs), size))
    slots_t, real_t = torch.cat(slots), torch.cat(real)
    scatter = torch.empty(B * T, dtype=torch.long, device=device)
    scatter[slots_t[real_t]] = torch.arange(len(slots_t), device=device)[real_t]
    return DocumentBuckets(slots_t, real_t, scatter, shapes)


# Its bucket shapes change every batch: compiled, it would recompile each time, so it runs eagerly
# between the compiled parts of a block.
@torch.compiler.disable
def _by_document(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, buckets: DocumentBuckets) -> torch.Tensor:
    B, H, T, hd = q.shape
    sizes = [n * L for n, L in buckets.shapes]

    def bucketed(x: torch.Tensor) -> list[torch.Tensor]:
        tokens = x.transpose(1, 2).reshape(B * T, x.size(1), hd)  # (B*T, heads, hd)
        slots = _Gather.apply(tokens, buckets.slots, buckets.scatter, None)  # (S, heads, hd)
        return [
            s.view(n, L, x.size(1), hd).transpose(1, 2)
            for s, (n, L) in zip(slots.split(sizes), buckets.shapes, strict=True)
        ]

    outputs = []
    for qb, kb, vb in zip(bucketed(q), bucketed(k), bucketed(v), strict=True):  # (n, heads, L, hd) each
        # right-padded documents under a causal mask: no real query sees a padding slot
        y = _sdpa(qb, kb, vb, is_causal=True)  # (n, H, L, hd)
        outputs.append(y.transpose(1, 2).reshape(-1, H, hd))  # (n*L, H, hd)
    y = _Gather.apply(torch.cat(outputs), buckets.scatter, buckets.slots, buckets.real)  # (B*T, H, hd)
    return y.view(B, T, H, hd).transpose(1, 2)


def document_mask(segment_ids: torch.Tensor | None, *, kernel: str | None = None) -> DocumentMask | None:
    """The mask for packed rows; None (plain causal attention) without segments or, on the CPU, when
    every row is one document (an accelerator would have to sync to find out: callers that know
    pass None). ``kernel`` overrides the measured choice (tests, benchmarks, long rows)."""
    if kernel == "blockwise":
        return DocumentMask(segment_ids, kernel, None)
    if segment_ids is None:
        return None
    if segment_ids.device.type == "cpu" and bool((segment_ids == segment_ids[:, :1]).all()):
        return None
    B, T = segment_ids.shape
    kernel = kernel or pick_kernel(segment_ids.device, T)
    if kernel == "documents":
        return DocumentMask(segment_ids, kernel, document_buckets(segment_ids))
    if kernel == "flex":

        def same_document_causal(b, h, q_idx, kv_idx):
            return (segment_ids[b, q_idx] == segment_ids[b, kv_idx]) & (q_idx >= kv_idx)

        block_mask = _block_mask_builder(segment_ids.device)(
            same_document_causal, B, None, T, T, device=segment_ids.device
        )
        return DocumentMask(segment_ids, kernel, block_mask)
    if kernel != "mask":
        raise ValueError(f"unknown attention kernel {kernel!r}; kernels are {', '.join(KERNELS)}")
    causal = torch.ones(T, T, dtype=torch.bool, device=segment_ids.device).tril()
    same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]  # (B, 1, T, T)
    return DocumentMask(segment_ids, kernel, same & causal)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
    """SDPA with grouped K/V heads. On CUDA the fused kernels take GQA only in half precision and
    without a mask; otherwise K/V are repeated, rather than fall back to the math kernel's O(T^2)
    memory. The CPU's flash kernel takes GQA as it is."""
    groups = q.size(1) // k.size(1)
    if groups > 1 and q.device.type != "cpu" and (q.dtype == torch.float32 or "attn_mask" in kwargs):
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=q.size(1) != k.size(1), **kwargs)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Mask | None) -> torch.Tensor:
    """Causal attention (under ``mask``, if any). q: (B, H, T, hd); k, v: (B, Hkv, T, hd) with H a
    multiple of Hkv -> (B, H, T, hd)."""
    return _sdpa(q, k, v, is_causal=True) if mask is None else mask.attend(q, k, v)


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Attention of new tokens over a KV cache. q: (B, H, T, hd); k, v: (B, Hkv, S, hd); visible:
    (B, 1, T, S) bool, True where a query may look (its own row's earlier slots) -> (B, H, T, hd)."""
    return _sdpa(q, k, v, attn_mask=visible)
