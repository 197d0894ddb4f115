"""Which document-masked attention kernel is fastest, at which row length: the numbers behind
``ringworld.model.attention.pick_kernel``.

    python bench/attention.py                  # CPU, fp32, tiny-model heads, about two minutes
    python bench/attention.py --device cuda --dtype bf16 --lengths 1024,4096,16384

Rows of ``--rows`` x T tokens are packed with documents of the world mixture's lengths (40 to 330
tokens) and, separately, of long documents (T/4 to T/2). Each kernel is timed forward only (no
grad: inference) and forward + backward (training), against plain causal attention over the
whole row (what the rows would cost if they were one document: the bound a mask cannot beat by
much unless it skips work). FlexAttention has no CPU backward, so that cell is "-".
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ringworld.model.attention import KERNELS, attention, document_mask
from ringworld.perf import synchronize

CANDIDATES = tuple(k for k in KERNELS if k != "blockwise")  # the kernels document_mask picks among


def segments(rows: int, T: int, low: int, high: int, g: torch.Generator) -> torch.Tensor:
    """(rows, T) segment ids: documents of random lengths in [low, high] laid end to end."""
    seg = torch.empty(rows, T, dtype=torch.long)
    for r in range(rows):
        at, doc = 0, 0
        while at < T:
            n = int(torch.randint(low, high + 1, (1,), generator=g))
            seg[r, at : at + n] = doc
            at, doc = at + n, doc + 1
    return seg


def timed(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm up (and compile, for flex)
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="256,512,1024,2048,4096", help="row lengths T, comma-separated")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    g = torch.Generator().manual_seed(0)
    results = []
    print(f"{args.rows} rows, {args.heads} heads ({args.kv_heads} K/V) of {args.head_dim}, {device} {args.dtype}")
    print(
        "\n| T | documents | pass | causal (one doc) ms | " + " | ".join(f"{k} ms" for k in CANDIDATES) + " | fastest |"
    )
    print("|---|---|---|---|" + "---|" * len(CANDIDATES) + "---|")
    for T in (int(t) for t in args.lengths.split(",")):
        for layout, (low, high) in {"world (40-330)": (40, 330), "long (T/4-T/2)": (T // 4, T // 2)}.items():
            seg = segments(args.rows, T, low, high, g).to(device)
            shape = [(args.rows, h, T, args.head_dim) for h in (args.heads, args.kv_heads, args.kv_heads)]
            for grad in (False, True):
                q, k, v = (torch.randn(s, device=device, dtype=dtype, requires_grad=grad) for s in shape)

                def run(kernel: str | None, q=q, k=k, v=v, seg=seg, grad=grad) -> None:
                    with torch.set_grad_enabled(grad):
                        if kernel is None:
                            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                        else:
                            out = attention(q, k, v, document_mask(seg, kernel=kernel))
                        if grad:
                            out.sum().backward()

                row = {
                    "T": T,
                    "layout": layout,
                    "pass": "fwd+bwd" if grad else "fwd",
                    "causal_ms": timed(lambda: run(None), device, args.repeats),
                }
                for kernel in CANDIDATES:
                    if kernel == "flex" and grad and device.type == "cpu":
                        row[f"{kernel}_ms"] = None  # no CPU backward
                        continue
                    row[f"{kernel}_ms"] = timed(lambda kernel=kernel: run(kernel), device, args.repeats)
                times = {k: row[f"{k}_ms"] for k in CANDIDATES if row[f"{k}_ms"] is not None}
                row["fastest"] = min(times, key=times.get)
                results.append(row)
                cells = " | ".join("-" if row[f"{k}_ms"] is None else f"{row[f'{k}_ms']:.1f}" for k in CANDIDATES)
                print(
                    f"| {T} | {layout} | {row['pass']} | {row['causal_ms']:.1f} | {cells} | {row['fastest']} |",
                    flush=True,
                )
    if args.json:
        args.json.write_text(
            json.dumps({"config": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
