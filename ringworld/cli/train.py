"""`ringworld train`: its options are ``TrainConfig``'s fields, help included (``train.config.option``)."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields
from pathlib import Path

from ringworld.cli.common import positive_int

DESCRIPTION = (
    "Train the decoder by next-token prediction on packed documents, the loss balanced between text and "
    "vision. Writes RUN/checkpoints/step_N/ (model.safetensors, config.json, tokenizer/, optimizer and sampler "
    "state), RUN/metrics.jsonl and RUN/tensorboard/. For many processes (FSDP2; gloo on CPU, nccl on CUDA): "
    "torchrun --nproc_per_node N -m ringworld train ... and with --cp C, every C processes share each row "
    "(ring attention; a dp x cp mesh). With --resume, the run's saved settings are used and any option given "
    "here overrides them. Context growth: --init-from RUN --stage 2k:2e4:200 --stage 4k:5e4:100 ... trains "
    "each stage in OUT/stage_K from the previous stage's weights. Fine-tuning a run made by `ringworld import hf`: "
    "--init-from RUN --data SHARDS, the shards ingested with `ringworld data ingest SOURCE --tokenizer RUN`; the "
    "model keeps the family's options and its run stays one that `export hf`, `caption`, `ask` and `generate` read."
)
GROUP_TITLES = {"speed": "speed and logging"}  # --help's group titles, where not the config's group name
# ModelConfig fields a run may override (into TrainConfig.model): flag, type (None: on/off), help
MODEL_OPTIONS = {
    "rope_theta": ("--rope-theta", float, "RoPE base"),
    "qk_norm": ("--qk-norm", None, "RMSNorm on queries and keys"),
    "tie_embeddings": ("--tie-embeddings", None, "share embedding and head"),
    "n_kv_heads": ("--kv-heads", positive_int, "key/value heads (divides the heads)"),
}
RUN_OPTIONS = {"command", "run", "out", "resume", "stop_at", "device"}  # this session's, not the run's


def _task_weights(text: str) -> dict[str, float]:
    from ringworld.world.tasks import check_task_weights

    try:
        pairs = [item.split("=") for item in text.split(",")]
        weights = {name.strip(): float(w) for name, w in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"task weights look like text_to_image=2,qa=1; got {text!r}") from None
    try:
        check_task_weights(weights)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return weights


def _stage(text: str) -> dict:
    from ringworld.train.config import parse_stage

    try:
        return parse_stage(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _choices() -> dict[str, tuple[str, ...]]:
    """Options with a fixed set of values, each from the module that defines them."""
    from ringworld.model.attention import KERNELS
    from ringworld.model.transformer import PRESETS
    from ringworld.train.config import DTYPES, OPTIMIZERS

    return {"preset": tuple(PRESETS), "attention": ("auto", *KERNELS), "optimizer": OPTIMIZERS, "dtype": DTYPES}


def add_parsers(commands) -> None:
    from ringworld.model.transformer import ModelConfig
    from ringworld.train.config import TrainConfig
    from ringworld.world.tasks import TASKS

    train = commands.add_parser("train", help="train the world model", description=DESCRIPTION)
    train.add_argument("--out", type=Path, required=True, help="run directory")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    train.add_argument("--stop-at", type=positive_int, help="end this session at this step, with a checkpoint")
    train.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the accelerator if any, else cpu)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    choices = _choices()
    parsers = {"tasks": _task_weights, "stages": _stage}
    for f in fields(TrainConfig):
        if "help" not in f.metadata:
            continue
        meta = f.metadata
        default = f.default if f.default is not MISSING else f.default_factory()
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        shown = meta["shown"] if meta["shown"] is not None else default
        help = meta["help"] + (f"; tasks: {', '.join(TASKS)}" if f.name == "tasks" else "")
        kwargs: dict = {"dest": f.name, "help": f"{help} [{shown}]".replace("%", "%%")}
        if f.name == "stages":
            kwargs |= {"action": "append", "type": _stage}
        elif isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.name in choices:
            kwargs["choices"] = choices[f.name]
        else:
            kwargs["type"] = parsers.get(f.name) or type(default)
        if meta["group"] not in groups:
            groups[meta["group"]] = train.add_argument_group(GROUP_TITLES.get(meta["group"], meta["group"]))
        groups[meta["group"]].add_argument(flag, **kwargs)
    model_defaults = {f.name: f.default for f in fields(ModelConfig)}
    for name, (flag, kind, help) in MODEL_OPTIONS.items():
        default = model_defaults[name]
        shown = "half the heads" if name == "n_kv_heads" else {True: "on", False: "off"}.get(default, default)
        action = {"action": argparse.BooleanOptionalAction} if kind is None else {"type": kind}
        groups["model"].add_argument(flag, dest=name, help=f"{help} [{shown}]", **action)
    train.set_defaults(run=_train)


def _train(args: argparse.Namespace) -> None:
    from ringworld.train.checkpoint import latest_checkpoint, read_config
    from ringworld.train.config import TrainConfig
    from ringworld.train.loop import train

    given = {k: v for k, v in vars(args).items() if v is not None and k not in RUN_OPTIONS}
    model = {k: given.pop(k) for k in MODEL_OPTIONS.keys() & set(given)}
    base: dict = {}
    latest = latest_checkpoint(args.out) if args.resume else None
    if latest is not None:  # the settings the checkpoint was trained with
        base = read_config(latest)["train"]
        changed = {k: v for k, v in given.items() if base.get(k) != v}
        if changed:
            print(f"resuming with changed settings: {changed}")
    cfg = TrainConfig.from_dict({**base, **given, "out": str(args.out), "model": {**base.get("model", {}), **model}})
    judge = None
    if cfg.judge_every:
        from ringworld.eval.world import TrainingJudge

        judge = TrainingJudge(cfg.video_frames, cfg.say_motion)
    result = train(cfg, resume=args.resume, stop_at=args.stop_at, device=args.device, judge=judge)
    if result.is_main and result.history and result.checkpoint is not None:
        last = result.history[-1]
        print(
            f"step {last['step']}: loss {last['loss']:.4f} (text {last['text_loss']:.4f}, "
            f"vision {last['vision_loss']:.4f}); checkpoint {result.checkpoint}"
        )
