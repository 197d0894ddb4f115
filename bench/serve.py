"""Serving throughput: `ringworld serve` under 1, 8 and 32 concurrent clients, against the same
requests sent one at a time, then a sustained load.

    python bench/serve.py --checkpoint runs/demo/model                 # the table
    python bench/serve.py --checkpoint runs/demo/model --json serve.json --load-seconds 60

The server runs as a user runs it (`ringworld serve`, a process of its own on a free local port);
the clients are threads of this process, each with the official `openai` client, sending a mix of
requests: a question about a world image, a caption of one, a text question, and a drawn image
(guided, 2 cache rows). With C clients, each sends its share of the same request list back to back;
one at a time is C = 1. The levels take turns, ``--rounds`` times (1, 8, 32, 1, 8, 32): the
machine's speed drifts by tens of percent over a minute here, and turns weigh that on every level
alike. Tokens are completion tokens as the server reports them (``usage``). Latency is per
request, from sending to the whole reply.

The load test keeps 32 clients busy for ``--load-seconds`` (each going round the whole mix), counts
replies by HTTP status, and gives the steady state's tokens/s against one at a time.
Then ``bench/decode.py`` runs on the same checkpoint (batch-1 decoding against HF transformers); for a run
imported by ``ringworld import hf`` (an Emu3 draws; a Chameleon's image requests get 400s),
``bench/hf_families.py`` makes that comparison instead.
`--json FILE` writes ``concurrency32_speedup`` (tokens/s at 32 clients / one at a time),
``errors_5xx``, ``batch1_ratio`` (the decode path the server used: compiled unless ``--no-compile``;
also ``batch1_ratio_eager`` and ``batch1_ratio_compiled``) and the per-concurrency rows.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from ringworld.cli.common import positive_int
from ringworld.infer.imported import is_imported
from ringworld.world.sim import random_state, render


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_uri(seed: int) -> str:
    buffer = io.BytesIO()
    PILImage.fromarray(render(random_state(np.random.default_rng(seed)))).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def workload(n: int) -> list[tuple[str, dict]]:
    """``n`` requests: (kind, arguments of the openai call), the same list every run."""
    out = []
    for i in range(n):
        image = [{"type": "image_url", "image_url": {"url": data_uri(i)}}]
        kind = ("ask", "caption", "text", "draw")[i % 4]
        if kind == "ask":
            content = [*image, {"type": "text", "text": "what colour is the square?"}]
        elif kind == "caption":
            content = image
        elif kind == "text":
            content = "where is the red circle?"
        if kind == "draw":
            out.append(
                (kind, {"prompt": f"a blue square near the {('top', 'bottom')[i % 2]} left", "extra_body": {"seed": i}})
            )
        else:
            out.append((kind, {"messages": [{"role": "user", "content": content}], "max_tokens": 32}))
    return out


def send(client, kind: str, args: dict) -> tuple[int, float, int]:
    """(completion tokens, seconds, HTTP status) of one request."""
    import openai

    start = time.perf_counter()
    try:
        if kind == "draw":
            tokens = client.images.generate(model="ringworld", **args).usage.output_tokens
        else:
            tokens = client.chat.completions.create(model="ringworld", **args).usage.completion_tokens
        return tokens, time.perf_counter() - start, 200
    except openai.APIStatusError as e:
        return 0, time.perf_counter() - start, e.status_code


def send_all(client, requests: list[tuple[str, dict]], clients: int) -> tuple[list[tuple[int, float, int]], float]:
    """Every request sent by ``clients`` clients at once: each one's ``send`` result, and the seconds taken."""
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda r: send(client, *r), requests))
    return results, time.perf_counter() - start


def summarize(clients: int, results: list[tuple[int, float, int]], seconds: float) -> dict:
    latencies = sorted(s for _, s, _ in results)
    return {
        "clients": clients,
        "requests": len(results),
        "seconds": seconds,
        "requests_per_s": len(results) / seconds,
        "tokens_per_s": sum(t for t, _, _ in results) / seconds,
        "p50_ms": 1e3 * statistics.median(latencies),
        "p99_ms": 1e3 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "errors": dict(Counter(code for _, _, code in results if code != 200)),
    }


def measure_levels(client, requests: list[tuple[str, dict]], levels: tuple[int, ...], rounds: int) -> list[dict]:
    """Each level's figures over ``rounds`` sendings of ``requests``, the levels taking turns in every
    round, so that a change in the machine's speed during the run weighs on every level alike."""
    results: dict[int, list] = {c: [] for c in levels}
    seconds = dict.fromkeys(levels, 0.0)
    for _ in range(rounds):
        for c in levels:
            done, took = send_all(client, requests, c)
            results[c] += done
            seconds[c] += took
    return [summarize(c, results[c], seconds[c]) for c in levels]


def load(client, seconds: float, clients: int) -> tuple[Counter, int]:
    """Every client sends requests back to back for ``seconds``: replies counted by status, and the
    completion tokens of those that succeeded."""
    deadline = time.perf_counter() + seconds
    requests = workload(64)

    def one_client(k: int) -> tuple[Counter, int]:  # each client goes round the whole mix, from its own start
        statuses, tokens, i = Counter(), 0, k
        while time.perf_counter() < deadline:
            made, _, status = send(client, *requests[i % len(requests)])
            statuses[status] += 1
            tokens += made
            i += 1
        return statuses, tokens

    with ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(one_client, range(clients)))
    return sum((c for c, _ in done), Counter()), sum(t for _, t in done)


def decode_ratios(checkpoint: Path, compile: bool) -> dict:
    """bench/decode.py on ``checkpoint``: batch-1 decoding against HF transformers, printed and returned."""
    with tempfile.TemporaryDirectory() as tmp:
        decode = [sys.executable, str(Path(__file__).parent / "decode.py"), "--checkpoint", str(checkpoint)]
        subprocess.run([*decode, "--compile", "--json", f"{tmp}/decode.json"], check=True, capture_output=True)
        ratios = json.loads(Path(f"{tmp}/decode.json").read_text())
    print(
        f"\ndecode at batch 1 against HF transformers: {ratios['batch1_ratio_compiled']:.2f}x compiled "
        f"(the default), {ratios['batch1_ratio']:.2f}x eager (bench/decode.py)"
    )
    return {  # batch1_ratio: the path the server decodes with (compiled, unless --no-compile)
        "batch1_ratio": ratios["batch1_ratio_compiled" if compile else "batch1_ratio"],
        "batch1_ratio_eager": ratios["batch1_ratio"],
        "batch1_ratio_compiled": ratios["batch1_ratio_compiled"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/demo/model"), help="the run to serve")
    parser.add_argument(
        "--requests",
        type=positive_int,
        default=256,
        help="requests per concurrency level in each round (default: 256, 8 per client at 32)",
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=2,
        help="rounds of every level in turn (1, 8, 32, 1, 8, 32, ...); a level's figures are over all (default: 2)",
    )
    parser.add_argument("--load-seconds", type=float, default=60.0, help="the sustained load test (0: skip)")
    parser.add_argument("--rows", type=int, default=32, help="the server's --rows")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the server's --compile (default: on, as `ringworld serve` runs)",
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    import openai

    port = free_port()
    command = [sys.executable, "-m", "ringworld", "serve", "--checkpoint", str(args.checkpoint), "--port", str(port)]
    command += ["--rows", str(args.rows), "--max-requests", "256", "--compile" if args.compile else "--no-compile"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.perf_counter() + 600  # loading, and compiling the decode step
        while time.perf_counter() < deadline:
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                if server.poll() is not None:
                    sys.exit(f"the server did not start:\n{server.stderr.read()}")
                time.sleep(0.2)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
        requests = workload(args.requests)
        send_all(client, requests[:8], 8)  # warm up
        rows = measure_levels(client, requests, (1, 8, 32), args.rounds)
        mix = "ask, caption, text, draw in turn"
        print(
            f"\n{args.checkpoint}, {args.requests} requests ({mix}) a level in each of {args.rounds} rounds, "
            f"server --rows {args.rows}\n"
        )
        print("| clients | requests/s | tokens/s | p50 ms | p99 ms | errors | ÷ one at a time (tokens/s) |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            speedup = r["tokens_per_s"] / rows[0]["tokens_per_s"]
            print(
                f"| {r['clients']} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:,.0f} | {r['p50_ms']:,.0f} | "
                f"{r['p99_ms']:,.0f} | {r['errors'] or 0} | {speedup:.2f}x |"
            )
        result = {"rows": rows, "concurrency32_speedup": rows[2]["tokens_per_s"] / rows[0]["tokens_per_s"]}
        if args.load_seconds > 0:
            start = time.perf_counter()
            statuses, tokens = load(client, args.load_seconds, 32)
            rate = tokens / (time.perf_counter() - start)
            result["load"] = {"seconds": args.load_seconds, "clients": 32, "statuses": dict(statuses)}
            result["load"] |= {"tokens_per_s": rate, "vs_one_at_a_time": rate / rows[0]["tokens_per_s"]}
            result["errors_5xx"] = sum(n for code, n in statuses.items() if code >= 500)
            print(
                f"\nload: 32 clients for {args.load_seconds:g} s: replies by status {dict(statuses)}; "
                f"{rate:,.0f} tokens/s, {rate / rows[0]['tokens_per_s']:.2f}x one at a time"
            )
        if is_imported(args.checkpoint):
            print("\nan imported run: bench/hf_families.py compares its decoding with transformers' generate")
        else:
            result |= decode_ratios(args.checkpoint, args.compile)
        errors = result.get("errors_5xx", "-")
        print(f"\nconcurrency32_speedup {result['concurrency32_speedup']:.2f}  errors_5xx {errors}")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
