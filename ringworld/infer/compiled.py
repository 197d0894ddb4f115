"""Compiled steps for generation; the decode step is shaped for what decoding is: a few rows through every weight.

At decode time each projection multiplies a handful of rows by a weight matrix, so its speed is
how fast the weights are read. On CPU, Inductor hands ``mm`` to oneDNN/MKL, whose few-row products
read the ``tiny`` model's weights at 8-25 GB/s on the 2-core EPYC; written as a multiply-and-sum,
the same product becomes a vectorised reduction that Inductor generates itself, and read them at
70 GB/s (docs/results.md, "Batch-1 decoding"). So on CPU, ``decode_compile`` rewrites every
``mm``/``bmm`` of at most ``GEMV_ROWS`` rows that way while compiling; larger ones (prefill, big
batches) stay with the BLAS, which wins there.

It also skips Dynamo's guards on PyTorch's own modules (``nn.Linear``, ``nn.RMSNorm``): checking
every one of them before each call cost about 0.1 ms a step, a layer's work. The weights are still read
at each call, so loading new weights in place is seen; changing such a module's settings
(an RMSNorm's ``eps``) after the first call is not.
"""

from __future__ import annotations

from collections.abc import Callable
from unittest.mock import patch

import torch

GEMV_ROWS = 8  # products with at most this many rows become Inductor reductions on CPU

aten = torch.ops.aten


def _few_rows_mm(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """(M, K) @ (K, N) as a multiply-and-sum when M is small, on CPU."""
    if a.device.type != "cpu" or a.size(0) > GEMV_ROWS or out_dtype is not None:
        return NotImplemented  # Inductor's own lowering
    return (a.unsqueeze(2) * b.unsqueeze(0)).sum(1)  # (M, K, N) -> (M, N)


def _few_rows_bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, M, K) @ (B, K, N) likewise."""
    if a.device.type != "cpu" or a.size(1) > GEMV_ROWS:
        return NotImplemented
    return (a.unsqueeze(3) * b.unsqueeze(1)).sum(2)  # (B, M, K, N) -> (B, M, N)


def _inductor_with_gemv(gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
    """Inductor, with the few-row products above in its decomposition table while it compiles."""
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.decomposition import select_decomp_table

    ours = {aten.mm.default: _few_rows_mm, aten.bmm.default: _few_rows_bmm}
    # Patched into Inductor's own table rather than passed as ``decompositions=``, which makes
    # Inductor's graph cache (keyed on the graph after decomposition) pass this graph by.
    # AOTAutograd's cache is keyed on the graph before decomposition, so it would hand back a
    # plain compile's artifact: it is off while this compiles.
    with (
        patch.dict(select_decomp_table(), ours),
        torch._functorch.config.patch(enable_autograd_cache=False),
    ):
        return compile_fx(gm, example_inputs)


def decode_compile(step: Callable) -> Callable:
    """``step`` compiled as described above. Its first graph has the shapes of its first call; a
    dimension that then changes (the cache's length, the rows in use) is made dynamic in a second
    one (Dynamo's automatic dynamic shapes), so a few graphs serve every length."""
    return torch.compile(step, backend=_inductor_with_gemv, options=_GUARDS)


def prompt_compile(step: Callable) -> Callable:
    """A prompt's forward (many rows: the BLAS's products) compiled likewise, by Inductor with
    ``freezing``: the weights are folded in as constants (on CPU, prepacked for oneDNN), which made
    a 60-token prompt's forward 1.4x faster than without (docs/results.md). New weights loaded into
    the model afterwards are not seen: compile again (a new ``Batcher``)."""
    return torch.compile(step, options={**_GUARDS, "freezing": True})


_GUARDS = {"guard_filter_fn": torch.compiler.skip_guard_on_inbuilt_nn_modules_unsafe}
