"""RingAttention (Liu et al., LWM): exact causal attention over a sequence split across processes.

The N ranks of a context-parallel group each hold a slice of every row in **zigzag** order: the
row is cut into 2N chunks and rank r holds chunks r and 2N-1-r, so every rank has the same share
of causal work. Each rank keeps its queries; keys, values and segment ids travel round the ring
(``batch_isend_irecv``), the next block in flight while the current one is computed. Partial
outputs are merged by their log-sum-exp in fp32 whatever the input dtype, so the error does not
grow with the ring size. The backward pass sends keys and values round once more, and the
gradients of keys and values travel with them until they are back home.

Which chunk pairs are computed follows from the zigzag alone: with its own block a rank does two
causal diagonals and one full pair; with any other block exactly two full pairs; the rest is
hidden by the causal mask and skipped. Within a pair, ``ringworld.model.blockwise`` tiles the
work (linear memory) and adds the document mask of packed rows.

    q, k, v = (zigzag_shard(t, 2, group) for t in (q, k, v))      # (B, heads, T/N, hd) each
    y = ring_attention(q, k, v, segment_ids=zigzag_shard(seg, 1, group), group=group)
    y = zigzag_unshard(y, 2, group)                                  # (B, H, T, hd)
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

from ringworld.model.blockwise import TILE, backward_blocks, forward_blocks, group_heads

FULL, CAUSAL = False, True


def _group(group: dist.ProcessGroup | None) -> dist.ProcessGroup:
    return group if group is not None else dist.group.WORLD


def zigzag_shard(x: torch.Tensor, dim: int, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """This rank's zigzag slice of ``x`` along ``dim``: chunks r and 2N-1-r of 2N (no communication)."""
    group = _group(group)
    n, r = dist.get_world_size(group), dist.get_rank(group)
    if x.size(dim) % (2 * n):
        raise ValueError(
            f"a length of {x.size(dim)} does not split into 2 x {n} equal zigzag chunks; make the sequence "
            f"length a multiple of {2 * n} (2 x the context-parallel size)"
        )
    chunks = x.chunk(2 * n, dim)
    return torch.cat([chunks[r], chunks[2 * n - 1 - r]], dim)


def zigzag_unshard(x: torch.Tensor, dim: int, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """The whole sequence back from every rank's zigzag slice (an all-gather; differentiable)."""
    group = _group(group)
    n = dist.get_world_size(group)
    parts = dist_fn.all_gather(x.contiguous(), group=group)  # rank r: [chunk r, chunk 2N-1-r]
    firsts = [p.chunk(2, dim)[0] for p in parts]
    seconds = [p.chunk(2, dim)[1] for p in reversed(parts)]
    return torch.cat(firsts + seconds, dim) if n > 1 else x


def visible_pairs(rank: int, source: int, n: int) -> list[tuple[int, int, bool]]:
    """(query half, key half, causal) for the chunk pairs of ``rank``'s queries against ``source``'s
    keys that the causal mask leaves anything of (halves: 0 = chunk r, 1 = chunk 2N-1-r)."""
    chunk = {0: rank, 1: 2 * n - 1 - rank}
    key_chunk = {0: source, 1: 2 * n - 1 - source}
    pairs = []
    for a in (0, 1):
        for b in (0, 1):
            if key_chunk[b] < chunk[a]:
                pairs.append((a, b, FULL))
            elif key_chunk[b] == chunk[a]:
                pairs.append((a, b, CAUSAL))
    return pairs


class _Ring:
    """Point-to-point traffic to the next rank and from the previous one."""

    def __init__(self, group: dist.ProcessGroup) -> None:
        self.group = group
        n, r = dist.get_world_size(group), dist.get_rank(group)
        self.next = dist.get_global_rank(group, (r + 1) % n)
        self.prev = dist.get_global_rank(group, (r - 1) % n)
        self.pending: list = []

    def start(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Send ``tensors`` on and start receiving the previous rank's, which are returned (fill later)."""
        received = [torch.empty_like(t) for t in tensors]
        ops = [dist.P2POp(dist.isend, t, self.next, self.group) for t in tensors]
        ops += [dist.P2POp(dist.irecv, t, self.prev, self.group) for t in received]
        self.pending = dist.batch_isend_irecv(ops)
        return received

    def wait(self) -> None:
        for request in self.pending:
            request.wait()
        self.pending = []


def _halves(x: torch.Tensor | None, dim: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    return (None, None) if x is None else x.chunk(2, dim)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, segment_ids, group, tile):
        n, r = dist.get_world_size(group), dist.get_rank(group)
        B, H, L, hd = q.shape
        scale = hd**-0.5
        q5 = group_heads(q, k.size(1))  # (B, Hkv, G, L, hd)
        out = torch.zeros(q5.shape, device=q.device, dtype=torch.float32)
        lse = torch.full(q5.shape[:-1], float("-inf"), device=q.device, dtype=torch.float32)
        q_halves, out_halves, lse_halves = q5.chunk(2, 3), out.chunk(2, 3), lse.chunk(2, -1)
        q_seg = _halves(segment_ids, 1)
        ring = _Ring(group)
        block = [k, v] + ([segment_ids] if segment_ids is not None else [])
        for step in range(n):
            incoming = ring.start(block) if step < n - 1 else None  # the next block moves while this one is used
            kh, vh = block[0].chunk(2, 2), block[1].chunk(2, 2)
            k_seg = _halves(block[2] if segment_ids is not None else None, 1)
            for a, b, causal in visible_pairs(r, (r - step) % n, n):
                forward_blocks(
                    q_halves[a], kh[b], vh[b], out_halves[a], lse_halves[a],
                    q_seg=q_seg[a], k_seg=k_seg[b], causal=causal, scale=scale, tile=tile,
                )  # fmt: skip
            if incoming is not None:
                ring.wait()
                block = incoming
        out = out.to(q.dtype)
        ctx.save_for_backward(q5, k, v, out, lse, segment_ids)
        ctx.group, ctx.scale, ctx.tile = group, scale, tile
        return out.view(B, H, L, hd)

    @staticmethod
    def backward(ctx, d_out):
        q5, k, v, out, lse, segment_ids = ctx.saved_tensors
        group = ctx.group
        n, r = dist.get_world_size(group), dist.get_rank(group)
        d_out = d_out.reshape(out.shape)
        delta = (d_out.float() * out.float()).sum(-1)  # (B, Hkv, G, L)
        dq = torch.zeros(q5.shape, device=q5.device, dtype=torch.float32)
        halves = {
            "q": q5.chunk(2, 3), "lse": lse.chunk(2, -1), "d_out": d_out.chunk(2, 3),
            "delta": delta.chunk(2, -1), "dq": dq.chunk(2, 3),
        }  # fmt: skip
        q_seg = _halves(segment_ids, 1)
        ring = _Ring(group)
        block = [k, v] + ([segment_ids] if segment_ids is not None else [])
        # the gradients of the block in hand; they travel with it and come home after n hops
        dk = torch.zeros(k.shape, device=k.device, dtype=torch.float32)
        dv = torch.zeros(v.shape, device=v.device, dtype=torch.float32)
        for step in range(n):
            incoming = ring.start(block) if step < n - 1 else None
            kh, vh = block[0].chunk(2, 2), block[1].chunk(2, 2)
            dkh, dvh = dk.chunk(2, 2), dv.chunk(2, 2)
            k_seg = _halves(block[2] if segment_ids is not None else None, 1)
            for a, b, causal in visible_pairs(r, (r - step) % n, n):
                backward_blocks(
                    halves["q"][a], kh[b], vh[b], halves["lse"][a], halves["d_out"][a], halves["delta"][a],
                    halves["dq"][a], dkh[b], dvh[b],
                    q_seg=q_seg[a], k_seg=k_seg[b], causal=causal, scale=ctx.scale, tile=ctx.tile,
                )  # fmt: skip
            if incoming is not None:
                ring.wait()
                block = incoming
            if n > 1:  # pass the gradients on with their block (the last hop brings each one home)
                dk, dv = ring.start([dk, dv])
                ring.wait()
        B, Hkv, G, L, hd = q5.shape
        return dq.to(q5.dtype).view(B, Hkv * G, L, hd), dk.to(k.dtype), dv.to(v.dtype), None, None, None


@torch.compiler.disable  # point-to-point traffic and Python loops: run eagerly inside compiled blocks
def ring_attention(
    q: torch.Tensor,  # (B, H, L, hd): this rank's zigzag slice of the queries
    k: torch.Tensor,  # (B, Hkv, L, hd), H a multiple of Hkv
    v: torch.Tensor,  # (B, Hkv, L, hd)
    *,
    segment_ids: torch.Tensor | None = None,  # (B, L) this rank's slice: attention stays within equal ids
    group: dist.ProcessGroup | None = None,  # the context-parallel group (default: every process)
    tile: int = TILE,
) -> torch.Tensor:  # (B, H, L, hd): this rank's slice of the output
    """Causal attention of the whole sequence, computed on zigzag shards (see the module docstring)."""
    if q.size(2) % 2:
        raise ValueError(f"a zigzag shard holds two equal chunks; got a local length of {q.size(2)}")
    if segment_ids is not None:
        segment_ids = segment_ids.contiguous()
    return _RingAttention.apply(q, k.contiguous(), v.contiguous(), segment_ids, _group(group), tile)
