"""Reading and writing images and videos: PNG/JPEG and GIF with Pillow, MP4 with PyAV.

Frames are uint8 RGB arrays: an image (H, W, 3), a video (T, H, W, 3).
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image as PILImage

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".gif", ".mov", ".webm", ".mkv", ".avi"}


class MediaError(ValueError):
    """A file could not be read as an image, a video or a text."""


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (..., H, W, 3) so small frames are visible to a person."""
    return frames.repeat(factor, axis=-3).repeat(factor, axis=-2) if factor > 1 else frames


def write_image(path: str | Path, frame: np.ndarray, scale: int = 1) -> None:
    PILImage.fromarray(upscale(frame, scale)).save(path)


_GIF_COMMENT = "ringworld frame_ms="


def write_gif(path: str | Path, frames: np.ndarray, scale: int = 1, fps: float = 4.0) -> None:
    """Animated GIF. Pillow merges identical consecutive frames into one longer frame, so the
    per-frame time goes into the GIF comment and ``read_video`` expands merged frames back."""
    images = [PILImage.fromarray(f) for f in upscale(frames, scale)]
    frame_ms = round(1000 / fps)
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=frame_ms, loop=0, comment=f"{_GIF_COMMENT}{frame_ms}"
    )


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 8) -> None:
    """H.264 MP4 (yuv420p, so height and width must be even)."""
    _, h, w, _ = frames.shape
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def write_video(path: str | Path, frames: np.ndarray, scale: int = 1, fps: float = 4.0) -> None:
    """Write a GIF or an MP4, chosen by the file's suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".gif":
        write_gif(path, frames, scale, fps)
    elif suffix == ".mp4":
        write_mp4(path, upscale(frames, scale), fps=max(1, round(fps)))
    else:
        raise ValueError(f"cannot write video {path}: use a .gif or .mp4 file name")


def read_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB from any image Pillow reads."""
    try:
        with PILImage.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as e:
        raise MediaError(f"cannot read image {path}: {e}") from None


def read_video(path: str | Path, max_frames: int | None = None, stride: int = 1) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB: every ``stride``-th frame, at most ``max_frames`` of them.
    GIFs are read with Pillow, everything else with PyAV."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    frames: list[np.ndarray] = []
    try:
        for i, frame in enumerate(_iter_frames(path)):
            if i % stride == 0:
                frames.append(frame)
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except (OSError, ValueError, av.error.FFmpegError) as e:
        raise MediaError(f"cannot read video {path}: {e}") from None
    if not frames:
        raise MediaError(f"cannot read video {path}: it has no frames")
    return np.stack(frames)


def _iter_frames(path: str | Path):
    if Path(path).suffix.lower() == ".gif":
        with PILImage.open(path) as image:
            frames, durations = [], []
            for i in range(getattr(image, "n_frames", 1)):
                image.seek(i)
                frames.append(np.asarray(image.convert("RGB")))
                durations.append(image.info.get("duration") or 0)
            comment = image.info.get("comment", b"").decode("latin-1")
        # a frame shown k times as long as the base stands for k identical frames
        base = int(comment[len(_GIF_COMMENT) :]) if comment.startswith(_GIF_COMMENT) else min(durations)
        for frame, duration in zip(frames, durations, strict=True):
            for _ in range(max(1, round(duration / base)) if base > 0 else 1):
                yield frame
        return
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def fit_square(frame: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square, then resize to ``size`` x ``size`` (area filter when shrinking)."""
    h, w, _ = frame.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = PILImage.fromarray(frame[top : top + side, left : left + side])
    if side != size:
        crop = crop.resize((size, size), PILImage.Resampling.BOX if side > size else PILImage.Resampling.BICUBIC)
    return np.asarray(crop)


def read_media(path: str | Path, size: int, *, max_frames: int | None = None) -> tuple[np.ndarray, str | None]:
    """An image (H, W, 3) or a video (T, H, W, 3) by suffix, fitted to ``size`` x ``size``;
    with a notice saying so when it had another size (``None`` when it fitted already)."""
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        frames = read_image(path)[None]
    elif suffix in VIDEO_SUFFIXES:
        frames = read_video(path, max_frames=max_frames)
    else:
        known = ", ".join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))
        raise MediaError(f"cannot read {path}: {suffix or 'no suffix'} is not an image or video suffix ({known})")
    notice = None
    if frames.shape[1:3] != (size, size):
        notice = f"note: {path} is {frames.shape[2]}x{frames.shape[1]}; centre-cropped and resized to {size}x{size}"
        frames = np.stack([fit_square(f, size) for f in frames])
    return (frames[0] if suffix in IMAGE_SUFFIXES else frames), notice
