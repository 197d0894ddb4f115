"""Long context: peak memory and time of one training forward+backward of the whole model
(embedding -> blocks -> LM head -> cross-entropy -> ``.backward()``) at 4K to 32K tokens, for each
way ringworld can compute attention.

    OMP_NUM_THREADS=2 python bench/long_context.py --json long_context.json   # tiny and small, 4K-32K, CPU fp32
    python bench/long_context.py --presets tiny --lengths 1k,2k              # a quick look
    python bench/long_context.py --device cuda --dtype bf16 --lengths 4k,8k,16k,32k,64k

One row of random token ids (vocabulary 1468, the demo tokenizer's), batch 1, one document a row.
The methods (``--methods``):

- ``dense``: the textbook attention, SDPA forced onto its math backend
  (``sdpa_kernel(SDPBackend.MATH)``), which materialises the (1, H, T, T) scores and
  probabilities of every layer. It stands for what long context costs without a fused kernel.
  (The model's ``mask`` kernel is not that: on the CPU, SDPA runs it through the flash kernel,
  which materialises only the (T, T) boolean mask.)
- ``sdpa``: what the model runs by itself for one-document rows: fused causal SDPA (flash on the CPU).
- ``blockwise``: ``model.attention_kernel = "blockwise"``, tiled attention in plain PyTorch
  (``ringworld/model/blockwise.py``): memory linear in T.
- ``+ckpt``: the same with ``apply_activation_checkpointing`` (each block recomputed in backward).
- ``ring``: context parallelism over 2 processes, started with the environment torchrun would give
  them (gloo on the CPU, one thread each; NCCL on 2 accelerators). Each rank holds its zigzag
  shard of the ids, positions and targets, the model is given a ``RingMask`` and every layer runs
  ring attention. Its memory is the largest rank's, its time the slowest rank's.

Every case runs in a fresh process (``python bench/long_context.py --case ...``), so that its peak
is its own: on the CPU the peak resident set (Linux's VmHWM, which starts afresh at exec, as in
``bench/train_throughput.py``), on an accelerator the peak of allocated memory. "Activations" is
that peak minus the memory held just before the forward (weights, their zeroed gradients, the
inputs), so it counts what the step itself adds: saved activations, scores, logits, the transient
gradients of backward. The step is timed once with ``time.perf_counter()``, with no warm-up step
(the device's math library is started outside it). FLOP/s count the model's training FLOPs
(``ModelConfig.flops_per_token(T) x T``, causal attention), not checkpointing's recompute.

A case whose estimated memory (``estimated_gib``) exceeds the available memory less 4 GiB is
skipped, not run; one that runs longer than ``--case-timeout`` is stopped; both are recorded.
The summary gives, per preset and length, ``blockwise_vs_dense_memory`` (blockwise's activations
over dense's) and ``ring_per_rank_vs_one_process`` (a ring rank's activations over one-process
blockwise's).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from ringworld.model.transformer import ModelConfig, Transformer
from ringworld.parallel.context import RingMask
from ringworld.parallel.mesh import apply_activation_checkpointing
from ringworld.perf import synchronize

VOCAB = 1468  # the demo tokenizer's vocabulary
RING = 2  # context-parallel ranks of the ring case
METHODS = ("dense", "dense+ckpt", "sdpa", "sdpa+ckpt", "blockwise", "blockwise+ckpt", "ring")
HEADROOM_GIB = 4
RESULT = "RESULT "  # the line a case's process prints its figures on


# one case, in its own process ------------------------------------------------------------------
def proc_status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: now, VmHWM: peak since exec) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB -> MiB
    raise RuntimeError(f"no {field} in /proc/self/status: the CPU memory figures need Linux")


def memory_mib(device: torch.device, peak: bool) -> float:
    if device.type == "cpu":
        return proc_status_mib("VmHWM" if peak else "VmRSS")
    if peak:
        return torch.accelerator.max_memory_allocated(device) / 2**20
    return torch.accelerator.memory_allocated(device) / 2**20


def one_step(case: dict) -> dict:
    """One forward+backward of the whole model in this process: memory and seconds."""
    import torch.distributed as dist
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ringworld.parallel.ring import zigzag_shard

    device, T = torch.device(case["device"]), case["length"]
    method = case["method"]
    ring = method == "ring"
    if ring:
        if device.type != "cpu":
            device = torch.device(device.type, int(os.environ["LOCAL_RANK"]))
            torch.accelerator.set_device_index(device.index)
        dist.init_process_group("gloo" if device.type == "cpu" else "nccl")
    cfg = ModelConfig.preset(case["preset"], VOCAB, max_seq_len=T)
    torch.manual_seed(0)
    model = Transformer(cfg).to(device).train()
    if method.endswith("+ckpt"):
        apply_activation_checkpointing(model)
    if method.startswith("blockwise"):
        model.attention_kernel = "blockwise"
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (1, T), generator=g)
    targets = torch.randint(0, VOCAB, (1, T), generator=g)
    positions = torch.arange(T)[None]  # (1, T)
    mask = None
    if ring:  # every layer's attention goes round the ring
        mask = RingMask(None, dist.group.WORLD)
        ids, targets, positions = (zigzag_shard(t, 1) for t in (ids, targets, positions))  # (1, T/2) each
    ids, targets, positions = ids.to(device), targets.to(device), positions.to(device)
    for p in model.parameters():  # gradients are the weights' size whatever T: count them before the step
        p.grad = torch.zeros_like(p)
    torch.ones(64, 64, device=device) @ torch.ones(64, 64, device=device)  # start the math library, untimed
    synchronize(device)
    if device.type != "cpu":
        torch.accelerator.reset_peak_memory_stats(device)
    before = memory_mib(device, peak=False)
    backend = sdpa_kernel(SDPBackend.MATH) if method.startswith("dense") else nullcontext()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if case["dtype"] == "bf16" else nullcontext()

    start = time.perf_counter()
    with backend:
        with autocast:
            logits = model(ids, positions=positions, mask=mask)  # (1, T or T/2, vocab)
            # a sum over this rank's tokens / all T tokens: the ranks' gradients add up to the whole loss's
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum") / T
        loss.backward()
    synchronize(device)
    seconds = time.perf_counter() - start

    peak = memory_mib(device, peak=True)
    result = {"peak_mib": peak, "activation_mib": peak - before, "seconds": seconds}
    result["threads"] = torch.get_num_threads()
    if ring:
        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, result)
        dist.destroy_process_group()
        result = {k: max(r[k] for r in ranks) for k in ("peak_mib", "activation_mib", "seconds")}
        result |= {"threads": ranks[0]["threads"], "ranks": ranks}
    return result


# the driver ----------------------------------------------------------------------------------
def estimated_gib(cfg: ModelConfig, T: int, method: str) -> float:
    """Rough memory of a case (all ranks together), to skip what obviously cannot fit.

    Linear in T: what each block saves for backward (about 16 x dim + 4 x ffn floats a token; with
    checkpointing, one block's worth plus the blocks' inputs) and the fp32 logits with their
    gradient. Dense adds fp32 (H, T, T) score matrices: the probabilities saved by every layer
    (one layer under checkpointing) and about two more in flight (scores, their gradient).
    """
    per_block = (16 * cfg.dim + 4 * cfg.ffn_dim) * 4  # bytes a token
    blocks = 1 if method.endswith("+ckpt") else cfg.n_layers
    linear = T * (blocks * per_block + cfg.n_layers * cfg.dim * 4 + 3 * cfg.vocab_size * 4)
    quadratic = 0
    if method.startswith("dense"):
        quadratic = (blocks + 2) * cfg.n_heads * T * T * 4
    processes = RING if method == "ring" else 1
    return (linear + quadratic) / 2**30 + 0.5 * processes  # + a Python process with torch each


def available_gib(device: torch.device) -> float:
    if device.type == "cpu":
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20  # kB -> GiB
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 2**30
    return float("inf")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_case(case: dict, timeout: float) -> dict:
    """Run one case in a fresh process (one per rank for ``ring``) and read back its figures."""
    command = [sys.executable, str(Path(__file__).resolve()), "--case", json.dumps(case)]
    envs = [dict(os.environ)]
    if case["method"] == "ring":  # what torchrun would set up, but every process is ours to stop
        ring = {"WORLD_SIZE": str(RING), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
        if case["device"] == "cpu":
            ring["OMP_NUM_THREADS"] = "1"  # one thread a rank: the ring's 2 ranks share the cores
        envs = [os.environ | ring | {"RANK": str(r), "LOCAL_RANK": str(r)} for r in range(RING)]
    procs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for env in envs
    ]
    deadline = time.monotonic() + timeout
    try:
        outputs = [p.communicate(timeout=max(deadline - time.monotonic(), 0.1)) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
            p.communicate()
        return {"status": "timeout", "timeout_s": timeout}
    out, err = outputs[0]
    lines = [line for line in out.splitlines() if line.startswith(RESULT)]
    failed = [p.returncode for p in procs if p.returncode]
    if failed or not lines:
        tail = " | ".join(line for _, e in outputs for line in e.strip().splitlines()[-2:])
        return {"status": "failed", "returncode": failed[0] if failed else 0, "error": tail}
    return {"status": "ok", **json.loads(lines[-1][len(RESULT) :])}


def parse_length(text: str) -> int:
    text = text.strip().lower()
    return int(text[:-1]) * 1024 if text.endswith("k") else int(text)


def environment(device: torch.device, dtype: str) -> str:
    ram = available_gib(torch.device("cpu"))
    return (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), {os.cpu_count()} CPUs, "
        f"{ram:.1f} GiB RAM available, {device} {dtype}"
    )


def cell(r: dict, throughput: bool = False) -> str:
    if r["status"] == "skipped":
        return f"skipped (needs ~{r['needs_gib']:.0f} GiB)"
    if r["status"] == "timeout":
        return f"timeout (> {r['timeout_s']:.0f} s)"
    if r["status"] == "failed":
        return "failed"
    if throughput:
        return f"{r['tokens_per_s']:,.0f} tok/s, {r['flops_per_s'] / 1e9:,.1f} GFLOP/s"
    return f"{r['peak_mib']:,.0f} ({r['activation_mib']:,.0f}) / {r['seconds']:.2f} s"


def summarize(results: list[dict]) -> dict:
    found = {(r["preset"], r["length"], r["method"]): r for r in results if r["status"] == "ok"}
    summary: dict = {}
    for preset, T in dict.fromkeys((r["preset"], r["length"]) for r in results):
        ratios = {}
        dense, blockwise, ring = (found.get((preset, T, m)) for m in ("dense", "blockwise", "ring"))
        if dense and blockwise:
            ratios["blockwise_vs_dense_memory"] = blockwise["activation_mib"] / dense["activation_mib"]
        if ring and blockwise:
            ratios["ring_per_rank_vs_one_process"] = ring["activation_mib"] / blockwise["activation_mib"]
        summary.setdefault(preset, {})[str(T)] = ratios
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,small", help="model presets, comma-separated")
    parser.add_argument("--lengths", default="4k,8k,16k,32k", help="tokens in the row, comma-separated (4k = 4096)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"some of {', '.join(METHODS)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast")
    parser.add_argument("--case-timeout", type=float, default=900, help="seconds before a case is stopped")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run this one case (JSON) and print it
    args = parser.parse_args()
    if args.case:
        result = one_step(json.loads(args.case))
        if int(os.environ.get("RANK", 0)) == 0:
            print(RESULT + json.dumps(result), flush=True)
        return

    device = torch.device(args.device)
    presets = args.presets.split(",")
    lengths = [parse_length(t) for t in args.lengths.split(",")]
    methods = args.methods.split(",")
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; methods are {', '.join(METHODS)}")
    env = environment(device, args.dtype)
    print(env, file=sys.stderr, flush=True)

    results = []
    for preset in presets:
        for T in lengths:
            cfg = ModelConfig.preset(preset, VOCAB, max_seq_len=T)
            for method in methods:
                case = {"preset": preset, "length": T, "method": method, "device": args.device, "dtype": args.dtype}
                needs = estimated_gib(cfg, T, method)
                spare = available_gib(device) - HEADROOM_GIB
                if method == "ring" and device.type != "cpu" and torch.accelerator.device_count() < RING:
                    outcome = {"status": "skipped", "needs_gib": needs, "why": f"needs {RING} devices"}
                elif needs > spare:
                    outcome = {"status": "skipped", "needs_gib": needs, "why": f"{spare:.1f} GiB to spare"}
                else:
                    print(f"{preset} {T} {method} ...", file=sys.stderr, flush=True)
                    outcome = run_case(case, args.case_timeout)
                if outcome["status"] == "ok":
                    outcome["tokens_per_s"] = T / outcome["seconds"]
                    outcome["flops_per_s"] = cfg.flops_per_token(T) * T / outcome["seconds"]
                results.append(case | {"estimated_gib": needs} | outcome)
                print(f"{preset} {T} {method}: {cell(results[-1])} {outcome.get('error', '')}", file=sys.stderr,
                      flush=True)  # fmt: skip

    names = {m: ("ring cp=2" if m == "ring" else m) for m in methods}
    print(f"\n{env}\n")
    print("Peak MiB (activations MiB) / seconds of one forward+backward. dense = SDPA's math backend, the")
    print("(1, H, T, T) scores of every layer materialised; ring cp=2: the largest of 2 ranks, 1 thread each.\n")
    for throughput in (False, True):
        if throughput:
            print("Tokens/s and training FLOP/s (the model's FLOPs: checkpointing's recompute not counted).\n")
        print("| preset | T | " + " | ".join(names[m] for m in methods) + " |")
        print("|---|---|" + "---|" * len(methods))
        for i in range(0, len(results), len(methods)):
            row = results[i : i + len(methods)]
            cells = " | ".join(cell(r, throughput) for r in row)
            print(f"| {row[0]['preset']} | {row[0]['length']:,} | {cells} |")
        print()
    summary = summarize(results)
    for preset, by_length in summary.items():
        for T, ratios in by_length.items():
            print(f"{preset} {T}: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    if args.json:
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "case"}
        report = {"environment": env, "config": config, "results": results, "summary": summary}
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
