"""The optimizer: Muon for the blocks' weight matrices and AdamW for the rest (the default), or
AdamW for everything.

Muon (Jordan et al. 2024, ``torch.optim.Muon``) orthogonalises each matrix's momentum with a few
Newton-Schulz steps, so every direction of a matrix moves at the same rate. On the sprite world it
is what lets the ``tiny`` model learn objects within the CPU demo's budget (docs/results.md, issue
#11): AdamW stays on the background-only plateau for ~1,000 steps. Embeddings, the LM head and the
norms are not hidden-layer matrices and stay with AdamW, as in the Muon paper.

Under FSDP2 every parameter is a ``DTensor`` sharded along dim 0; Muon's matrix products on it are
DTensor ops, which gather what they need, so the update equals one process's (tested).

``torch.optim.Muon`` runs its Newton-Schulz steps in bf16, which a CPU without bf16 instructions
emulates: on a 2-core AVX2 EPYC they took 6 of a ``tiny`` demo step's 7.5 s (#20). ``Muon`` below
is torch's, with those steps in a dtype of our choosing: bf16 where it is fast, else fp32.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim._muon import _adjust_lr

from ringworld.perf import fast_bf16
from ringworld.train.config import TrainConfig


class Muon(torch.optim.Muon):
    """``torch.optim.Muon`` (same state, same update) with its Newton-Schulz steps in ``ns_dtype``."""

    def __init__(self, params, *, ns_dtype: torch.dtype = torch.bfloat16, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("ringworld's Muon takes no closure")
        for group in self.param_groups:
            params: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            buffers: list[torch.Tensor] = []
            self._init_group(group, params, grads, buffers)
            lr, decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
            for param, grad, buf in zip(params, grads, buffers, strict=True):
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = orthogonalise(update, group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype)
                param.mul_(1 - lr * decay)
                param.add_(update.to(param.dtype), alpha=-_adjust_lr(lr, group["adjust_lr_fn"], param.shape))


def orthogonalise(
    grad: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float, dtype: torch.dtype
) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration (as in ``torch.optim.Muon``), in ``dtype``: about
    ``U V^T`` of the (m, n) matrix's SVD, with singular values near 1."""
    a, b, c = coefficients
    x = grad.to(dtype)
    tall = grad.size(0) > grad.size(1)
    if tall:
        x = x.T  # (n, m): the Gram matrix below is the smaller of the two
    x = x / x.norm().clamp(min=eps)  # spectral norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class Optimizers(list):
    """Several ``torch.optim`` optimizers stepped as one. ``param_groups`` lists all their groups;
    each group keeps its peak learning rate in ``peak_lr``, which the schedule scales.
    ``torch.distributed.checkpoint``'s state-dict helpers take the list as it is."""

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self for group in optimizer.param_groups]

    def step(self) -> None:
        for optimizer in self:
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self:
            optimizer.zero_grad(set_to_none=set_to_none)

    def scale_lr(self, factor: float) -> None:
        """Every group's lr = its peak lr x ``factor`` (the schedule's value at this step)."""
        for group in self.param_groups:
            group["lr"] = group["peak_lr"] * factor


def in_blocks(name: str) -> bool:
    """Whether a parameter lives in a transformer block: ``layers.<i>.`` here, ``model.layers.<i>.`` in
    HF's layout. Muon takes the blocks' matrices; embeddings, the head and norms go to AdamW."""
    return name.startswith("layers.") or ".layers." in name


def is_norm(name: str) -> bool:
    """Whether a parameter is a norm's gain or bias (``...q_norm.weight``, ``...input_layernorm.weight``):
    a per-head norm's gain is a matrix, yet it is no projection to orthogonalise or decay."""
    return "norm" in name.rsplit(".", 2)[-2] if "." in name else False


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> Optimizers:
    """``cfg.optimizer``'s optimizers over ``model``'s trainable weights: matrices decay, norms do not.
    AdamW uses the fused kernel where there is one (3-5x faster steps on CPU than foreach)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    matrices = [(n, p) for n, p in named if p.ndim >= 2 and not is_norm(n)]
    muon = [p for n, p in matrices if cfg.optimizer == "muon" and in_blocks(n) and p.ndim == 2]
    chosen = {id(p) for p in muon}
    decayed = [p for _, p in matrices if id(p) not in chosen]
    kept = {id(p) for p in muon + decayed}
    adamw_groups = [
        {"params": decayed, "weight_decay": cfg.weight_decay, "peak_lr": cfg.lr},
        {"params": [p for _, p in named if id(p) not in kept], "weight_decay": 0.0, "peak_lr": cfg.lr},
    ]
    fused = device.type in ("cpu", "cuda")
    optimizers = Optimizers([torch.optim.AdamW(adamw_groups, lr=cfg.lr, betas=cfg.betas, eps=1e-8, fused=fused)])
    if muon:
        # no decay: Muon's is lr x decay per step, at its ~10x larger lr a strong pull to zero
        group = {"params": muon, "weight_decay": 0.0, "peak_lr": cfg.muon_lr}
        ns_dtype = torch.bfloat16 if fast_bf16(device) else torch.float32  # emulated bf16: ~60x slower matmuls (AVX2)
        optimizers.append(Muon([group], lr=cfg.muon_lr, momentum=cfg.muon_momentum, ns_dtype=ns_dtype))
    return optimizers


def set_hyperparameters(optimizers: Optimizers, cfg: TrainConfig) -> None:
    """Peak lrs, AdamW's weight decay (matrices only) and betas from ``cfg``, over what a checkpoint's param
    groups carried (a resumed run may change them)."""
    adamw = optimizers[0]
    decay, no_decay = adamw.param_groups
    decay["weight_decay"], no_decay["weight_decay"] = cfg.weight_decay, 0.0
    for group in adamw.param_groups:
        group["betas"], group["peak_lr"] = cfg.betas, cfg.lr
    for muon in optimizers[1:]:
        for group in muon.param_groups:
            group["peak_lr"], group["momentum"] = cfg.muon_lr, cfg.muon_momentum
