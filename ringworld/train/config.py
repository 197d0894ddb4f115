"""Training settings: one dataclass, saved with every run and checkpoint (as JSON, in its config.json)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from ringworld.data.sources import check_caption_dropout
from ringworld.model.attention import KERNELS
from ringworld.model.transformer import ModelConfig
from ringworld.train.loss import LossWeights

STAGE_KEYS = {"seq_len", "rope_theta", "steps", "batch_size"}


def _stage_problems(stage: dict) -> list[str]:
    missing, unknown = {"seq_len", "rope_theta", "steps"} - set(stage), set(stage) - STAGE_KEYS
    problems = [f"missing {', '.join(sorted(missing))}"] if missing else []
    problems += [f"unknown keys {', '.join(sorted(unknown))}"] if unknown else []
    if not missing and (int(stage["seq_len"]) < 2 or int(stage["steps"]) < 1 or float(stage["rope_theta"]) <= 0):
        problems.append(f"seq_len >= 2, steps >= 1 and rope_theta > 0 are needed (got {stage})")
    return problems


def parse_length(text: str) -> int:
    """A token count: "3000", or "16k" / "0.5k" in units of 1024. ValueError if it is neither."""
    text = text.strip().lower()
    return round(float(text[:-1]) * 1024) if text.endswith("k") else int(text)


def parse_stage(text: str) -> dict:
    """``LEN:THETA:STEPS[:BATCH]`` (LEN may end in k: 16k = 16384) -> a stage dict."""
    parts = text.split(":")
    shape = f"a stage looks like 16k:1e6:50 or 16k:1e6:50:2 (length:rope_theta:steps[:batch]); got {text!r}"
    if len(parts) not in (3, 4):
        raise ValueError(shape)
    try:
        stage = {"seq_len": parse_length(parts[0]), "rope_theta": float(parts[1]), "steps": int(parts[2])}
        if len(parts) == 4:
            stage["batch_size"] = int(parts[3])
    except ValueError:
        raise ValueError(shape) from None
    return stage


OPTIMIZERS = ("muon", "adamw")
DTYPES = ("auto", "fp32", "bf16")


def option(default, help: str, group: str, *, shown: str | None = None, flag: str | None = None):
    """A field that is also a `ringworld train` option: its help, its group in --help, the default as
    --help shows it (``shown``, else the value itself) and its flag (else --field-name)."""
    meta = {"help": help, "group": group, "shown": shown, "flag": flag}
    if default == []:
        return field(default_factory=list, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every setting of a training run. The fields made with ``option`` are `ringworld train`'s options
    (``ringworld.cli.train`` derives them from here, help included)."""

    out: str  # run directory
    # data
    tokenizer: str = option("", "tokenizer directory from `ringworld tokenizer train` (copied into the run)", "data")
    data: str = option("world", "'world' (the sprite-world task mixture) or an ingested shard directory", "data")
    tasks: dict[str, float] | None = option(
        None,
        "world task weights, e.g. text_to_image=2,qa=1",
        "data",
        shown="the demo's: world/tasks.py DEFAULT_WEIGHTS",
    )
    follow_curves: bool = option(
        False,
        "every --judge-every steps, weigh each world task by what the oracle's judgement says it has left to "
        "learn: its weight x (1 - skill), at least 0.1 x its weight (train/curves.py)",
        "data",
        shown="off",
    )
    # Five: two frames show every velocity and three more are fixed by them, so a document teaches three
    # determined frames; the eval's 4-step rollouts fit one video. Frames after the first are written as
    # their changes (a few ids each), so five frames cost about what two whole ones did (#21).
    video_frames: int = option(5, "frames in world videos", "data")
    say_motion: bool = option(
        False,
        "prediction and action videos say how each object moves before each frame (from a random frame on); "
        "the model then says it before it draws",
        "data",
        shown="off",
    )
    caption_dropout: float = option(0.1, "drop prompts with this probability, for classifier-free guidance", "data")
    # model
    preset: str = option("tiny", "model size", "model")
    depth: int = option(0, "layers; width follows (64 per layer); overrides --preset", "model", shown="the preset's")
    model: dict = field(default_factory=dict)  # ModelConfig overrides (rope_theta, qk_norm, ...)
    init_from: str = option("", "start from this run's or checkpoint's weights (and tokenizer)", "model", shown="none")
    # long context
    # progressive context growth: stages run one after another, each starting from the last one's
    # weights; each a dict of seq_len, rope_theta, steps and optionally batch_size
    stages: list[dict] = option(
        [],
        "a context-growth stage LEN:ROPE_THETA:STEPS[:BATCH], e.g. 16k:1e6:50:1; repeat for each stage, shortest "
        "first (each starts from the previous one's weights, in OUT/stage_K)",
        "long context",
        shown="none",
        flag="--stage",
    )
    context_parallel: int = option(
        1, "processes sharing each row (ring attention); divides the process count", "long context", flag="--cp"
    )
    attention: str = option(
        "auto", "attention kernel; blockwise keeps memory linear in length", "long context", shown="auto: measured"
    )
    # optimisation
    # world documents are 40-300 tokens: short rows waste no attention (ingested shards are cut to rows)
    seq_len: int = option(512, "tokens per packed row", "optimisation")
    # measured: 8 rows leave the background-only plateau sooner than 2 or 4 in the same time (#11)
    batch_size: int = option(8, "rows per optimizer step, all processes and micro-batches together", "optimisation")
    grad_accum: int = option(1, "micro-batches per step", "optimisation")
    steps: int = option(1000, "optimizer steps", "optimisation")
    max_seconds: float = option(
        0.0, "stop after this much training time; the schedule follows", "optimisation", shown="off"
    )
    optimizer: str = option(
        "muon",
        "muon: Muon for the blocks' matrices and AdamW (--lr) for embeddings, head and norms; adamw: AdamW for all",
        "optimisation",
    )
    lr: float = option(3e-3, "AdamW's peak learning rate", "optimisation")
    muon_lr: float = option(0.02, "Muon's peak learning rate (the schedule scales both alike)", "optimisation")
    muon_momentum: float = option(0.95, "Muon's momentum", "optimisation")
    min_lr_ratio: float = option(0.1, "final lr as a fraction of the peak", "optimisation")
    warmup: int = option(50, "warmup steps", "optimisation")
    weight_decay: float = option(0.1, "AdamW weight decay on matrices", "optimisation")
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = option(1.0, "clip the gradient norm at this", "optimisation")
    text_weight: float = option(0.5, "weight of the mean text loss", "optimisation")
    vision_weight: float = option(0.5, "weight of the mean vision loss", "optimisation")
    background_weight: float = option(
        0.1,
        "loss weight of background-code targets (the most frequent visual code of the first batch), in (0, 1]; "
        "inference adds log(1 / weight) to its logit, which undoes the bias the weight teaches (not applied to "
        "runs made by `ringworld import hf`)",
        "optimisation",
    )
    seed: int = option(0, "weights and data order", "optimisation")
    # speed and logging
    dtype: str = option(
        "auto", "bf16 autocast; auto = bf16 where it is fast (accelerators, CPUs with AVX512-BF16 or AMX)", "speed"
    )
    compile: bool = option(
        True, "torch.compile each block (eager, with a notice, where no compiler is found)", "speed", shown="on"
    )
    activation_checkpointing: bool = option(False, "recompute blocks in backward: less memory", "speed", shown="off")
    log_every: int = option(10, "steps between log lines", "speed")
    eval_every: int = option(
        100, "steps between the held-out curves (world data; a multiple of --log-every; 0: off)", "speed"
    )
    judge_every: int = option(
        0,
        "steps between oracle-judged samples of the live model (world data; a multiple of --log-every; 0: off): "
        "32 generated episodes a task, judged as `ringworld eval world` does, logged as judged/<figure>",
        "speed",
    )
    save_every: int = option(500, "steps between checkpoints", "speed")
    keep: int = option(2, "checkpoints kept", "speed")
    tensorboard: bool = option(True, "write TensorBoard logs", "speed", shown="on")

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        problems = []
        for name in ("seq_len", "batch_size", "grad_accum", "steps", "log_every", "save_every", "keep"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.eval_every < 0 or (self.eval_every and self.eval_every % self.log_every):
            problems.append(
                f"eval_every must be 0 (off) or a multiple of log_every {self.log_every} (got {self.eval_every})"
            )
        if self.say_motion and self.data != "world":
            problems.append("say_motion is for world data (--data world): it writes the world's motion into videos")
        if self.judge_every < 0 or (self.judge_every and self.judge_every % self.log_every):
            problems.append(
                f"judge_every must be 0 (off) or a multiple of log_every {self.log_every} (got {self.judge_every})"
            )
        if self.judge_every and self.data != "world":
            problems.append("judge_every is for world data (--data world): the oracle judges the world's tasks")
        if self.follow_curves and not self.judge_every:
            problems.append("follow_curves needs the judged curves it follows (--judge-every > 0)")
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {', '.join(DTYPES)} (got {self.dtype!r})")
        for check in (
            lambda: LossWeights(self.text_weight, self.vision_weight),
            lambda: check_caption_dropout(self.caption_dropout),
        ):
            try:
                check()
            except ValueError as e:
                problems.append(str(e))
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {', '.join(OPTIMIZERS)} (got {self.optimizer!r})")
        if self.muon_lr <= 0 or not 0 <= self.muon_momentum < 1:
            problems.append(
                f"muon_lr must be > 0 and muon_momentum in [0, 1) (got {self.muon_lr}, {self.muon_momentum})"
            )
        if not 0 < self.background_weight <= 1:
            problems.append(
                f"background_weight lies in (0, 1] (got {self.background_weight}); 1 weighs it as any target"
            )
        if self.lr <= 0 or self.grad_clip <= 0 or self.weight_decay < 0 or self.warmup < 0:
            problems.append(
                f"lr and grad_clip must be > 0, weight_decay and warmup >= 0 (got lr {self.lr}, grad_clip "
                f"{self.grad_clip}, weight_decay {self.weight_decay}, warmup {self.warmup})"
            )
        if not 0 <= self.min_lr_ratio <= 1 or not all(0 <= b < 1 for b in self.betas):
            problems.append(f"min_lr_ratio and betas lie in [0, 1) (got {self.min_lr_ratio}, {self.betas})")
        if self.attention not in ("auto", *KERNELS):
            problems.append(f"attention must be auto or one of {', '.join(KERNELS)} (got {self.attention!r})")
        if self.context_parallel < 1 or self.seq_len % (2 * self.context_parallel):
            problems.append(
                f"--seq-len {self.seq_len} does not split into 2 x {self.context_parallel} equal zigzag chunks "
                f"for --cp {self.context_parallel}; make it a multiple of {2 * self.context_parallel}"
            )
        problems += [f"stage {i + 1}: {p}" for i, stage in enumerate(self.stages) for p in _stage_problems(stage)]
        if problems:
            raise ValueError("bad training config: " + "; ".join(problems))

    def stage_configs(self) -> list[TrainConfig]:
        """One single-stage config per stage, each in its own run directory ``out/stage_K``."""
        configs = []
        for i, stage in enumerate(self.stages):
            model = {**self.model, "rope_theta": float(stage["rope_theta"])}
            extra = {"batch_size": int(stage["batch_size"])} if "batch_size" in stage else {}
            configs.append(
                replace(
                    self,
                    out=str(Path(self.out) / f"stage_{i + 1}"),
                    seq_len=int(stage["seq_len"]),
                    steps=int(stage["steps"]),
                    model=model,
                    stages=[],
                    seed=self.seed + i,
                    **extra,
                )
            )
        return configs

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The config a run saved (every field it has had since the first run; a key no version knows
        is an error, not silently dropped)."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training config keys {sorted(unknown)}; known keys are {sorted(known)}")
        return cls(**d)

    def model_config(self, vocab_size: int, base: dict | None = None) -> ModelConfig:
        """The model to train; ``base`` (a checkpoint's model config, for ``init_from``) fixes its shape, and
        training on rows shorter than its context keeps that context (an imported model's, say)."""
        overrides = {"max_seq_len": self.seq_len, **self.model}
        if base is not None:
            longest = max(self.seq_len, base.get("max_seq_len", 0))
            return ModelConfig.from_dict({**base, **overrides, "max_seq_len": longest})
        if self.depth:
            return ModelConfig.from_depth(self.depth, vocab_size, **overrides)
        return ModelConfig.preset(self.preset, vocab_size, **overrides)
