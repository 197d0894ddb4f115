"""Blockwise (flash-style) attention in plain PyTorch: memory linear in length, exact, any device.

Queries and keys are cut into tiles; each (query tile, key tile) pair is scored on its own and
folded into a running output with an online softmax, whose log-sum-exp (LSE) is kept in fp32
whatever the input dtype. Nothing of size T x T is ever held: the forward keeps the output and the
LSE, and the backward recomputes each tile's probabilities from them (FlashAttention's recipe).
Tiles that the causal mask hides are never computed; on the CPU, tiles that the document mask
hides are skipped too (finding out on an accelerator would stall the host once per tile).

The same two tile loops serve one device (``blockwise_attention``) and every step of ring
attention (``ringworld.parallel.ring``), which calls them on the chunks it holds and receives.

Shapes: queries are ``(B, Hkv, G, L, hd)``, grouped under their shared K/V head (G = H / Hkv);
keys and values ``(B, Hkv, L, hd)``; segment ids ``(B, L)``, equal ids = same document.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

TILE = 512  # tokens per tile side: (B, H, 512, 512) fp32 scores per tile (bench/long_context.py)
MASKED = -1e30  # a hidden score: finite, so a tile with nothing visible never turns into NaN


def _tile_mask(
    q_seg: torch.Tensor | None,  # (B, lq) this tile's query segments
    k_seg: torch.Tensor | None,  # (B, lk)
    q_at: int,  # position of the tile's first query / key, on one axis when ``causal``
    k_at: int,
    lq: int,
    lk: int,
    causal: bool,
    device: torch.device,
) -> torch.Tensor | None:
    """(B or 1, 1, 1, lq, lk) bool, True where a query sees a key; None when it sees them all."""
    mask = None
    if causal and k_at + lk - 1 > q_at:  # the tile crosses the diagonal
        q_pos = torch.arange(q_at, q_at + lq, device=device)
        k_pos = torch.arange(k_at, k_at + lk, device=device)
        mask = (q_pos[:, None] >= k_pos[None])[None, None, None]  # (1, 1, 1, lq, lk)
    if q_seg is not None:
        same = (q_seg[:, :, None] == k_seg[:, None, :])[:, None, None]  # (B, 1, 1, lq, lk)
        mask = same if mask is None else mask & same
    return mask


def _hidden(mask: torch.Tensor | None) -> bool:
    """Whether a tile has nothing visible, asked only where asking is free (the CPU)."""
    return mask is not None and mask.device.type == "cpu" and not bool(mask.any())


def _scores(q: torch.Tensor, k: torch.Tensor, scale: float, mask: torch.Tensor | None) -> torch.Tensor:
    """q (B, Hkv, G, lq, hd), k (B, Hkv, lk, hd) -> fp32 scores (B, Hkv, G, lq, lk), hidden ones MASKED."""
    B, Hkv, G, lq, hd = q.shape
    s = q.float().reshape(B, Hkv, G * lq, hd) @ k.float().transpose(-1, -2)  # (B, Hkv, G*lq, lk)
    s = s.view(B, Hkv, G, lq, -1) * scale
    return s if mask is None else s.masked_fill(~mask, MASKED)


def merge(out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor, block_lse: torch.Tensor) -> None:
    """Fold a normalised partial output and its LSE into the running ones, in place (fp32).
    out, block_out (..., L, hd); lse, block_lse (..., L). A running LSE of -inf is an empty start."""
    new = torch.logaddexp(lse, block_lse)
    out.mul_((lse - new).exp_().unsqueeze(-1)).add_(block_out * (block_lse - new).exp().unsqueeze(-1))
    lse.copy_(new)


def tiles(length: int, tile: int) -> list[tuple[int, int]]:
    return [(at, min(at + tile, length)) for at in range(0, length, tile)]


def visible_tiles(
    Lq: int,
    Lk: int,
    q_seg: torch.Tensor | None,
    k_seg: torch.Tensor | None,
    causal: bool,
    tile: int,
    device: torch.device,
) -> Iterator[tuple[int, int, int, int, torch.Tensor | None]]:
    """(q0, q1, k0, k1, mask) of every tile pair with something visible, in the order both passes use."""
    for q0, q1 in tiles(Lq, tile):
        for k0, k1 in tiles(Lk, tile):
            if causal and k0 > q1 - 1:
                break  # this key tile and the rest of the row lie above the diagonal
            mask = _tile_mask(
                None if q_seg is None else q_seg[:, q0:q1],
                None if k_seg is None else k_seg[:, k0:k1],
                q0, k0, q1 - q0, k1 - k0, causal, device,
            )  # fmt: skip
            if not _hidden(mask):
                yield q0, q1, k0, k1, mask


def forward_blocks(
    q: torch.Tensor,  # (B, Hkv, G, Lq, hd)
    k: torch.Tensor,  # (B, Hkv, Lk, hd)
    v: torch.Tensor,  # (B, Hkv, Lk, hd)
    out: torch.Tensor,  # (B, Hkv, G, Lq, hd) fp32, running output (normalised), updated in place
    lse: torch.Tensor,  # (B, Hkv, G, Lq) fp32, running LSE (-inf: nothing yet), updated in place
    *,
    q_seg: torch.Tensor | None = None,  # (B, Lq)
    k_seg: torch.Tensor | None = None,  # (B, Lk)
    causal: bool,  # q and k are the same positions: query i sees keys 0..i
    scale: float,
    tile: int = TILE,
) -> None:
    """Attend q over one block of keys and values and fold the result into (out, lse)."""
    for q0, q1, k0, k1, mask in visible_tiles(q.size(3), k.size(2), q_seg, k_seg, causal, tile, q.device):
        s = _scores(q[..., q0:q1, :], k[:, :, k0:k1], scale, mask)  # (B, Hkv, G, lq, lk)
        block_lse = s.logsumexp(-1)  # (B, Hkv, G, lq)
        p = (s - block_lse.unsqueeze(-1)).exp_()
        B, Hkv, G, lq, lk = p.shape
        block_out = (p.view(B, Hkv, G * lq, lk) @ v[:, :, k0:k1].float()).view(B, Hkv, G, lq, -1)
        merge(out[..., q0:q1, :], lse[..., q0:q1], block_out, block_lse)


def backward_blocks(
    q: torch.Tensor,  # (B, Hkv, G, Lq, hd)
    k: torch.Tensor,  # (B, Hkv, Lk, hd)
    v: torch.Tensor,  # (B, Hkv, Lk, hd)
    lse: torch.Tensor,  # (B, Hkv, G, Lq) fp32, the final LSE of every query
    d_out: torch.Tensor,  # (B, Hkv, G, Lq, hd) gradient of the output
    delta: torch.Tensor,  # (B, Hkv, G, Lq) fp32, rowsum(d_out * out)
    dq: torch.Tensor,  # (B, Hkv, G, Lq, hd) fp32, accumulated in place
    dk: torch.Tensor,  # (B, Hkv, Lk, hd) fp32, accumulated in place
    dv: torch.Tensor,  # (B, Hkv, Lk, hd) fp32, accumulated in place
    *,
    q_seg: torch.Tensor | None = None,
    k_seg: torch.Tensor | None = None,
    causal: bool,
    scale: float,
    tile: int = TILE,
) -> None:
    """Add this block's share of the gradients of q, k and v, recomputing its probabilities."""
    for q0, q1, k0, k1, mask in visible_tiles(q.size(3), k.size(2), q_seg, k_seg, causal, tile, q.device):
        qt, kt, vt = q[..., q0:q1, :].float(), k[:, :, k0:k1].float(), v[:, :, k0:k1].float()
        B, Hkv, G, lq, hd = qt.shape
        p = (_scores(qt, kt, scale, mask) - lse[..., q0:q1, None]).exp_()  # (B, Hkv, G, lq, lk)
        go = d_out[..., q0:q1, :].float().reshape(B, Hkv, G * lq, hd)
        p2 = p.view(B, Hkv, G * lq, -1)  # (B, Hkv, G*lq, lk)
        dv[:, :, k0:k1] += p2.transpose(-1, -2) @ go  # sums over the G query heads of a K/V head
        dp = (go @ vt.transpose(-1, -2)).view(p.shape)
        ds = p.mul_(dp - delta[..., q0:q1, None]).mul_(scale).view(B, Hkv, G * lq, -1)
        dq[..., q0:q1, :] += (ds @ kt).view(B, Hkv, G, lq, hd)
        dk[:, :, k0:k1] += ds.transpose(-1, -2) @ qt.reshape(B, Hkv, G * lq, hd)


def group_heads(x: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """(B, H, L, hd) -> (B, Hkv, G, L, hd): each query head under the K/V head it shares."""
    B, H, L, hd = x.shape
    return x.reshape(B, kv_heads, H // kv_heads, L, hd)


class _Blockwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, segment_ids, tile):
        B, H, L, hd = q.shape
        scale = hd**-0.5
        q5 = group_heads(q, k.size(1))  # (B, Hkv, G, L, hd)
        out = torch.zeros(q5.shape, device=q.device, dtype=torch.float32)
        lse = torch.full(q5.shape[:-1], float("-inf"), device=q.device, dtype=torch.float32)
        forward_blocks(q5, k, v, out, lse, q_seg=segment_ids, k_seg=segment_ids, causal=True, scale=scale, tile=tile)
        out = out.to(q.dtype)
        ctx.save_for_backward(q5, k, v, out, lse, segment_ids)
        ctx.scale, ctx.tile = scale, tile
        return out.view(B, H, L, hd)

    @staticmethod
    def backward(ctx, d_out):
        q5, k, v, out, lse, segment_ids = ctx.saved_tensors
        d_out = d_out.reshape(out.shape)
        delta = (d_out.float() * out.float()).sum(-1)  # (B, Hkv, G, L)
        dq = torch.zeros(q5.shape, device=q5.device, dtype=torch.float32)
        dk = torch.zeros(k.shape, device=k.device, dtype=torch.float32)
        dv = torch.zeros(v.shape, device=v.device, dtype=torch.float32)
        backward_blocks(
            q5, k, v, lse, d_out, delta, dq, dk, dv,
            q_seg=segment_ids, k_seg=segment_ids, causal=True, scale=ctx.scale, tile=ctx.tile,
        )  # fmt: skip
        B, Hkv, G, L, hd = q5.shape
        return dq.to(q5.dtype).view(B, Hkv * G, L, hd), dk.to(k.dtype), dv.to(v.dtype), None, None


@torch.compiler.disable  # Python tile loops: nothing for the compiler to fuse, and shapes vary
def blockwise_attention(
    q: torch.Tensor,  # (B, H, L, hd)
    k: torch.Tensor,  # (B, Hkv, L, hd)
    v: torch.Tensor,  # (B, Hkv, L, hd)
    segment_ids: torch.Tensor | None = None,  # (B, L): attention stays within equal ids
    *,
    tile: int = TILE,
) -> torch.Tensor:  # (B, H, L, hd)
    """Causal (and document-masked) attention with memory linear in L, exact to fp32 rounding."""
    return _Blockwise.apply(q, k.contiguous(), v.contiguous(), segment_ids, tile)
