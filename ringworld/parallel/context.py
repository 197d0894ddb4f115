"""Context parallelism applied from outside a plain model: rows split across the ranks of a group.

Each rank holds a zigzag shard of every row (``ringworld.parallel.ring``). The model is not told:
its caller shards the ids, segment ids and positions, and hands it a ``RingMask``, so that every
layer's attention goes round the ring instead of staying on the rank.

    mask = RingMask(zigzag_shard(seg, 1, group), group)
    logits = model(zigzag_shard(ids, 1, group), positions=zigzag_shard(pos, 1, group), mask=mask)

``RingPrefill`` does the same for a generation prompt: the engine is given it in place of its
one-process prefill, and every rank's KV cache ends up holding the whole prompt, so decoding then
runs on each rank alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ringworld.model.transformer import KVCache, Transformer
from ringworld.parallel.ring import ring_attention, zigzag_shard, zigzag_unshard


@dataclass
class RingMask:
    """Rows are zigzag shards; attention (causal, within equal segment ids) goes round ``group``."""

    segment_ids: torch.Tensor | None  # (B, L) this rank's shard; None: one document a row
    group: dist.ProcessGroup

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return ring_attention(q, k, v, segment_ids=self.segment_ids, group=self.group)


class RingPrefill:
    """A prompt prefill through ring attention over ``group`` (see ``ringworld.infer.engine.Prefill``)."""

    def __init__(self, group: dist.ProcessGroup) -> None:
        self.group = group
        self.row_multiple = 2 * dist.get_world_size(group)  # a row splits into 2N equal chunks

    def __call__(
        self,
        model: Transformer,
        ids: torch.Tensor,  # (R, L) whole rows, L a multiple of row_multiple
        segment_ids: torch.Tensor | None,  # (R, L)
        positions: torch.Tensor,  # (R, L)
        cache: KVCache,
    ) -> torch.Tensor:  # (R, V) logits of each row's last token, on every rank
        group = self.group
        shard = lambda t: zigzag_shard(t, 1, group)  # noqa: E731
        slots = torch.arange(ids.size(1), device=ids.device)  # (L,)
        mine = shard(slots[None])[0]  # (L/N,) the slots of this rank's tokens
        if segment_ids is None:  # every rank passes the same segments to the ring's kernels
            segment_ids = torch.zeros_like(ids)
        mask = RingMask(shard(segment_ids), group)
        logits = model(shard(ids), positions=shard(positions), cache=cache.at(mine, None), mask=mask)
        for layer in cache.k + cache.v:  # (R, Hkv, S, hd): this rank wrote its shard; gather the rest
            layer.index_copy_(2, slots, zigzag_unshard(layer.index_select(2, mine), 2, group))
        last = logits[:, -1].float().contiguous()  # the last token ends chunk 2N-1: group rank 0's
        dist.broadcast(last, src=dist.get_global_rank(group, 0), group=group)
        return last
