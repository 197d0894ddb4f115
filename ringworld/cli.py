"""The `ringworld` command. Each subcommand's --help says what it does and what it writes."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

DESCRIPTION = """\
ringworld: one decoder-only transformer over text, image, video and action tokens.

The built-in sprite world makes its own data, so everything runs offline:
  ringworld world sample --out runs/samples      look at the world (PNG, GIF, JSONL)
  ringworld tokenizer train --out runs/tok       train the text BPE and the vision tokenizer
  ringworld data ingest FOLDER --tokenizer runs/tok --out runs/shards   your images/videos -> token shards
  ringworld train --tokenizer runs/tok --out runs/model   train the world model (torchrun for many processes)
  ringworld generate image "a red circle in the top left" --checkpoint runs/model --out img.png
  ringworld caption img.png --checkpoint runs/model           describe an image
  ringworld predict clip.gif --actions right,up --checkpoint runs/model --out future.gif
  ringworld ask clip.gif "what colour is the square?" --checkpoint runs/model
  ringworld eval --checkpoint runs/model --json eval.json --report runs/report   oracle-scored metrics
  ringworld eval needle --checkpoint runs/model --lengths 1k,4k --plot needle.png   needle in a haystack
  ringworld demo --out runs/demo                 all of it on the built-in world, in minutes on a CPU
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"levels are comma-separated integers like 8,5,5,5, got {text!r}") from None
    return levels


def _world_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frame-size", type=int, default=32, help="frame side in pixels, 16 to 256 (default: 32)")
    p.add_argument(
        "--max-objects", type=_positive_int, default=3, help="at most this many objects a scene (default: 3)"
    )
    p.add_argument("--object-size", type=int, default=0, help="sprite side in pixels; 0 = frame size / 4 (default: 0)")
    p.add_argument(
        "--snap",
        type=int,
        default=0,
        help="positions and speeds are multiples of this many pixels; 0 = half a sprite, 1 = any pixel (default: 0)",
    )
    p.add_argument("--gap", type=int, default=1, help="pixels objects keep between them (default: 1)")


def _world_config(args: argparse.Namespace):
    from ringworld.world.sim import WorldConfig

    return WorldConfig(
        frame_size=args.frame_size,
        max_objects=args.max_objects,
        object_size=args.object_size,
        snap=args.snap,
        gap=args.gap,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ringworld", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    world = commands.add_parser("world", help="the built-in sprite world").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    sample = world.add_parser(
        "sample",
        help="write world samples to look at",
        description="Write N episodes of the sprite world: images/*.png (first frame), videos/*.gif (a "
        "rollout), contact_sheet.png, and samples.jsonl with every state, captions, a question and its answer.",
    )
    sample.add_argument("--out", type=Path, required=True, help="output folder")
    sample.add_argument("--n", type=_positive_int, default=16, help="episodes (default: 16)")
    sample.add_argument("--frames", type=_positive_int, default=8, help="frames per episode (default: 8)")
    sample.add_argument("--scale", type=_positive_int, default=4, help="upscale factor for the files (default: 4)")
    sample.add_argument("--seed", type=int, default=0)
    _world_args(sample)
    sample.set_defaults(run=_world_sample)

    tokenizer = commands.add_parser("tokenizer", help="train and check the tokenizers").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    train = tokenizer.add_parser(
        "train",
        help="train the text BPE and the vision tokenizer on the world",
        description="Train byte-level BPE on world captions and questions, and the FSQ vision autoencoder on "
        "world frames; then measure PSNR, oracle agreement and codebook use on held-out frames. Writes OUT/"
        "tokenizer.json, OUT/vision/{config.json,model.safetensors}, OUT/vocab.json and OUT/metrics.json "
        "(atomically: an interrupted run leaves an earlier OUT as it was).",
    )
    train.add_argument("--out", type=Path, required=True, help="output folder")
    train.add_argument(
        "--max-seconds",
        type=float,
        default=240.0,
        help="time budget for the vision training, the LR schedule fitted to it; 0 = no budget, "
        "train exactly --steps steps (default: 240)",
    )
    train.add_argument("--steps", type=_positive_int, default=6000, help="at most this many steps (default: 6000)")
    train.add_argument("--lr", type=float, default=5e-3, help="peak learning rate (default: 5e-3)")
    train.add_argument("--batch-size", type=_positive_int, default=64, help="frames per step (default: 64)")
    train.add_argument("--patch", type=_positive_int, default=4, help="pixels per code along each side (default: 4)")
    train.add_argument(
        "--levels",
        type=_levels,
        default=(8, 5, 5, 5),
        help="FSQ levels; the codebook size is their product (default: 8,5,5,5)",
    )
    train.add_argument("--channels", type=_positive_int, default=64, help="autoencoder width (default: 64)")
    train.add_argument(
        "--kernel",
        type=int,
        choices=[1, 3],
        default=3,
        help="3: codes see their neighbouring patches; 1: each code depends on its own patch only (default: 3)",
    )
    train.add_argument("--text-vocab", type=_positive_int, default=512, help="BPE vocabulary size (default: 512)")
    train.add_argument("--seed", type=int, default=0)
    _world_args(train)
    train.set_defaults(run=_tokenizer_train)

    check = tokenizer.add_parser(
        "eval",
        help="measure a trained tokenizer on held-out world frames",
        description="Print PSNR, oracle agreement and codebook use of a tokenizer folder on held-out world frames.",
    )
    check.add_argument("tokenizer", type=Path, help="folder written by `ringworld tokenizer train`")
    check.add_argument("--frames", type=_positive_int, default=2000, help="held-out frames (default: 2000)")
    check.set_defaults(run=_tokenizer_eval)

    data = commands.add_parser("data", help="turn your images and videos into token shards").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    ingest = data.add_parser(
        "ingest",
        help="images/videos + captions.jsonl -> token shards",
        description="Read every image (PNG/JPEG/...) and video (MP4/GIF/...) under SOURCE, centre-crop and resize "
        "to the tokenizer's frame size, pair each with its caption from captions.jsonl (lines "
        '{"file": "relative/path", "caption": "..."}), and write token shards (memmap + index.json) to OUT. '
        "Unreadable files are reported by name and skipped.",
    )
    ingest.add_argument("source", type=Path, help="folder of images and videos")
    ingest.add_argument("--tokenizer", type=Path, required=True, help="folder written by `ringworld tokenizer train`")
    ingest.add_argument("--out", type=Path, required=True, help="output folder for the shards")
    ingest.add_argument("--captions", type=Path, default=None, help="captions JSONL (default: SOURCE/captions.jsonl)")
    ingest.add_argument("--max-frames", type=_positive_int, default=8, help="frames kept per video (default: 8)")
    ingest.add_argument("--stride", type=_positive_int, default=1, help="keep every Nth video frame (default: 1)")
    ingest.set_defaults(run=_data_ingest)

    _train_parser(commands)
    _inference_parsers(commands)

    demo = commands.add_parser(
        "demo",
        help="the main job on the built-in world",
        description="Sample the world, train the tokenizers, train the tiny world model, evaluate it with the "
        "oracle and write an HTML report: OUT/samples, OUT/tokenizer, OUT/model, OUT/eval.json, OUT/report/"
        "report.html and OUT/summary.json. About 15 minutes on a 2-core CPU.",
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    demo.add_argument(
        "--tokenizer-seconds", type=float, default=None, help="vision tokenizer time budget [the demo's default]"
    )
    demo.add_argument(
        "--train-seconds", type=float, default=None, help="model training time budget [the demo's default]"
    )
    demo.add_argument("--samples", type=_positive_int, default=None, help="eval episodes per task [the demo's default]")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    return parser


def _sampling_args(p: argparse.ArgumentParser, *, guidance: bool) -> None:
    p.add_argument(
        "--checkpoint", type=Path, required=True, help="a run directory (its latest checkpoint) or a checkpoint"
    )
    p.add_argument("--device", help="cpu, cuda, ... (default: the accelerator if any, else cpu)")
    _sampling_options(p, "--seed", drawn=guidance)
    if guidance:
        p.add_argument(
            "--guidance", type=float, default=3.0, help="classifier-free guidance scale; 1 = off (default: 3)"
        )


def _sampling_options(p, seed_flag: str, *, drawn: bool) -> None:
    """--temperature, --top-k, --top-p and a seed; unset, they default to ``drawn`` (images and
    videos: ringworld.infer.tasks.DRAWING) or greedy decoding (text, predictions)."""
    default = "the drawing default: temperature 1, no cut" if drawn else "greedy"
    p.add_argument("--temperature", type=float, help=f"0 = greedy (default: {default})")
    p.add_argument("--top-k", type=int, help="sample among the k most likely ids; 0 = all")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass; 1 = off")
    p.add_argument(seed_flag, type=int, dest="sampling_seed", help="sampling seed (default: 0)")


def _media_out(p: argparse.ArgumentParser, default_scale: int = 4) -> None:
    p.add_argument("--out", type=Path, required=True, help="file to write (.png for images; .gif or .mp4 for videos)")
    p.add_argument(
        "--scale", type=_positive_int, default=default_scale, help=f"upscale for viewing (default: {default_scale})"
    )


def _actions(text: str) -> list[str]:
    from ringworld.documents import ACTIONS

    names = [a.strip() for a in text.split(",") if a.strip()]
    bad = [a for a in names if a not in ACTIONS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"actions are a comma-separated list of {', '.join(ACTIONS)}; got {text!r}")
    return names


def _inference_parsers(commands) -> None:
    generate = commands.add_parser("generate", help="draw an image or a video from a caption").add_subparsers(
        dest="action", metavar="KIND", required=True
    )
    image = generate.add_parser(
        "image",
        help="text -> image",
        description="Generate one image from a caption with the world model (constrained decoding: the image "
        "always decodes), guided by classifier-free guidance.",
    )
    image.add_argument("prompt", help='a caption, e.g. "a red circle in the top left"')
    _media_out(image)
    _sampling_args(image, guidance=True)
    image.set_defaults(run=_generate_image)
    video = generate.add_parser(
        "video",
        help="text -> video",
        description="Generate a video from a caption. Past the length of the videos the model was trained on, "
        "it goes on as a rollout from its last frames.",
    )
    video.add_argument("prompt", help='a caption with motion, e.g. "a blue square moving right"')
    video.add_argument("--frames", type=_positive_int, default=8, help="frames (default: 8)")
    video.add_argument("--fps", type=float, default=4.0, help="frames per second of the file (default: 4)")
    _media_out(video)
    _sampling_args(video, guidance=True)
    video.set_defaults(run=_generate_video)

    caption = commands.add_parser(
        "caption", help="image -> text", description="Describe an image (any size: it is fitted to the model's)."
    )
    caption.add_argument("image", type=Path, help="PNG, JPEG, ... (a video: its first frame)")
    _sampling_args(caption, guidance=False)
    caption.set_defaults(run=_caption)

    predict = commands.add_parser(
        "predict",
        help="frames (+ actions) -> the frames that follow",
        description="Roll the world forward from a clip. With --actions, the agent takes them one per frame, "
        "starting from the clip's last frame; without, the clip's last frames are the context and --steps "
        "frames follow. Writes the context and the prediction as one video.",
    )
    predict.add_argument("clip", type=Path, help="a GIF/MP4 (or an image: one frame)")
    predict.add_argument("--actions", type=_actions, help="e.g. right,right,up (one frame per action)")
    predict.add_argument(
        "--steps", type=_positive_int, default=4, help="frames to predict without actions (default: 4)"
    )
    predict.add_argument("--fps", type=float, default=4.0, help="frames per second of the file (default: 4)")
    _media_out(predict)
    _sampling_args(predict, guidance=False)
    predict.set_defaults(run=_predict)

    ask = commands.add_parser(
        "ask", help="image or video + question -> answer", description="Answer a question about an image or a video."
    )
    ask.add_argument("media", type=Path, help="an image or a video")
    ask.add_argument("question", help='e.g. "what colour is the square?"')
    _sampling_args(ask, guidance=False)
    ask.set_defaults(run=_ask)

    evaluate = commands.add_parser(
        "eval",
        help="score a world model: the world suite (oracle) or needle in a haystack",
        description="world (the default): evaluate a checkpoint on held-out world episodes (the same ones\n"
        "every run): text->image, captioning, text->video, prediction per rollout step, action rollouts and\n"
        "QA, all judged by the oracle; plus perplexity per modality and the tokenizer's PSNR. --report writes\n"
        "report.html with image grids, GIFs, a table per task and plots.\n\n"
        "needle: needle in a haystack, as LWM reports it. For every context length and needle depth, ask\n"
        "--samples questions about a magic number hidden in filler text (text) and about one solid-colour\n"
        "flash frame hidden in a long world video (video); greedy answers, judged exactly. Prints a table,\n"
        "--json writes every cell and the mean accuracy per kind, --plot draws heatmaps (length x depth).\n\n"
        "  ringworld eval --checkpoint runs/model --json eval.json --report runs/report\n"
        "  ringworld eval needle --checkpoint runs/model --lengths 1k,2k,4k --depths 0,0.5,1 --plot needle.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate.add_argument(
        "suite", nargs="?", choices=["world", "needle"], default="world", help="what to evaluate (default: world)"
    )
    evaluate.add_argument("--checkpoint", type=Path, required=True, help="a run directory or a checkpoint")
    evaluate.add_argument("--json", type=Path, help="write the metrics here")
    evaluate.add_argument(
        "--samples",
        type=_positive_int,
        help="episodes per task (default: 100), questions per needle cell (default: 10)",
    )
    evaluate.add_argument("--seed", type=int, default=None, help="episode seed (default: the fixed held-out seed)")
    evaluate.add_argument("--device", help="cpu, cuda, ... (default: the accelerator if any, else cpu)")
    evaluate.add_argument(
        "--cp",
        type=_positive_int,
        default=1,
        help="prefill prompts through ring attention over this many processes; launch with "
        "torchrun --nproc_per_node N (default: 1)",
    )
    g = evaluate.add_argument_group("world suite")
    g.add_argument("--report", type=Path, help="write report.html and its media into this folder")
    g.add_argument("--horizon", type=_positive_int, help="rollout steps scored (default: 4)")
    g.add_argument("--guidance", type=float, help="guidance for generation (default: 3)")
    _sampling_options(g, "--sampling-seed", drawn=True)
    g = evaluate.add_argument_group("needle suite")
    g.add_argument(
        "--lengths",
        type=_lengths,
        help="context lengths in tokens (prompt and answer), e.g. 1k,2k,16k or 3000 (default: 1k,2k,4k)",
    )
    g.add_argument("--depths", type=_depths, help="needle depths in [0, 1], e.g. 0,0.25,0.5,0.75,1 (default: those)")
    g.add_argument("--kinds", type=_kinds, help="text, video or both (default: text,video)")
    g.add_argument("--plot", type=Path, help="write accuracy heatmaps here (PNG)")
    g.add_argument("--batch-size", type=_positive_int, help="prompts per forward (default: 4)")
    evaluate.set_defaults(run=_eval)


def _lengths(text: str) -> list[int]:
    """ "1k,2k,0.5k,3000" -> [1024, 2048, 512, 3000] (k = 1024 tokens)."""
    out = []
    for item in text.lower().split(","):
        item = item.strip()
        try:
            value = round(float(item[:-1]) * 1024) if item.endswith("k") else int(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"lengths look like 1k,2k,16k or 3000; got {item!r} in {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"lengths are positive token counts; got {item!r}")
        out.append(value)
    return out


def _depths(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"depths look like 0,0.25,0.5,0.75,1; got {text!r}") from None
    if not all(0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"depths are fractions of the haystack in [0, 1]; got {text!r}")
    return values


def _kinds(text: str) -> list[str]:
    from ringworld.world.needle import KINDS

    names = [k.strip() for k in text.split(",") if k.strip()]
    if not names or set(names) - set(KINDS):
        raise argparse.ArgumentTypeError(f"kinds are a comma-separated list of {', '.join(KINDS)}; got {text!r}")
    return names


def _task_weights(text: str) -> dict[str, float]:
    try:
        pairs = [item.split("=") for item in text.split(",")]
        return {name.strip(): float(w) for name, w in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"task weights look like text_to_image=2,qa=1; got {text!r}") from None


def _stage(text: str) -> dict:
    from ringworld.train.config import parse_stage

    try:
        return parse_stage(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _train_parser(commands) -> None:
    train = commands.add_parser(
        "train",
        help="train the world model",
        description="Train the decoder by next-token prediction on packed documents, the loss balanced "
        "between text and vision. Writes RUN/checkpoints/step_N/ (model.safetensors, config.json, "
        "tokenizer/, optimizer and sampler state), RUN/metrics.jsonl and RUN/tensorboard/. For many "
        "processes (FSDP2; gloo on CPU, nccl on CUDA): torchrun --nproc_per_node N -m ringworld train ... "
        "and with --cp C, every C processes share each row (ring attention; a dp x cp mesh). "
        "With --resume, the run's saved settings are used and any option given here overrides them. "
        "Context growth: --init-from RUN --stage 2k:2e4:200 --stage 4k:5e4:100 ... trains each stage in "
        "OUT/stage_K from the previous stage's weights.",
    )
    from ringworld.train.config import TrainConfig

    d = TrainConfig(out="")
    train.add_argument("--out", type=Path, required=True, help="run directory")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    train.add_argument("--stop-at", type=_positive_int, help="end this session at this step, with a checkpoint")
    train.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the accelerator if any, else cpu)")
    g = train.add_argument_group("data")
    g.add_argument("--tokenizer", type=Path, help="tokenizer directory from `ringworld tokenizer train`")
    g.add_argument("--data", help=f"'world' (the sprite-world task mixture) or an ingested shard directory [{d.data}]")
    g.add_argument("--tasks", type=_task_weights, help="world task weights, e.g. text_to_image=2,qa=1 [uniform]")
    g.add_argument("--video-frames", type=_positive_int, help=f"frames in world videos [{d.video_frames}]")
    g.add_argument(
        "--caption-dropout", type=float, help=f"drop prompts with this probability, for CFG [{d.caption_dropout}]"
    )
    g = train.add_argument_group("model")
    g.add_argument("--preset", choices=["tiny", "small", "base", "7b"], help=f"model size [{d.preset}]")
    g.add_argument("--depth", type=_positive_int, help="layers; width follows (64 per layer); overrides --preset")
    g.add_argument("--rope-theta", type=float, help="RoPE base [10000]")
    g.add_argument("--qk-norm", action=argparse.BooleanOptionalAction, help="RMSNorm on queries and keys [on]")
    g.add_argument("--tie-embeddings", action=argparse.BooleanOptionalAction, help="share embedding and head [off]")
    g.add_argument(
        "--kv-heads", type=_positive_int, dest="n_kv_heads", help="key/value heads (divides the heads) [half the heads]"
    )
    g.add_argument("--init-from", type=Path, help="start from this run's or checkpoint's weights (and tokenizer)")
    g = train.add_argument_group("long context")
    g.add_argument(
        "--stage",
        dest="stages",
        action="append",
        type=_stage,
        help="a context-growth stage LEN:ROPE_THETA:STEPS[:BATCH], e.g. 16k:1e6:50:1; repeat for each stage, "
        "shortest first (each starts from the previous one's weights, in OUT/stage_K)",
    )
    g.add_argument(
        "--cp", dest="context_parallel", type=_positive_int, help="processes sharing each row (ring attention) [1]"
    )
    g.add_argument(
        "--attention",
        choices=["auto", "blockwise", "documents", "mask", "flex"],
        help="attention kernel; blockwise keeps memory linear in length [auto: measured per device]",
    )
    g = train.add_argument_group("optimisation")
    g.add_argument("--seq-len", type=_positive_int, help=f"tokens per packed row [{d.seq_len}]")
    g.add_argument("--batch-size", type=_positive_int, help=f"rows per step, all processes together [{d.batch_size}]")
    g.add_argument("--grad-accum", type=_positive_int, help=f"micro-batches per step [{d.grad_accum}]")
    g.add_argument("--steps", type=_positive_int, help=f"optimizer steps [{d.steps}]")
    g.add_argument("--max-seconds", type=float, help="stop after this much training time; the schedule follows [off]")
    g.add_argument("--lr", type=float, help=f"AdamW's peak learning rate (all weights with --optimizer adamw) [{d.lr}]")
    g.add_argument("--min-lr-ratio", type=float, help=f"final lr as a fraction of the peak [{d.min_lr_ratio}]")
    g.add_argument(
        "--optimizer",
        choices=["muon", "adamw"],
        help=f"muon: Muon for the blocks' matrices and AdamW (--lr) for embeddings, head and norms [{d.optimizer}]",
    )
    g.add_argument("--muon-lr", type=float, help=f"Muon's peak learning rate [{d.muon_lr}]")
    g.add_argument("--muon-momentum", type=float, help=f"Muon's momentum [{d.muon_momentum}]")
    g.add_argument("--warmup", type=int, help=f"warmup steps [{d.warmup}]")
    g.add_argument("--weight-decay", type=float, help=f"AdamW weight decay on matrices [{d.weight_decay}]")
    g.add_argument("--grad-clip", type=float, help=f"clip the gradient norm at this [{d.grad_clip}]")
    g.add_argument("--text-weight", type=float, help=f"weight of the mean text loss [{d.text_weight}]")
    g.add_argument("--vision-weight", type=float, help=f"weight of the mean vision loss [{d.vision_weight}]")
    g.add_argument(
        "--background-weight",
        type=float,
        help="loss weight of background-code targets (the most frequent visual code), in (0, 1]; inference "
        f"undoes its bias [{d.background_weight}]",
    )
    g.add_argument("--seed", type=int, help=f"weights and data order [{d.seed}]")
    g = train.add_argument_group("speed and logging")
    g.add_argument(
        "--dtype",
        choices=["auto", "fp32", "bf16"],
        help="bf16 autocast; auto = bf16 where it is fast (accelerators, CPUs with AVX512-BF16 or AMX) [auto]",
    )
    g.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="torch.compile each block: ~10%% faster steps after ~20 s of compiling on CPU [on]",
    )
    g.add_argument(
        "--activation-checkpointing", action=argparse.BooleanOptionalAction, help="recompute blocks in backward [off]"
    )
    g.add_argument("--log-every", type=_positive_int, help=f"steps between log lines [{d.log_every}]")
    g.add_argument(
        "--eval-every",
        type=int,
        help=f"steps between the held-out curves (world data; a multiple of --log-every; 0: off) [{d.eval_every}]",
    )
    g.add_argument("--save-every", type=_positive_int, help=f"steps between checkpoints [{d.save_every}]")
    g.add_argument("--keep", type=_positive_int, help=f"checkpoints kept [{d.keep}]")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, help="write TensorBoard logs [on]")
    train.set_defaults(run=_train)


MODEL_OPTIONS = {"rope_theta", "qk_norm", "tie_embeddings", "n_kv_heads"}
RUN_OPTIONS = {"command", "run", "out", "resume", "stop_at", "device"}


def _train(args: argparse.Namespace) -> None:
    from ringworld.train.checkpoint import latest_checkpoint, read_config
    from ringworld.train.config import TrainConfig
    from ringworld.train.loop import train

    given = {k: v for k, v in vars(args).items() if v is not None and k not in RUN_OPTIONS}
    model = {k: given.pop(k) for k in MODEL_OPTIONS & set(given)}
    for key in ("tokenizer", "data", "init_from"):
        if key in given:
            given[key] = str(given[key])
    base: dict = {}
    latest = latest_checkpoint(args.out) if args.resume else None
    if latest is not None:  # the settings the checkpoint was trained with
        base = read_config(latest)["train"]
        changed = {k: v for k, v in given.items() if base.get(k) != v}
        if changed:
            print(f"resuming with changed settings: {changed}")
    cfg = TrainConfig.from_dict({**base, **given, "out": str(args.out), "model": {**base.get("model", {}), **model}})
    result = train(cfg, resume=args.resume, stop_at=args.stop_at, device=args.device)
    if result.is_main and result.history and result.checkpoint is not None:
        last = result.history[-1]
        print(
            f"step {last['step']}: loss {last['loss']:.4f} (text {last['text_loss']:.4f}, "
            f"vision {last['vision_loss']:.4f}); checkpoint {result.checkpoint}"
        )


def _world_sample(args: argparse.Namespace) -> None:
    from ringworld.world.export import write_samples

    out = write_samples(
        args.out, args.n, seed=args.seed, frames=args.frames, scale=args.scale, config=_world_config(args)
    )
    print(f"wrote {args.n} episodes to {out}/ (images/, videos/, contact_sheet.png, samples.jsonl)")


def _tokenizer_train(args: argparse.Namespace) -> None:
    from ringworld.jobs.tokenizer import train_tokenizers
    from ringworld.tokens.vision import VisionConfig

    vision = VisionConfig(
        frame_size=args.frame_size, patch=args.patch, levels=args.levels, channels=args.channels, kernel=args.kernel
    )
    metrics = train_tokenizers(
        args.out,
        world=_world_config(args),
        vision=vision,
        text_vocab_size=args.text_vocab,
        steps=args.steps,
        lr=args.lr,
        max_seconds=args.max_seconds or None,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    print(_metrics_table(metrics))
    if metrics["codebook_utilization"] < 0.05 and metrics["oracle_agreement"] < 0.5:
        print(
            "warning: the vision tokenizer collapsed onto a few codes (training diverged); "
            f"train again with a lower --lr than {args.lr}",
            file=sys.stderr,
        )
    print(f"wrote {args.out}/")


def _tokenizer_eval(args: argparse.Namespace) -> None:
    from ringworld.jobs.tokenizer import evaluate_tokenizer_dir

    print(_metrics_table(evaluate_tokenizer_dir(args.tokenizer, args.frames)))


def _data_ingest(args: argparse.Namespace) -> None:
    from ringworld.data.ingest import ingest
    from ringworld.tokens.bundle import load_codec

    report = ingest(
        args.source,
        load_codec(args.tokenizer),
        args.out,
        captions=args.captions,
        max_frames=args.max_frames,
        stride=args.stride,
    )
    print(report.summary())


def _demo(args: argparse.Namespace) -> None:
    from ringworld.jobs.demo import DemoConfig, run_demo

    given = {"tokenizer_seconds": args.tokenizer_seconds, "train_seconds": args.train_seconds, "samples": args.samples}
    run_demo(args.out, DemoConfig(seed=args.seed, **{k: v for k, v in given.items() if v is not None}))


def _load(args: argparse.Namespace):
    from ringworld.infer.tasks import load_world_model

    return load_world_model(args.checkpoint, args.device)


def _sampling(args: argparse.Namespace, *, drawn: bool):
    """The Sampling the flags ask for, over the default for images and videos (``drawn``) or greedy."""
    from dataclasses import replace

    from ringworld.infer.engine import GREEDY
    from ringworld.infer.tasks import DRAWING

    given = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.sampling_seed}
    return replace(DRAWING if drawn else GREEDY, **{k: v for k, v in given.items() if v is not None})


def _read(path: Path, wm, max_frames: int | None = None):
    from ringworld.media import read_media

    frames, notice = read_media(path, wm.frame_size, max_frames=max_frames)
    if notice:
        print(notice, file=sys.stderr)
    return frames


def _generate_image(args: argparse.Namespace) -> None:
    from ringworld.infer.tasks import generate_images
    from ringworld.media import write_image

    wm = _load(args)
    image = generate_images(wm, [args.prompt], guidance=args.guidance, sampling=_sampling(args, drawn=True))[0]
    write_image(args.out, image, scale=args.scale)
    print(f"wrote {args.out}")


def _generate_video(args: argparse.Namespace) -> None:
    from ringworld.infer.tasks import generate_videos
    from ringworld.media import write_video

    wm = _load(args)
    sampling = _sampling(args, drawn=True)
    video = generate_videos(wm, [args.prompt], args.frames, guidance=args.guidance, sampling=sampling)[0]
    write_video(args.out, video, scale=args.scale, fps=args.fps)
    print(f"wrote {args.out} ({args.frames} frames)")


def _caption(args: argparse.Namespace) -> None:
    from ringworld.infer.tasks import caption_images

    wm = _load(args)
    frames = _read(args.image, wm, max_frames=1)
    print(caption_images(wm, (frames if frames.ndim == 3 else frames[0])[None])[0])


def _predict(args: argparse.Namespace) -> None:
    import numpy as np

    from ringworld.infer.tasks import predict, rollout
    from ringworld.media import write_video

    wm = _load(args)
    clip = _read(args.clip, wm)
    clip = clip[None] if clip.ndim == 3 else clip  # (T, H, W, 3)
    if args.actions:
        future = rollout(wm, clip[-1:], [args.actions], sampling=_sampling(args, drawn=False))[0]
        what = f"{len(args.actions)} frames after {','.join(args.actions)}"
    else:
        future = predict(wm, clip[None], args.steps, sampling=_sampling(args, drawn=False))[0]
        what = f"{args.steps} predicted frames after {len(clip)} of the clip"
    write_video(args.out, np.concatenate([clip, future]), scale=args.scale, fps=args.fps)
    print(f"wrote {args.out}: {what}")


def _ask(args: argparse.Namespace) -> None:
    from ringworld.infer.tasks import answer

    wm = _load(args)
    media = _read(args.media, wm, max_frames=wm.video_frames)
    print(answer(wm, [media], [args.question])[0])


def _eval(args: argparse.Namespace) -> None:
    suite_only = {
        "world": ("report", "horizon", "guidance", "temperature", "top_k", "top_p", "sampling_seed"),
        "needle": ("lengths", "depths", "kinds", "plot", "batch_size"),
    }
    other = "needle" if args.suite == "world" else "world"
    misplaced = [f"--{name.replace('_', '-')}" for name in suite_only[other] if getattr(args, name) is not None]
    if misplaced:
        raise ValueError(f"{', '.join(misplaced)} belong(s) to `ringworld eval {other}`, not the {args.suite} suite")
    from ringworld.parallel.mesh import init_distributed, shutdown

    d = init_distributed(args.device, cp=args.cp)
    try:
        if d.dp > 1:
            raise ValueError(f"eval runs one ring: launch as many processes as --cp ({args.cp}), not {d.world_size}")
        with contextlib.ExitStack() as quiet:
            if not d.is_main:  # every rank computes; one speaks and writes
                devnull = quiet.enter_context(open(os.devnull, "w"))
                quiet.enter_context(contextlib.redirect_stdout(devnull))
                quiet.enter_context(contextlib.redirect_stderr(devnull))
            _eval_suite(args, d)
    finally:
        shutdown(d)


def _eval_suite(args: argparse.Namespace, d) -> None:
    import json

    from ringworld.infer.tasks import load_world_model

    wm = load_world_model(args.checkpoint, d.device, context_parallel=d.cp_group)
    if args.suite == "needle":
        metrics = _eval_needle(args, wm)
    else:
        from ringworld.eval.world import EVAL_SEED, evaluate

        seed = EVAL_SEED if args.seed is None else args.seed
        result = evaluate(
            wm,
            samples=args.samples or 100,
            horizon=args.horizon or 4,
            guidance=3.0 if args.guidance is None else args.guidance,
            sampling=_sampling(args, drawn=True),
            seed=seed,
        )
        metrics = result.metrics
        print(_eval_table(metrics))
    if not d.is_main:
        return
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.suite == "world" and args.report:
        from ringworld.eval.report import write_report

        page = write_report(args.report, result, run=wm.checkpoint.parent.parent)
        print(f"wrote {page}")


def _eval_needle(args: argparse.Namespace, wm) -> dict:
    from ringworld.eval.needle import NEEDLE_SEED, evaluate_needle, needle_table, plot_needle

    result = evaluate_needle(
        wm,
        args.lengths or [1024, 2048, 4096],
        args.depths or [0.0, 0.25, 0.5, 0.75, 1.0],
        args.kinds or ["text", "video"],
        samples=args.samples or 10,
        seed=NEEDLE_SEED if args.seed is None else args.seed,
        batch_size=args.batch_size or 4,
    )
    print(needle_table(result))
    if args.plot:
        print(f"wrote {plot_needle(result, args.plot)}")
    return result


def _eval_table(metrics: dict) -> str:
    rows = []
    for key, value in metrics.items():
        if isinstance(value, list):
            value = "  ".join(f"{v:.3f}" for v in value)
        elif isinstance(value, float):
            value = f"{value:.4f}"
        rows.append((key, str(value)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def _metrics_table(metrics: dict) -> str:
    rows = [
        ("PSNR (dB)", f"{metrics['psnr']:.2f}"),
        ("oracle agreement (exact)", f"{metrics['oracle_agreement']:.4f}"),
        ("oracle agreement (±1 px)", f"{metrics['oracle_agreement_1px']:.4f}"),
        ("codebook utilisation", f"{metrics['codebook_utilization']:.3f}"),
    ]
    if "train_seconds" in metrics:
        rows.append(("training (s)", f"{metrics['train_seconds']:.1f} ({metrics['train_steps']} steps)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError) as e:  # bad input, missing or unwritable files: say what, not where
        print(f"ringworld: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ringworld: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
