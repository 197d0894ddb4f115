"""`ringworld serve`: a world model behind an OpenAI-compatible HTTP API, many clients in one batch."""

from __future__ import annotations

import argparse
from pathlib import Path

from ringworld.cli.common import positive_int


def add_parsers(commands) -> None:
    from ringworld.serve.app import Limits

    d = Limits()
    serve = commands.add_parser(
        "serve",
        help="serve a world model over HTTP (OpenAI-compatible)",
        description="Serve a checkpoint: GET /health and /v1/models, POST /v1/chat/completions (captions, "
        "questions about an image or a GIF, text; stream: true for server-sent events), "
        "/v1/images/generations, /v1/videos (then GET /v1/videos/ID/content) and /v1/world/rollout (frames "
        "and actions or steps in, predicted frames out). Requests from every client are decoded together in one batch "
        "(continuous batching): each joins the running batch when it arrives and leaves when it is done. "
        "The model decodes in a process of its own, started before the server listens. "
        "A run imported by `ringworld import hf` serves chat (text, or one image and text) and, where its family "
        "draws (Emu3), /v1/images/generations; videos and rollouts are ringworld's own. "
        "Binds to 127.0.0.1 unless --host says otherwise.",
    )
    serve.add_argument("--checkpoint", type=Path, required=True, help="a run directory or a checkpoint")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument("--device", help="cpu, cuda, ... (default: the accelerator if any, else cpu)")
    serve.add_argument("--name", default="ringworld", help="the model's name in the API (default: ringworld)")
    serve.add_argument(
        "--rows", type=positive_int, default=32, help="KV-cache rows: requests decoded at once (default: 32)"
    )
    serve.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="decode with compiled steps, compiled before serving starts (20-40 s on a 2-core CPU); then "
        "about 2x the tokens/s for one client at a time and 1.15-1.25x at 32 clients on the demo model "
        "(docs/results.md); --no-compile serves as soon as the model is loaded (default: on)",
    )
    serve.add_argument(
        "--max-requests",
        type=positive_int,
        default=64,
        help="requests held, running or queued; more get 429 (default: 64)",
    )
    serve.add_argument(
        "--max-tokens",
        type=positive_int,
        default=d.max_tokens,
        help=f"largest max_tokens a chat may ask (default: {d.max_tokens})",
    )
    serve.add_argument(
        "--max-body-mb",
        type=float,
        default=d.max_body_bytes / 2**20,
        help=f"largest request body (default: {d.max_body_bytes >> 20})",
    )
    serve.add_argument(
        "--timeout", type=float, default=d.timeout_s, help=f"seconds a request may take (default: {d.timeout_s:g})"
    )
    serve.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from ringworld.serve.app import Limits, make_app
    from ringworld.serve.fronts import load_front
    from ringworld.serve.worker import ProcessWorker

    front = load_front(args.checkpoint, args.device)  # this process's: for checks and for media
    what = "loading the model's process and compiling its decode and prompt steps (--no-compile skips this)"
    print(f"{what} ..." if args.compile else "loading the model's process ...", flush=True)
    worker = ProcessWorker(
        front.checkpoint,
        front.engine,
        device=args.device,
        rows=args.rows,
        compile=args.compile,
        max_requests=args.max_requests,
    )
    print(f"the model is ready in {worker.start_s:.1f} s", flush=True)
    limits = Limits(max_body_bytes=int(args.max_body_mb * 2**20), max_tokens=args.max_tokens, timeout_s=args.timeout)
    app = make_app(front, worker, name=args.name, limits=limits)
    print(f"serving {front.checkpoint} as {args.name!r} on http://{args.host}:{args.port}")
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        worker.close()
