"""Vision tokenizer: a convolutional autoencoder with FSQ (finite scalar quantisation).

Where the FLOPs go: a conv stack at full resolution spends almost all its work on pixels that
are plain background. This one folds each ``patch x patch`` block of pixels into channels
first (``pixel_unshuffle``) and does all its convolutions on the code grid, so a 32x32 frame
with patch 4 costs the same as an 8x8 image; the decoder unfolds with ``pixel_shuffle``.

FSQ (Mentzer et al., 2023) bounds each latent channel with tanh and rounds it to one of
``levels[i]`` values; the code of a grid cell is the mixed-radix number of its digits. No
codebook to collapse, no commitment loss: a straight-through round is all it needs.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ringworld import schedule


@dataclass(frozen=True)
class VisionConfig:
    frame_size: int = 32  # frames are frame_size x frame_size RGB
    patch: int = 4  # spatial downsampling: one code per patch x patch pixels
    levels: tuple[int, ...] = (8, 5, 5, 5)  # FSQ levels; codebook size = their product
    channels: int = 64  # width of the conv stack
    blocks: int = 2  # residual blocks in the encoder and again in the decoder
    # 3: codes see their neighbours (3x3 convolutions, one norm over the frame). 1: every code is a
    # function of its own patch alone (1x1 convolutions, a norm per position), so equal patches
    # always get equal codes; right for worlds whose sprites sit on the patch lattice.
    kernel: int = 3

    def __post_init__(self) -> None:
        if self.frame_size % self.patch:
            raise ValueError(f"frame_size {self.frame_size} is not a multiple of patch {self.patch}")
        if any(level < 2 for level in self.levels):
            raise ValueError(f"FSQ levels must each be >= 2, got {self.levels}")
        if self.kernel not in (1, 3):
            raise ValueError(
                f"kernel must be 1 (codes see their own patch) or 3 (and their neighbours), got {self.kernel}"
            )

    @property
    def grid(self) -> tuple[int, int]:
        side = self.frame_size // self.patch
        return side, side

    @property
    def num_codes(self) -> int:
        return math.prod(self.levels)


class FSQ(nn.Module):
    """Finite scalar quantisation of (B, d, h, w) latents, d = len(levels)."""

    def __init__(self, levels: tuple[int, ...]):
        super().__init__()
        levels_t = torch.tensor(levels, dtype=torch.float32)
        basis = torch.cumprod(torch.tensor([1, *levels[:-1]]), 0)
        self.register_buffer("levels", levels_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("basis", basis.view(1, -1, 1, 1), persistent=False)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash to (-L/2, L/2) so that rounding gives exactly L integer values per channel."""
        half = (self.levels - 1) * (1 - 1e-3) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (B, d, h, w) -> (quantised latents scaled to [-1, 1], codes (B, h, w) int64)."""
        bounded = self.bound(z)
        rounded = bounded + (bounded.round() - bounded).detach()  # straight-through
        digits = (rounded.detach() + self.levels // 2).long()  # (B, d, h, w) in [0, L)
        codes = (digits * self.basis).sum(1)
        return rounded / (self.levels // 2), codes

    def latents(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) -> quantised latents (B, d, h, w) in [-1, 1]."""
        digits = (codes[:, None] // self.basis) % self.levels.long()
        return (digits - self.levels // 2) / (self.levels // 2)


class ResBlock(nn.Module):
    def __init__(self, channels: int, kernel: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv2d(channels, channels, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class PositionNorm(nn.Module):
    """LayerNorm over the channels at each grid position: no statistic crosses patches."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, h, w)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class VisionTokenizer(nn.Module):
    """Frames (N, H, W, 3) uint8 <-> codes (N, h, w) int64, batched."""

    def __init__(self, config: VisionConfig = VisionConfig()):
        super().__init__()
        self.config = config
        c, p, d, k = config.channels, config.patch, len(config.levels), config.kernel
        norm = (lambda: nn.GroupNorm(1, c)) if k == 3 else (lambda: PositionNorm(c))
        self.encoder = nn.Sequential(
            nn.Conv2d(3 * p * p, c, 1),
            *[ResBlock(c, k) for _ in range(config.blocks)],
            norm(),
            nn.SiLU(),
            nn.Conv2d(c, d, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(d, c, 1),
            *[ResBlock(c, k) for _ in range(config.blocks)],
            norm(),
            nn.SiLU(),
            nn.Conv2d(c, 3 * p * p, 1),
        )
        self.fsq = FSQ(config.levels)

    # properties the codec reads
    @property
    def frame_size(self) -> int:
        return self.config.frame_size

    @property
    def grid(self) -> tuple[int, int]:
        return self.config.grid

    @property
    def num_codes(self) -> int:
        return self.config.num_codes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 3, H, W) in [-1, 1] -> (reconstruction (B, 3, H, W), codes (B, h, w))."""
        z = self.encoder(F.pixel_unshuffle(x, self.config.patch))  # (B, d, h, w)
        q, codes = self.fsq(z)
        return self.decode_latents(q), codes

    def decode_latents(self, q: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.decoder(q), self.config.patch)  # (B, 3, H, W)

    @torch.no_grad()
    def encode(self, pixels: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, h, w) int64 codes."""
        self._check_pixels(pixels)
        out = []
        for i in range(0, len(pixels), batch_size):
            x = to_model_input(pixels[i : i + batch_size], self._device())
            out.append(self.fsq(self.encoder(F.pixel_unshuffle(x, self.config.patch)))[1].cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, *self.grid), dtype=np.int64)

    @torch.no_grad()
    def decode(self, codes: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """(N, h, w) int codes -> (N, H, W, 3) uint8 frames."""
        codes = np.asarray(codes)
        if codes.ndim != 3 or codes.shape[1:] != self.grid:
            raise ValueError(f"codes must be (N, {self.grid[0]}, {self.grid[1]}), got shape {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.num_codes):
            raise ValueError(f"codes must lie in [0, {self.num_codes}), got [{codes.min()}, {codes.max()}]")
        out = []
        for i in range(0, len(codes), batch_size):
            c = torch.from_numpy(codes[i : i + batch_size]).long().to(self._device())
            out.append(to_pixels(self.decode_latents(self.fsq.latents(c))))
        size = self.config.frame_size
        return np.concatenate(out) if out else np.zeros((0, size, size, 3), dtype=np.uint8)

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _check_pixels(self, pixels: np.ndarray) -> None:
        size = self.config.frame_size
        if pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3) or pixels.dtype != np.uint8:
            raise ValueError(
                f"frames must be (N, {size}, {size}, 3) uint8, got {pixels.dtype} {pixels.shape}; "
                f"resize images to {size}x{size} first (ringworld data ingest does this)"
            )

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, directory / "model.safetensors")

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> VisionTokenizer:
        directory = Path(directory)
        config_path, weights_path = directory / "config.json", directory / "model.safetensors"
        for path in (config_path, weights_path):
            if not path.exists():
                raise FileNotFoundError(f"{path} not found; train a tokenizer with `ringworld tokenizer train`")
        try:
            raw = json.loads(config_path.read_text())
            model = cls(VisionConfig(**{**raw, "levels": tuple(raw["levels"])}))
            model.load_state_dict(load_file(weights_path, device=str(device)))
        except (KeyError, TypeError, RuntimeError, json.JSONDecodeError) as e:
            raise ValueError(
                f"{directory} does not hold a vision tokenizer this ringworld can read ({type(e).__name__}: "
                f"{str(e).splitlines()[0]}); train one with `ringworld tokenizer train`"
            ) from None
        return model.to(device).eval()


def to_model_input(pixels: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).to(device)
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1


def to_pixels(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) float in [-1, 1] -> (N, H, W, 3) uint8."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB between uint8 frame batches, over all pixels."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


@dataclass
class VisionTrainResult:
    model: VisionTokenizer
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)


def train_vision_tokenizer(
    sample_frames: Callable[[int], np.ndarray],
    config: VisionConfig = VisionConfig(),
    *,
    steps: int = 6000,
    max_seconds: float | None = None,
    batch_size: int = 64,
    lr: float = 5e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> VisionTrainResult:
    """Train on frames from ``sample_frames(n) -> (n, H, W, 3) uint8`` with an MSE loss.

    The learning rate warms up over the first 2 % and then follows a cosine to zero. Progress is
    the larger of steps done / ``steps`` and seconds spent / ``max_seconds``, so a time-boxed
    run ends at a low learning rate whatever the machine's speed.
    """
    torch.manual_seed(seed)
    model = VisionTokenizer(config).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(total=100, desc="vision tokenizer", disable=not progress, unit="%", bar_format=_BAR)
    done = 0.0
    while done < 1.0:
        for group in opt.param_groups:
            group["lr"] = lr * _warmup_cosine(done)
        x = to_model_input(sample_frames(batch_size), device)
        recon, _ = model(x)
        loss = F.mse_loss(recon, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # keeps the high learning rate stable
        opt.step()
        losses.append(loss.item())
        elapsed = time.perf_counter() - start
        done = schedule.progress(len(losses), steps, elapsed, max_seconds)
        bar.n = round(100 * done, 1)
        if len(losses) % 25 == 0:
            bar.set_postfix(step=len(losses), loss=f"{np.mean(losses[-25:]):.5f}")
    bar.close()
    return VisionTrainResult(model.eval(), len(losses), time.perf_counter() - start, losses)


_BAR = "{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}"


def _warmup_cosine(progress: float, warmup: float = 0.02) -> float:
    """Learning-rate factor at ``progress`` in [0, 1]: linear warmup, then cosine to zero."""
    if progress < warmup:
        return max(progress / warmup, 1e-3)
    return schedule.cosine((progress - warmup) / (1 - warmup))
