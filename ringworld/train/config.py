"""Training settings: one dataclass, saved with every run and checkpoint (no torch needed to read it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ringworld.world.tasks import TASKS

KERNELS = ("blockwise", "documents", "mask", "flex")  # ringworld.model.attention's kernels
STAGE_KEYS = {"seq_len", "rope_theta", "steps", "batch_size"}


def _stage_problems(stage: dict) -> list[str]:
    missing, unknown = {"seq_len", "rope_theta", "steps"} - set(stage), set(stage) - STAGE_KEYS
    problems = [f"missing {', '.join(sorted(missing))}"] if missing else []
    problems += [f"unknown keys {', '.join(sorted(unknown))}"] if unknown else []
    if not missing and (int(stage["seq_len"]) < 2 or int(stage["steps"]) < 1 or float(stage["rope_theta"]) <= 0):
        problems.append(f"seq_len >= 2, steps >= 1 and rope_theta > 0 are needed (got {stage})")
    return problems


def parse_stage(text: str) -> dict:
    """``LEN:THETA:STEPS[:BATCH]`` (LEN may end in k: 16k = 16384) -> a stage dict."""
    parts = text.split(":")
    shape = f"a stage looks like 16k:1e6:50 or 16k:1e6:50:2 (length:rope_theta:steps[:batch]); got {text!r}"
    if len(parts) not in (3, 4):
        raise ValueError(shape)
    length = parts[0].lower()
    try:
        stage = {
            "seq_len": int(float(length[:-1]) * 1024) if length.endswith("k") else int(length),
            "rope_theta": float(parts[1]),
            "steps": int(parts[2]),
        }
        if len(parts) == 4:
            stage["batch_size"] = int(parts[3])
    except ValueError:
        raise ValueError(shape) from None
    return stage


if TYPE_CHECKING:
    from ringworld.model.transformer import ModelConfig


@dataclass
class TrainConfig:
    out: str  # run directory
    tokenizer: str = ""  # tokenizer directory (copied into the run)
    data: str = "world"  # "world" (the sprite-world task mixture) or an ingested shard directory
    tasks: dict[str, float] | None = None  # world task weights; None = uniform
    video_frames: int = 4
    preset: str = "tiny"
    depth: int = 0  # 0: the preset's depth
    model: dict = field(default_factory=dict)  # ModelConfig overrides (rope_theta, qk_norm, ...)
    seq_len: int = 1024
    batch_size: int = 8  # rows per optimizer step, over all ranks and micro-batches
    grad_accum: int = 1
    steps: int = 1000
    max_seconds: float = 0.0  # > 0: stop after this much training time; the schedule follows
    optimizer: str = "muon"  # muon: Muon for the blocks' matrices, AdamW for the rest; adamw: AdamW for all
    lr: float = 3e-3  # AdamW's peak lr
    muon_lr: float = 0.02  # Muon's peak lr (the schedule scales both alike)
    muon_momentum: float = 0.95
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    text_weight: float = 0.5
    vision_weight: float = 0.5
    # loss weight of targets that are the background code (the most frequent visual code of the
    # first batch); inference adds log(1 / weight) to its logit, which undoes the bias the weight teaches
    background_weight: float = 0.1
    caption_dropout: float = 0.1
    seed: int = 0
    dtype: str = (
        "auto"  # auto: bf16 autocast where bf16 is fast (accelerators, CPUs with AVX512-BF16 or AMX), else fp32
    )
    compile: bool = True  # torch.compile each block; eager (with a notice) where no compiler is found
    activation_checkpointing: bool = False
    attention: str = "auto"  # attention kernel: auto (measured choice), blockwise, documents, mask or flex
    context_parallel: int = 1  # processes sharing each row (ring attention); divides the process count
    init_from: str = ""  # start from this checkpoint's (or run's) weights, not random ones
    # progressive context growth: stages run one after another, each starting from the last one's
    # weights; each a dict of seq_len, rope_theta, steps and optionally batch_size
    stages: list[dict] = field(default_factory=list)
    log_every: int = 10
    eval_every: int = 100  # held-out learning curves every this many steps (world data; 0 = off)
    save_every: int = 500
    keep: int = 2
    tensorboard: bool = True

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
        if self.dtype not in ("auto", "fp32", "bf16"):
            problems.append(f"dtype must be auto, fp32 or bf16 (got {self.dtype!r})")
        if self.tasks is not None and set(self.tasks) - set(TASKS):
            problems.append(f"unknown task(s) {sorted(set(self.tasks) - set(TASKS))}; tasks are {', '.join(TASKS)}")
        if self.text_weight < 0 or self.vision_weight < 0 or self.text_weight + self.vision_weight <= 0:
            problems.append(f"loss weights must be >= 0 and not both 0 (got {self.text_weight}, {self.vision_weight})")
        if self.optimizer not in ("muon", "adamw"):
            problems.append(f"optimizer must be muon or adamw (got {self.optimizer!r})")
        if self.muon_lr <= 0 or not 0 <= self.muon_momentum < 1:
            problems.append(
                f"muon_lr must be > 0 and muon_momentum in [0, 1) (got {self.muon_lr}, {self.muon_momentum})"
            )
        if not 0 < self.background_weight <= 1:
            problems.append(
                f"background_weight lies in (0, 1] (got {self.background_weight}); 1 weighs it as any target"
            )
        if not 0 <= self.caption_dropout < 1:
            problems.append(f"caption dropout is a probability in [0, 1) (got {self.caption_dropout})")
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
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def model_config(self, vocab_size: int, base: dict | None = None) -> ModelConfig:
        """The model to train; ``base`` (a checkpoint's model config, for ``init_from``) fixes its shape."""
        from ringworld.model.transformer import ModelConfig

        overrides = {"max_seq_len": self.seq_len, **self.model}
        if base is not None:
            return ModelConfig.from_dict({**base, **overrides})
        if self.depth:
            return ModelConfig.from_depth(self.depth, vocab_size, **overrides)
        return ModelConfig.preset(self.preset, vocab_size, **overrides)
