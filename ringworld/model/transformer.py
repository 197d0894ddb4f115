"""The ringworld decoder: one Llama-style transformer over the shared text/vision/action vocabulary.

RMSNorm, rotary positions (configurable theta, for context growth), grouped-query attention,
SwiGLU, optional QK-norm (Chameleon's fix for unstable mixed-modal training) and tied or untied
embeddings. A plain ``nn.Module``: parallelism is applied to it from ``ringworld.parallel``.

Two options exist to hold public checkpoints exactly (``ringworld.model.hf``): ``qk_norm_per_head``
is Chameleon's QK-norm (a LayerNorm with each head's own gain and bias), and ``post_norm`` is
Chameleon-30B's norm placement (each block's norms on its branches' outputs: ``x + norm(f(x))``).

    logits = Transformer(cfg)(ids, segment_ids=seg, positions=pos)   # (B, T) -> (B, T, vocab)

For generation a ``KVCache`` holds every layer's keys and values; a forward given one writes its
tokens' keys and values into the cache and attends to the cached slots it is told it may see.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ringworld.model.attention import Mask, attention, cached_attention, document_mask


@dataclass
class ModelConfig:
    vocab_size: int
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    ffn_dim: int = 704
    rope_theta: float = 10_000.0
    max_seq_len: int = 1024  # the context trained for; RoPE itself has no length limit
    norm_eps: float = 1e-5
    qk_norm: bool = True
    qk_norm_per_head: bool = False  # QK-norm as Chameleon's LayerNorm, a gain and bias per head; else a shared RMSNorm
    post_norm: bool = False  # norm each branch's output, x + norm(f(x)) (Chameleon's swin_norm); else its input
    tie_embeddings: bool = False
    init_std: float = 0.02

    def __post_init__(self) -> None:
        problems = []
        if self.dim % self.n_heads:
            problems.append(f"dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        elif self.head_dim % 2:
            problems.append(f"head_dim {self.head_dim} is odd; rotary positions need it even")
        if self.n_heads % self.n_kv_heads:
            problems.append(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if min(self.vocab_size, self.dim, self.n_layers, self.ffn_dim, self.max_seq_len) < 1:
            problems.append("vocab_size, dim, n_layers, ffn_dim and max_seq_len must be positive")
        if self.rope_theta <= 0:
            problems.append(f"rope_theta must be positive (got {self.rope_theta})")
        if self.qk_norm_per_head and not self.qk_norm:
            problems.append("qk_norm_per_head is a form of QK-norm: set qk_norm too")
        if problems:
            raise ValueError("bad model config: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def from_depth(
        cls, depth: int, vocab_size: int, *, aspect: int = 64, head_dim: int = 64, **overrides
    ) -> ModelConfig:
        """nanochat's one dial: width = depth x aspect, heads of ``head_dim``, K/V heads the largest
        divisor of the heads up to half of them, SwiGLU hidden = 8/3 x width rounded up to a multiple
        of 64 (Llama's rule)."""
        dim = depth * aspect
        n_heads = max(1, dim // head_dim)
        n_kv_heads = max([k for k in range(1, n_heads // 2 + 1) if n_heads % k == 0], default=1)
        ffn = 64 * math.ceil(8 * dim / 3 / 64)
        shape = dict(dim=dim, n_layers=depth, n_heads=n_heads, n_kv_heads=n_kv_heads, ffn_dim=ffn)
        return cls(vocab_size=vocab_size, **{**shape, **overrides})

    @classmethod
    def preset(cls, name: str, vocab_size: int, **overrides) -> ModelConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; presets are {', '.join(PRESETS)}")
        depth, kwargs = PRESETS[name]
        return cls.from_depth(depth, vocab_size, **{**kwargs, **overrides})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; known keys are {sorted(known)}")
        return cls(**d)

    # cost --------------------------------------------------------------------------------
    def num_params(self, *, embedding: bool = True) -> int:
        kv = self.n_kv_heads * self.head_dim
        attn = self.dim * (self.dim + 2 * kv) + self.dim * self.dim
        mlp = 3 * self.dim * self.ffn_dim
        block = attn + mlp + 2 * self.dim + self.qk_norm_params()
        head = 0 if self.tie_embeddings else self.vocab_size * self.dim
        total = self.n_layers * block + self.dim + head
        return total + self.vocab_size * self.dim if embedding else total

    def qk_norm_params(self) -> int:
        """Weights of one block's QK-norms: two shared gains, or a gain and bias per query and K/V head."""
        if not self.qk_norm:
            return 0
        if self.qk_norm_per_head:
            return 2 * (self.n_heads + self.n_kv_heads) * self.head_dim
        return 2 * self.head_dim

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward) at causal context ``seq_len``.

        6 per weight of every matmul (the LM head included, the embedding lookup not) plus
        attention scores and values: 2 matmuls x 2 FLOPs x 3 (fwd+bwd) x dim x seq_len / 2 (causal).
        """
        kv = self.n_kv_heads * self.head_dim
        matmul = self.n_layers * (self.dim * (self.dim + 2 * kv) + self.dim * self.dim + 3 * self.dim * self.ffn_dim)
        matmul += self.vocab_size * self.dim
        return 6 * matmul + 6 * self.n_layers * self.dim * seq_len


# name: (depth, overrides of from_depth)
PRESETS: dict[str, tuple[int, dict]] = {
    "tiny": (4, {}),  # 256 wide, ~3M weights: the CPU demo, minutes
    "small": (8, {}),  # 512 wide, ~25M
    "base": (16, {}),  # 1024 wide, ~200M
    "7b": (32, {"aspect": 128, "head_dim": 128, "n_kv_heads": 32, "ffn_dim": 11008}),  # Llama-2-7B shape, planning
}


# weights on disk ------------------------------------------------------------------------------
def stored_weights(cfg: ModelConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A full state dict as files store it: a tied head is the embedding, so it is stored once."""
    return {k: v for k, v in weights.items() if not (cfg.tie_embeddings and k == "head.weight")}


def full_weights(cfg: ModelConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``stored_weights`` made whole again (an empty dict stays empty: a rank that receives them)."""
    if cfg.tie_embeddings and "embed.weight" in weights:
        return {**weights, "head.weight": weights["embed.weight"]}
    return weights


# rotary positions --------------------------------------------------------------------------
def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (B, T) int -> cos, sin (B, T, head_dim) fp32, halves repeated (rotate-half layout)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions[..., None].float() * inv_freq  # (B, T, hd/2)
    angles = torch.cat([angles, angles], dim=-1)  # (B, T, hd)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, H, hd) rotated by cos/sin (B, T, hd)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos[:, :, None] + rotated * sin[:, :, None]).to(x.dtype)


# generation cache ---------------------------------------------------------------------------
@dataclass
class LayerCache:
    """One layer's view of a ``KVCache`` for one forward."""

    k: torch.Tensor  # (B, Hkv, S, hd)
    v: torch.Tensor
    slots: torch.Tensor  # (T,) long: where this forward's tokens go, or (B, T): each row's own
    visible: torch.Tensor | None  # (B, 1, T, S') bool: what each new token attends to among slots 0..S'-1

    def write(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v (B, Hkv, T, hd) at ``slots``."""
        if self.slots.dim() == 1:
            self.k.index_copy_(2, self.slots, k.to(self.k.dtype))
            self.v.index_copy_(2, self.slots, v.to(self.v.dtype))
            return
        rows = torch.arange(len(self.slots), device=self.slots.device)[:, None]  # (B, 1)
        self.k[rows, :, self.slots] = k.transpose(1, 2).to(self.k.dtype)  # (B, T, Hkv, hd)
        self.v[rows, :, self.slots] = v.transpose(1, 2).to(self.v.dtype)

    def seen(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values of slots 0..S'-1, which ``visible`` ranges over."""
        n = self.visible.size(-1)
        return self.k[:, :, :n], self.v[:, :, :n]


@dataclass
class KVCache:
    """Preallocated keys and values of every layer, ``S`` slots per row.

    Slots are shared by all rows (rows of different prompt lengths are left-padded and their
    padding slots are simply never visible), or given per row (continuous batching: every row at
    its own length). ``at(slots, visible)`` says where the next forward's
    tokens go and what they see; the caller (``ringworld.infer.engine``) keeps that bookkeeping.
    ``visible=None`` is a prefill: the new tokens attend only to each other, under the forward's own
    causal and document masks (whichever kernel that picks, ring attention included), so no
    (T, S) mask is ever built.
    """

    k: list[torch.Tensor]  # per layer (B, Hkv, S, hd)
    v: list[torch.Tensor]
    slots: torch.Tensor | None = None
    visible: torch.Tensor | None = None

    @classmethod
    def allocate(
        cls, cfg: ModelConfig, batch: int, length: int, *, device: torch.device | str, dtype: torch.dtype
    ) -> KVCache:
        shape = (batch, cfg.n_kv_heads, length, cfg.head_dim)
        return cls(
            [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)],
            [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)],
        )

    @property
    def length(self) -> int:
        return self.k[0].size(2)

    def at(self, slots: torch.Tensor, visible: torch.Tensor | None) -> KVCache:
        self.slots, self.visible = slots, visible
        return self

    def layer(self, i: int) -> LayerCache:
        if self.slots is None:
            raise RuntimeError("say where the tokens go first: cache.at(slots, visible)")
        return LayerCache(self.k[i], self.v[i], self.slots, self.visible)


# blocks -------------------------------------------------------------------------------------
class HeadLayerNorm(nn.Module):
    """LayerNorm over each head's features with that head's own gain and bias (Chameleon's QK-norm):
    (..., H, hd) -> (..., H, hd)."""

    def __init__(self, n_heads: int, head_dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_heads, head_dim))
        self.bias = nn.Parameter(torch.zeros(n_heads, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * self.weight + self.bias


def qk_norms(cfg: ModelConfig) -> tuple[nn.Module | None, nn.Module | None]:
    """The norms of one block's queries and keys, as ``cfg`` asks for them (None, None: no QK-norm)."""
    if not cfg.qk_norm:
        return None, None
    if cfg.qk_norm_per_head:
        return HeadLayerNorm(cfg.n_heads, cfg.head_dim, cfg.norm_eps), HeadLayerNorm(
            cfg.n_kv_heads, cfg.head_dim, cfg.norm_eps
        )
    return nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps), nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        # separate projections, not one fused wqkv: as fast on CPU (measured), and HF's layout
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.q_norm, self.k_norm = qk_norms(cfg)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: Mask | None,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        hd = self.head_dim
        q = self.wq(x).view(B, T, self.n_heads, hd)  # (B, T, H, hd)
        k = self.wk(x).view(B, T, self.n_kv_heads, hd)  # (B, T, Hkv, hd)
        v = self.wv(x).view(B, T, self.n_kv_heads, hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, hd)
        if cache is not None:
            cache.write(k, v)
        if cache is None or cache.visible is None:  # training, or a prefill: the new tokens among themselves
            y = attention(q, k, v, mask)  # (B, H, T, hd)
        else:
            k, v = cache.seen()  # (B, Hkv, S', hd)
            y = cached_attention(q, k.to(q.dtype), v.to(q.dtype), cache.visible)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_heads * hd))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        # gate and up kept apart: a fused gate_up was 12% slower on CPU (strided halves, cat in backward)
        self.w_gate = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.w_up = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.w_down = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.post_norm = cfg.post_norm

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: Mask | None,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        if self.post_norm:
            x = x + self.attn_norm(self.attn(x, cos, sin, mask, cache))
            return x + self.mlp_norm(self.mlp(x))
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        self.attention_kernel: str | None = None  # force one (e.g. "blockwise"); None: the measured choice
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Normal(0, init_std) weights; the projections back into the residual stream scaled down by
        sqrt(2 x layers) (GPT-2), so the residual's variance does not grow with depth."""
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=std)
            elif isinstance(module, nn.RMSNorm | HeadLayerNorm):
                nn.init.ones_(module.weight)
                if isinstance(module, HeadLayerNorm):
                    nn.init.zeros_(module.bias)
        for block in self.layers:
            for out in (block.attn.wo, block.mlp.w_down):
                nn.init.normal_(out.weight, std=std / math.sqrt(2 * self.cfg.n_layers))

    def forward(
        self,
        ids: torch.Tensor,  # (B, T) int
        *,
        segment_ids: torch.Tensor | None = None,  # (B, T) int: packed rows, attention stays in a document
        positions: torch.Tensor | None = None,  # (B, T) int; default 0..T-1
        cache: KVCache | None = None,  # generation: read and extend this cache (see KVCache.at)
        mask: Mask | None = None,  # how the rows attend, if not by segment_ids (e.g. parallel.context.RingMask)
    ) -> torch.Tensor:  # (B, T, vocab) logits
        B, T = ids.shape
        if cache is not None and cache.visible is not None and segment_ids is not None:
            raise ValueError(
                "a cached forward with a visible mask takes no segment_ids: the mask says what each token sees"
            )
        if positions is None:
            positions = torch.arange(T, device=ids.device)[None]  # (1, T)
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta)
        if mask is None:
            mask = document_mask(segment_ids, kernel=self.attention_kernel)
        x = self.embed(ids)  # (B, T, dim)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, None if cache is None else cache.layer(i))
        return self.head(self.norm(x))
