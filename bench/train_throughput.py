"""Training throughput: ringworld against Hugging Face transformers' LlamaForCausalLM, same config,
same weights, same optimizer, in one run. ringworld runs as ``ringworld train`` does by default (each
block through ``torch.compile``) and, for comparison, eager (``--no-compile``).

    python bench/train_throughput.py                      # tiny preset, 4 rows x 1024 tokens, CPU fp32
    python bench/train_throughput.py --optimizers muon    # both frameworks on Muon (default: AdamW, then Muon)
    python bench/train_throughput.py --json results.json  # also write the figures
    python bench/train_throughput.py --device cuda --dtype bf16 --preset small

Two cases, each timed over the same batches for both:
(a) dense: full rows of random tokens, one document a row: plain causal attention for both.
(b) mixture: the real world-task mixture (text→image, captions, video, prediction, actions, QA).
    ringworld packs the documents of a step into rows (masked packing); transformers gets the same
    documents as one batch padded to the longest, as a collator would. Useful tokens are those
    of documents, not padding.

A training step is forward, loss, backward, gradient clipping and an optimizer step: the same optimizer
for both frameworks, AdamW (fused, no decay on norms) and then Muon (the blocks' matrices; the rest on
AdamW), as ``ringworld train --optimizer`` builds them. Muon's share of a step is 1 - (AdamW step
time / Muon step time), medians over steps, per framework. MFU counts
useful FLOPs only (6 x matmul weights per token + causal attention within each document) against
the measured matmul peak of the device. The two frameworks' steps are timed interleaved in one
process. The ratios (``dense_ratio_adamw``, ``packed_useful_ratio_adamw``, the same ``_muon``, and
``_eager_`` for ringworld without compiling: ringworld ÷ transformers, useful tokens/s) are medians
over steps of the paired step-time ratio, which a shared machine's changes of speed do not skew; the
tokens/s columns are plain totals. Peak memory (resident set on CPU,
allocated on an accelerator) is measured for each framework in a fresh process of its own.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from ringworld.data.packing import IGNORE, pack
from ringworld.data.sources import WorldSource
from ringworld.model.hf import to_hf
from ringworld.model.transformer import ModelConfig, Transformer
from ringworld.parallel.mesh import Distributed
from ringworld.perf import measured_peak_flops, synchronize
from ringworld.tokens.bundle import load_codec, save_tokenizers
from ringworld.tokens.codec import Codec, Encoded
from ringworld.train.config import TrainConfig
from ringworld.train.loop import train_step
from ringworld.train.loss import LossWeights
from ringworld.train.optim import make_optimizer


def build_tokenizer(directory: Path) -> None:
    """Token lengths are all the benchmark needs: real BPE, an untrained vision autoencoder."""
    from ringworld.tokens.text import train_text_tokenizer
    from ringworld.tokens.vision import VisionConfig, VisionTokenizer
    from ringworld.world.tasks import caption_corpus

    torch.manual_seed(0)
    text = train_text_tokenizer(caption_corpus(300), vocab_size=512)
    save_tokenizers(directory, text, VisionTokenizer(VisionConfig(channels=8, blocks=0)).eval())


def step_documents(args: argparse.Namespace, codec: Codec, step: int) -> list[Encoded]:
    """The documents of one training step: world rows for the mixture, full random rows for dense."""
    if args.case == "dense":
        g = torch.Generator().manual_seed(step)
        ids = torch.randint(0, codec.vocab.size, (args.rows, args.seq_len), generator=g).numpy()
        ones = torch.ones(args.seq_len, dtype=torch.bool).numpy()
        return [Encoded(row, ones, codec.vocab.modality(row)) for row in ids]
    source = WorldSource(codec, seq_len=args.seq_len, rows=args.rows, seed=0)
    return [doc for r in range(args.rows) for doc in source.row_documents(step, r)]


def useful_flops(cfg: ModelConfig, docs: list[Encoded]) -> float:
    """Training FLOPs that a perfect implementation would spend on these documents."""
    matmul_per_token = cfg.flops_per_token(0)
    return sum(matmul_per_token * len(d) + 6 * cfg.n_layers * cfg.dim * len(d) ** 2 for d in docs)


def padded_batch(docs: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """What a padding collator hands transformers: ids, attention mask, labels (-100 off the loss)."""
    longest = max(len(d) for d in docs)
    ids = torch.full((len(docs), longest), pad_id)
    mask = torch.zeros(len(docs), longest, dtype=torch.long)
    labels = torch.full((len(docs), longest), IGNORE)
    for i, d in enumerate(docs):
        n = len(d)
        ids[i, :n] = torch.from_numpy(d.ids)
        mask[i, :n] = 1
        labels[i, :n] = torch.where(torch.from_numpy(d.loss_mask), ids[i, :n], IGNORE)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


FRAMEWORKS = ("ringworld", "ringworld --no-compile", "transformers")


def make_runners(args: argparse.Namespace) -> tuple[dict, ModelConfig, list[list[Encoded]]]:
    """A training-step function per framework over the same batches, both from the same weights."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    codec = load_codec(args.tokenizer)
    cfg = ModelConfig.preset(args.preset, codec.vocab.size, max_seq_len=args.seq_len, qk_norm=False)
    train_cfg = TrainConfig(
        out="", seq_len=args.seq_len, batch_size=args.rows, lr=1e-4, warmup=1, optimizer=args.optimizer
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bf16" else nullcontext()
    batches = [step_documents(args, codec, s) for s in range(args.warmup + args.steps)]
    pad_id = codec.vocab.special("<|pad|>")
    model = Transformer(cfg)
    runners = {}

    packed = [pack(docs, args.seq_len, pad_id) for docs in batches]
    for name in ("ringworld", "ringworld --no-compile"):
        if name not in args.frameworks:
            continue
        ours = Transformer(cfg)
        ours.load_state_dict(model.state_dict())
        ours = ours.to(device).train()
        if name == "ringworld":  # what `ringworld train` does by default
            for layer in ours.layers:
                layer.compile()
        optimizer = make_optimizer(ours, train_cfg, device)

        def ringworld_step(i: int, model=ours, optimizer=optimizer) -> int:
            train_step(model, optimizer, packed[i], train_cfg, LossWeights(), Distributed(device=device), autocast)
            return packed[i].ids.numel()

        runners[name] = ringworld_step

    if "transformers" in args.frameworks:
        hf = to_hf(model).to(device).train()
        hf_optimizer = make_optimizer(hf, train_cfg, device)  # the same optimizer over the same weights
        padded = [padded_batch(docs, pad_id) for docs in batches]

        def transformers_step(i: int) -> int:
            batch = {k: v.to(device) for k, v in padded[i].items()}
            with autocast:
                loss = hf(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
            hf_optimizer.step()
            hf_optimizer.zero_grad(set_to_none=True)
            return batch["input_ids"].numel()

        runners["transformers"] = transformers_step
    return runners, cfg, batches


def measure_speed(args: argparse.Namespace) -> list[dict]:
    """Both frameworks in one process, their steps interleaved (order swapped every step), so a
    machine that speeds up or slows down during the run does not favour either."""
    device = torch.device(args.device)
    runners, cfg, batches = make_runners(args)
    for i in range(args.warmup):
        for run in runners.values():
            run(i)
    seconds, processed = {name: [] for name in runners}, dict.fromkeys(runners, 0)
    for i in range(args.warmup, args.warmup + args.steps):
        order = list(runners) if i % 2 else list(reversed(runners))
        for name in order:
            synchronize(device)
            start = time.perf_counter()
            processed[name] += runners[name](i)
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    timed = batches[args.warmup :]
    useful = sum(len(d) for docs in timed for d in docs)
    flops = sum(useful_flops(cfg, docs) for docs in timed)
    peak = measured_peak_flops(device, torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    rows = []
    for name, times in seconds.items():
        total = sum(times)
        row = {"case": args.case, "optimizer": args.optimizer, "framework": name}
        row |= {"tokens_per_s": processed[name] / total}
        row |= {"useful_tokens_per_s": useful / total, "pad_fraction": 1 - useful / processed[name]}
        row |= {"mfu": flops / total / peak, "step_seconds": times}
        if name != "transformers" and "transformers" in seconds:
            # both ran the same documents at step i, so the ratio of step times is the ratio of useful
            # tokens/s; its median over steps ignores the moments a shared machine slows down
            ratios = [theirs / ours for ours, theirs in zip(times, seconds["transformers"], strict=True)]
            row["vs_transformers"] = statistics.median(ratios)
        rows.append(row)
    return rows


def measure_memory(args: argparse.Namespace) -> float:
    """Peak memory (MiB) of one framework's training steps, in this fresh process."""
    device = torch.device(args.device)
    run = make_runners(args)[0][args.frameworks[0]]
    for i in range(args.warmup + 1):
        run(i)
    if device.type == "cpu":
        return peak_rss_mib()
    return torch.accelerator.max_memory_allocated(device) / 2**20


def peak_rss_mib() -> float:
    """This process's peak resident memory. Linux's VmHWM starts afresh at exec; ru_maxrss does not
    (a spawned child would inherit its parent's peak), so it is only the fallback elsewhere."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB -> MiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # bytes on macOS


def _worker(args: argparse.Namespace, queue: mp.Queue) -> None:
    queue.put(measure_memory(args))


def memory_in_fresh_process(args: argparse.Namespace) -> float:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def muon_shares(rows: list[dict]) -> dict[tuple[str, str], float]:
    """(case, framework) -> the share of a Muon step that Muon adds over AdamW, where both were run."""
    median = {(r["case"], r["framework"], r["optimizer"]): statistics.median(r["step_seconds"]) for r in rows}
    return {
        (case, framework): 1 - median[(case, framework, "adamw")] / seconds
        for (case, framework, optimizer), seconds in median.items()
        if optimizer == "muon" and (case, framework, "adamw") in median
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "base"])
    parser.add_argument("--seq-len", type=int, default=1024, help="tokens per row")
    parser.add_argument("--rows", type=int, default=4, help="rows per step (ringworld); the mixture's docs fill them")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--cases", default="dense,mixture", help="which cases to run, comma-separated")
    parser.add_argument(
        "--optimizers", default="adamw,muon", help="the optimizer both frameworks take, in turn (comma-separated)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--tokenizer", type=Path, help="tokenizer directory (default: a fresh untrained one)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.tokenizer is None:
            args.tokenizer = Path(tmp) / "tokenizer"
            build_tokenizer(args.tokenizer)
        rows = []
        for optimizer in args.optimizers.split(","):
            for case in args.cases.split(","):
                both = argparse.Namespace(
                    **{**vars(args), "case": case, "optimizer": optimizer, "frameworks": FRAMEWORKS}
                )
                speed = measure_speed(both)
                for row in speed:
                    one = argparse.Namespace(**{**vars(both), "frameworks": [row["framework"]]})
                    row["peak_memory_mib"] = memory_in_fresh_process(one)
                rows += speed
                print(f"measured {case} on {optimizer}", file=sys.stderr, flush=True)

    names = {"dense": "dense_ratio", "mixture": "packed_useful_ratio"}
    ratios = {}
    for r in rows:
        if "vs_transformers" in r:
            eager = "_eager" if "no-compile" in r["framework"] else ""
            ratios[f"{names[r['case']]}{eager}_{r['optimizer']}"] = r["vs_transformers"]
    threads = torch.get_num_threads()
    print(
        f"\n{args.preset} preset, {args.rows} rows x {args.seq_len} tokens, {args.device} {args.dtype}, "
        f"{threads} threads, torch {torch.__version__}\n"
    )
    print(
        "| case | optimizer | framework | tokens/s | useful tokens/s | padding | MFU | peak memory (MiB) "
        "| ÷ transformers |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        versus = f"{r['vs_transformers']:.2f}x" if "vs_transformers" in r else "1"
        print(
            f"| {r['case']} | {r['optimizer']} | {r['framework']} | {r['tokens_per_s']:,.0f} | "
            f"{r['useful_tokens_per_s']:,.0f} | {r['pad_fraction']:.0%} | {r['mfu']:.1%} | "
            f"{r['peak_memory_mib']:,.0f} | {versus} |"
        )
    print("\n" + "  ".join(f"{name} {value:.2f}" for name, value in ratios.items()))
    shares = muon_shares(rows)
    if shares:
        print("\nMuon's share of a step (1 - AdamW step / Muon step, median step times):")
        for (case, framework), share in shares.items():
            print(f"  {case:<8} {framework:<24} {share:.0%}")
    if args.json:
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"config": config, "results": rows, **ratios}, indent=2) + "\n")


if __name__ == "__main__":
    main()
