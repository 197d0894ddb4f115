"""What the API reads and writes: OpenAI-shaped request bodies, its error body, and media as data
URIs, PNG, GIF and MP4 bytes."""

from __future__ import annotations

import base64
import io
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
from fastapi.responses import JSONResponse
from PIL import Image as PILImage
from pydantic import BaseModel, Field

from ringworld.infer.tasks import DEFAULT_GUIDANCE
from ringworld.media import fit_square, write_video


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


def error_body(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status)


# request bodies -------------------------------------------------------------------------------
class ImageURL(BaseModel):
    url: str


class Part(BaseModel):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[Part]


class ChatBody(BaseModel):
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False


class VideoBody(BaseModel):
    prompt: str = Field(min_length=1)
    model: str | None = None
    seconds: float | None = Field(default=None, gt=0)
    size: str | None = None
    frames: int | None = Field(default=None, ge=1)  # not OpenAI's: frames to make
    fps: float = Field(default=4.0, gt=0, le=60)
    format: Literal["gif", "mp4"] = "gif"
    seed: int | None = None
    guidance: float = Field(default=DEFAULT_GUIDANCE, ge=0)


class RolloutBody(BaseModel):
    frames: list[str] = Field(min_length=1)  # data URIs: one GIF, or PNG/JPEG frames in order
    actions: list[str] | None = None  # the agent's moves from the last frame, one frame each
    steps: int | None = Field(default=None, ge=1)  # without actions: frames to predict
    fps: float = Field(default=4.0, gt=0, le=60)


class ImagesBody(BaseModel):
    prompt: str = Field(min_length=1)
    model: str | None = None
    n: int = Field(default=1, ge=1)
    size: str | None = None  # "WxH"; the model draws its own size, scaled up to this
    seed: int | None = None
    guidance: float = Field(default=DEFAULT_GUIDANCE, ge=0)  # not OpenAI's: classifier-free guidance scale
    response_format: Literal["b64_json"] = "b64_json"


# media in and out -----------------------------------------------------------------------------
def read_data_uri(url: str, size: int, max_frames: int) -> np.ndarray:
    """A PNG/JPEG (H, W, 3) or a GIF (T, H, W, 3), fitted to ``size``, from a data URI."""
    if not url.startswith("data:") or ";base64," not in url:
        raise ApiError(400, "image_url must be a data URI (data:image/png;base64,...)", param="image_url")
    try:
        with PILImage.open(io.BytesIO(base64.b64decode(url.split(";base64,", 1)[1], validate=True))) as picture:
            frames = []
            for i in range(min(getattr(picture, "n_frames", 1), max_frames)):
                picture.seek(i)
                frames.append(fit_square(np.asarray(picture.convert("RGB")), size))
            animated = getattr(picture, "n_frames", 1) > 1
    except (ValueError, OSError) as e:
        raise ApiError(400, f"the image could not be decoded ({e}); send a PNG, JPEG or GIF", param="image_url") from e
    return np.stack(frames) if animated else frames[0]


def video_bytes(frames: np.ndarray, fmt: str, fps: float, scale: int = 1) -> bytes:
    """(T, H, W, 3) uint8 as a GIF or an MP4 file's bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"video.{fmt}"
        write_video(path, frames, scale=scale, fps=fps)
        return path.read_bytes()


def png_base64(frame: np.ndarray, scale: int) -> str:
    buffer = io.BytesIO()
    picture = PILImage.fromarray(frame)
    if scale > 1:
        picture = picture.resize((frame.shape[1] * scale, frame.shape[0] * scale), PILImage.NEAREST)
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
