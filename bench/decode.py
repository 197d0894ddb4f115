"""Decoding speed: ringworld's inference engine against Hugging Face transformers' ``generate``, on the
same weights (``ringworld.model.hf.to_hf``: a LlamaForCausalLM, or a Qwen3ForCausalLM with QK-norm),
in one process.

    python bench/decode.py                          # tiny preset, untrained, CPU fp32, 128 new tokens
    python bench/decode.py --json results.json      # also write the figures
    python bench/decode.py --no-compile             # without ringworld's compiled decode step
    python bench/decode.py --device cuda --dtype bf16 --preset small
    python bench/decode.py --checkpoint runs/demo   # a trained run's model and tokenizer

Three cases:
(a) batch 1 and (b) batch 8: greedy decoding of ``--new-tokens`` tokens after a ``--prompt-tokens``
    text prompt (every row a different caption, all of the same length: no padding), unconstrained
    and with no stop token, so both frameworks make exactly the same number of tokens. transformers:
    ``generate(max_new_tokens=N, min_new_tokens=N, do_sample=False, use_cache=True, eos_token_id=None)``.
    The two frameworks' greedy tokens are compared (``greedy_match``); untrained weights give nearly
    tied logits, so a few late tokens may differ from float rounding alone.
(c) one guided image: ringworld makes one image for a caption with classifier-free guidance (scale
    ``--guidance``, the unconditional prompt ``<|bos|> <|image|>``), constrained to the image layout:
    h x (w + 1) + 1 tokens in a batch of 2 rows (conditional + unconditional). transformers has no
    batched guidance or layout constraints, so it is given the same forward work only: the same 2
    rows (the unconditional one left-padded, with an attention mask), greedy, the same number of
    tokens, without mixing the rows' logits and without constraints.

Every measurement is one whole ``generate`` call (prefill included), synchronized on accelerators;
each case is run once untimed per framework (the warm-up, which also compiles), then ``--repeats``
times per framework, the frameworks interleaved with their order swapped each repeat, so a machine
whose speed drifts does not favour either. Tokens/s and ms are medians over repeats. The ratios
(``batch1_ratio``, ``batch8_ratio``: ringworld ÷ transformers tokens/s; ``guided_image_ratio``:
transformers ms ÷ ringworld ms; above 1 means ringworld is faster) are medians of the paired
per-repeat ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ringworld.documents import Text
from ringworld.infer.engine import Engine
from ringworld.infer.sampling import GREEDY
from ringworld.model.hf import to_hf
from ringworld.model.transformer import ModelConfig, Transformer
from ringworld.perf import synchronize
from ringworld.tokens.bundle import load_codec, save_tokenizers
from ringworld.tokens.codec import Codec

TRANSFORMERS = "transformers"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CASES = {  # case: (rows, JSON key stem)
    "batch 1": (1, "batch1"),
    "batch 8": (8, "batch8"),
    "guided image": (1, "guided_image"),
}


def build_tokenizer(directory: Path) -> None:
    """Token ids are all the benchmark needs: real BPE, an untrained vision autoencoder (as the tests do)."""
    from ringworld.tokens.text import train_text_tokenizer
    from ringworld.tokens.vision import VisionConfig, VisionTokenizer
    from ringworld.world.tasks import caption_corpus

    torch.manual_seed(0)
    text = train_text_tokenizer(caption_corpus(300, seed=0), vocab_size=400)
    save_tokenizers(directory, text, VisionTokenizer(VisionConfig(channels=8, blocks=0)).eval())


def load_model(args: argparse.Namespace, tmp: Path) -> tuple[Transformer, Codec, str]:
    """The model and codec to decode with, and a line saying what they are."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if args.checkpoint is not None:
        from ringworld.infer.tasks import load_world_model

        wm = load_world_model(args.checkpoint, device)
        model, codec, what = wm.engine.model, wm.codec, f"checkpoint {wm.checkpoint}"
    else:
        directory = tmp / "tokenizer"
        build_tokenizer(directory)
        codec = load_codec(directory, device=device)
        needed = args.prompt_tokens + max(args.new_tokens, codec.image_length)
        cfg = ModelConfig.preset(args.preset, codec.vocab.size)
        if needed > cfg.max_seq_len:
            cfg = ModelConfig.preset(args.preset, codec.vocab.size, max_seq_len=needed)
        torch.manual_seed(0)
        model, what = Transformer(cfg), f"{args.preset} preset (untrained)"
    return model.to(device=device, dtype=dtype).eval(), codec, what


def text_prompts(codec: Codec, rows: int, length: int) -> list[np.ndarray]:
    """``rows`` different prompts of exactly ``length`` ids: <|bos|> and the start of some captions."""
    from ringworld.world.tasks import caption_corpus

    corpus = caption_corpus(rows + 16, seed=1)[::3]  # captions only (the corpus interleaves Q and A)
    prompts = []
    for r in range(rows):
        text, i = corpus[r], r + 1
        while len(ids := codec.encode([Text(text)]).ids[:-1]) < length:  # [:-1]: without <|eos|>
            text, i = f"{text} {corpus[i % len(corpus)]}", i + 1
        prompts.append(ids[:length])
    return prompts


def padded_rows(tokens: list[np.ndarray], n: int) -> np.ndarray:
    """(rows, n) ids, -1 past a row's end: rows are shorter than n only when the engine cut them short."""
    out = np.full((len(tokens), n), -1, dtype=np.int64)
    for r, row in enumerate(tokens):
        out[r, : len(row)] = row
    return out


def left_padded(rows: list[np.ndarray], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask) of rows left-padded to the longest, as transformers wants for generate."""
    longest = max(map(len, rows))
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, longest - len(row) :] = torch.as_tensor(row)
        mask[r, longest - len(row) :] = 1
    return ids.to(device), mask.to(device)


def make_cases(args: argparse.Namespace, model: Transformer, codec: Codec) -> tuple[dict, dict]:
    """Per case, per framework: a function that runs one generate call and returns the new ids
    ((rows, N) numpy); and per case the number of new tokens one call makes."""
    device = torch.device(args.device)
    sp = codec.vocab.special
    pad = sp("<|pad|>")
    engines = {"ringworld": Engine(model, codec)}
    if args.compile:
        engines["ringworld (compiled)"] = Engine(model, codec, compile=True)
    hf = to_hf(model).to(device=device, dtype=model.embed.weight.dtype).eval()

    def hf_generate(ids: torch.Tensor, mask: torch.Tensor, n: int) -> np.ndarray:
        out = hf.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            use_cache=True,
            pad_token_id=pad,
            eos_token_id=None,
        )
        return out[:, ids.size(1) :].cpu().numpy()

    cases, made = {}, {}
    n = args.new_tokens
    for case in ("batch 1", "batch 8"):
        rows = CASES[case][0]
        prompts = text_prompts(codec, rows, args.prompt_tokens)
        runners: dict[str, Callable[[], np.ndarray]] = {}
        for name, engine in engines.items():

            def ours(engine=engine, prompts=prompts) -> np.ndarray:
                gen = engine.generate(prompts, max_new_tokens=n, sampling=GREEDY, stop=[], constrained=False)
                return padded_rows(gen.tokens, n)

            runners[name] = ours
        ids, mask = left_padded(prompts, pad, device)
        runners[TRANSFORMERS] = lambda ids=ids, mask=mask: hf_generate(ids, mask, n)
        cases[case], made[case] = runners, rows * n

    h, w = codec.grid
    image_tokens = h * (w + 1) + 1  # the body and <|/image|>
    from ringworld.world.tasks import caption_corpus

    caption = codec.encode([Text(caption_corpus(1, seed=1)[0])]).ids[:-1]  # one whole caption, no <|eos|>
    cond = np.r_[caption, sp("<|image|>")]
    uncond = np.array([sp("<|bos|>"), sp("<|image|>")])
    runners = {}
    for name, engine in engines.items():

        def guided(engine=engine) -> np.ndarray:
            gen = engine.generate(
                [cond],
                max_new_tokens=image_tokens,
                sampling=GREEDY,
                guidance=args.guidance,
                uncond_prompts=[uncond],
                constrained=True,
                stop=[sp("<|/image|>")],
            )
            return padded_rows(gen.tokens, image_tokens)

        runners[name] = guided
    ids, mask = left_padded([cond, uncond], pad, device)
    runners[TRANSFORMERS] = lambda: hf_generate(ids, mask, image_tokens)
    cases["guided image"], made["guided image"] = runners, image_tokens
    return cases, made


def measure(runners: dict[str, Callable[[], np.ndarray]], repeats: int, device: torch.device) -> tuple[dict, dict]:
    """Seconds per call of every framework, interleaved, order swapped each repeat; and the warm-up's ids."""
    outputs = {}
    for name, run in runners.items():  # warm up (and compile)
        outputs[name] = run()
        synchronize(device)
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(repeats):
        for name in list(runners) if r % 2 == 0 else list(reversed(runners)):
            synchronize(device)
            start = time.perf_counter()
            runners[name]()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return seconds, outputs


def agreement(ours: np.ndarray, theirs: np.ndarray) -> dict:
    """How far two greedy continuations (rows, N) agree."""
    same = ours == theirs
    differ = np.flatnonzero(~same.all(0))
    return {
        "identical": bool(same.all()),
        "equal_tokens": int(same.sum()),
        "tokens": int(same.size),
        "first_difference": int(differ[0]) if len(differ) else None,
    }


def summarize(
    case: str, seconds: dict, outputs: dict, made: int, codec: Codec, rows: list, figures: dict, matches: dict
) -> None:
    """Add one case's table rows, its JSON figures and (text cases) how far the greedy tokens agree."""
    stem, guided = CASES[case][1], case == "guided image"
    speeds = {}
    for name, times in seconds.items():
        median = statistics.median(times)
        row = {"case": case, "framework": name, "tokens": made, "seconds": times}
        row |= {"tokens_per_s": made / median, "ms": 1000 * median}
        speeds[name] = row["ms"] if guided else row["tokens_per_s"]
        rows.append(row)
        if name == TRANSFORMERS:
            continue
        # both made the same tokens: the ratio of times is the ratio of speeds, paired per repeat
        paired = [hf / ours for ours, hf in zip(times, seconds[TRANSFORMERS], strict=True)]
        row["vs_transformers"] = statistics.median(paired)
        suffix = "_compiled" if "compiled" in name else ""
        figures[f"{stem}_ratio{suffix}"] = row["vs_transformers"]
        if not guided:
            matches[f"{stem}{suffix}"] = agreement(outputs[name], outputs[TRANSFORMERS])
            if (outputs[name] < 0).any():
                print(f"warning: {name} returned fewer than the {made} tokens it made at {case}", file=sys.stderr)
        elif (outputs[name] < 0).any() or outputs[name][0, -1] != codec.vocab.special("<|/image|>"):
            print(f"warning: {name} made no complete image: {outputs[name].tolist()}", file=sys.stderr)
    figures[f"{stem}_ms" if guided else f"{stem}_tokens_per_s"] = speeds


def environment(args: argparse.Namespace, model: Transformer, what: str) -> dict:
    import transformers

    device = torch.device(args.device)
    if device.type == "cpu":
        hardware = platform.processor() or platform.machine()
    else:
        hardware = torch.accelerator.current_accelerator().type
        if device.type == "cuda":
            hardware = torch.cuda.get_device_name(device)
    return {
        "model": what,
        "hf_class": "Qwen3ForCausalLM" if model.cfg.qk_norm else "LlamaForCausalLM",
        "params": model.cfg.num_params(),
        "device": args.device,
        "hardware": hardware,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "base"], help="untrained model size")
    parser.add_argument("--checkpoint", metavar="RUN", help="a trained run (or checkpoint) instead of --preset")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per row in the batch cases")
    parser.add_argument("--prompt-tokens", type=int, default=20, help="ids in every text prompt, <|bos|> included")
    parser.add_argument("--guidance", type=float, default=3.0, help="guidance scale of the guided-image case")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case and framework")
    stems = {stem: case for case, (_, stem) in CASES.items()}
    parser.add_argument("--cases", default=",".join(stems), help=f"which cases, comma-separated ({','.join(stems)})")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time ringworld with its decode step compiled, as `ringworld serve` decodes (default: on)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), help="fp32 on cpu, bf16 on an accelerator by default")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own choice)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    chosen = [c.strip() for c in args.cases.split(",")]
    if unknown := [c for c in chosen if c not in stems]:
        parser.error(f"unknown cases {unknown}; cases are {','.join(stems)}")
    cases = [stems[c] for c in chosen]
    if args.new_tokens < 1 or args.repeats < 1 or args.prompt_tokens < 1:
        parser.error("--new-tokens, --repeats and --prompt-tokens must be >= 1")
    args.dtype = args.dtype or ("fp32" if torch.device(args.device).type == "cpu" else "bf16")
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()  # generate's advice about eos and generation flags
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        model, codec, what = load_model(args, Path(tmp))
        runners, made = make_cases(args, model, codec)
        rows, figures, matches = [], {}, {}
        for case in cases:
            seconds, outputs = measure(runners[case], args.repeats, device)
            summarize(case, seconds, outputs, made[case], codec, rows, figures, matches)
            print(f"measured {case}", file=sys.stderr, flush=True)

    env = environment(args, model, what)
    print(
        f"\n{env['model']}, {env['params'] / 1e6:.1f}M weights ({env['hf_class']} in transformers), "
        f"{args.device} {args.dtype} ({env['hardware']}), {env['threads']} threads, torch {env['torch']}, "
        f"transformers {env['transformers']}; {args.prompt_tokens}-token prompts, {args.new_tokens} new tokens, "
        f"medians of {args.repeats}\n"
    )
    print("| case | framework | new tokens | tokens/s | ms per call | speed ÷ transformers |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        versus = f"{r['vs_transformers']:.2f}x" if "vs_transformers" in r else "1"
        framework = r["framework"]
        if r["case"] == "guided image" and framework == TRANSFORMERS:
            framework = "transformers, 2 rows, no CFG mixing/constraints"
        print(f"| {r['case']} | {framework} | {r['tokens']} | {r['tokens_per_s']:,.0f} | {r['ms']:,.1f} | {versus} |")
    if "guided image" in cases:
        print(
            "\nguided image: ringworld decodes the conditional and the unconditional row together, mixes their "
            f"logits (scale {args.guidance}) and constrains the layout; transformers runs the same 2 rows "
            "(unconditional left-padded) greedily, without mixing or constraints: the same forward work, "
            "none of the guidance logic."
        )
    for key, m in matches.items():
        if m["identical"]:
            verdict = "identical"
        else:
            verdict = f"differ from new token {m['first_difference']} on ({m['equal_tokens']}/{m['tokens']} equal)"
        label = key.replace("batch", "batch ").replace("_compiled", ", compiled")
        print(f"greedy tokens at {label}, ringworld vs transformers: {verdict}")
    ratios = {k: v for k, v in figures.items() if k.endswith(("_ratio", "_ratio_compiled"))}
    print("\n" + "  ".join(f"{name} {value:.2f}" for name, value in ratios.items()))
    if args.json:
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        out = {"config": config, "environment": env, **figures, "greedy_match": matches, "results": rows}
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
