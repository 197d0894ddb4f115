"""The HTTP face of a world model: OpenAI's request and response shapes where one exists.

    GET  /                          a web page that calls the API below (page.html)
    GET  /health                    {"status": "ok", ...}
    GET  /v1/models                 the one model this server holds
    POST /v1/chat/completions       text and image_url parts (PNG/JPEG/GIF data URIs; a GIF is a video):
                                    a caption ("describe this", or no text), an answer about the
                                    image or video, or an answer to plain text; ``stream`` as SSE
    POST /v1/images/generations     prompt -> ``b64_json`` PNGs (``n``, ``seed``, ``size``, ``guidance``)
    POST /v1/videos                 prompt -> a video (GIF or MP4). OpenAI's shape (JSON or multipart), but
                                    made before the reply: its status is "completed" at once. ``frames``,
                                    ``fps``, ``format``, ``seed`` and ``guidance`` are ours; ``seconds``
                                    x ``fps`` gives the frames when ``frames`` is not given
    GET  /v1/videos/{id}[/content]  the video object; its file (the last 64 are kept)
    POST /v1/world/rollout          frames (data URIs: a GIF, or PNGs) and ``actions`` or ``steps`` ->
                                    the predicted frames (PNGs), what the model said before each (a
                                    ``--say-motion`` model says how each object moves) and the whole
                                    clip (GIF): ringworld's own

A run imported from a public family (``ringworld import hf``) serves the chat and, where its family draws
(Emu3), the image endpoints, in its own token layout (``ringworld.serve.fronts``); it makes no videos.

Every request becomes one or more ``Request``s for the ``Worker``, which decodes them in one batch
with everything else in flight. Bad input gets a 4xx with an OpenAI-style error body, never a 500.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from ringworld.documents import ACTIONS
from ringworld.infer.batcher import Request
from ringworld.infer.sampling import Sampling
from ringworld.infer.tasks import DRAWING, generate_videos, predict, rollout
from ringworld.serve.fronts import Front
from ringworld.serve.protocol import (
    ApiError,
    ChatBody,
    ImagesBody,
    Part,
    RolloutBody,
    VideoBody,
    error_body,
    png_base64,
    read_data_uri,
    video_bytes,
)
from ringworld.serve.worker import Busy, ModelDown, Worker, served

PAGE = (Path(__file__).parent / "page.html").read_text()


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 8 << 20  # 413 above this
    max_tokens: int = 256  # a chat's max_tokens above this: 400
    max_images: int = 8  # n of an image request
    max_frames: int = 16  # frames read from a GIF
    timeout_s: float = 120.0  # a request still running after this: 504
    kept_videos: int = 64  # videos kept for GET /v1/videos/{id}/content


class Bounded:
    """ASGI middleware: a 413 for a body over the limit (before it is read), and one log line per
    request. (Plain ASGI, not BaseHTTPMiddleware, so handlers still see a client disconnect.)"""

    def __init__(self, app, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = int(dict(scope["headers"]).get(b"content-length", 0))
        if length > self.max_body_bytes:
            message = f"the body is {length} bytes; the limit is {self.max_body_bytes}"
            return await error_body(413, message, "invalid_request_error")(scope, receive, send)
        status, started = [0], time.perf_counter()

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        await self.app(scope, receive, sending)
        print(f"{scope['method']} {scope['path']} {status[0]} {time.perf_counter() - started:.3f}s", flush=True)


# the app --------------------------------------------------------------------------------------
def make_app(front: Front, worker: Worker, *, name: str, limits: Limits = Limits()) -> FastAPI:
    """The API for ``front``'s model: a ringworld world model serves every endpoint; a run imported from a
    public family serves chat, and images where the family draws (Emu3); its videos and rollouts get a 400."""
    app = FastAPI(title="ringworld", description="a world model, served")
    wm = front.wm  # None for an imported family: no videos, no rollouts
    tasks_wm = None if wm is None else served(wm, worker, limits.timeout_s)  # multi-step tasks, through the batch
    videos: OrderedDict[str, tuple[dict, bytes, str]] = OrderedDict()  # the last few made

    @app.exception_handler(ApiError)
    async def apierror_body(_, e: ApiError) -> JSONResponse:
        return error_body(e.status, e.message, e.kind, e.param)

    @app.exception_handler(ModelDown)
    async def model_down(_, e: ModelDown) -> JSONResponse:
        return error_body(503, str(e), "server_error")

    @app.exception_handler(RequestValidationError)
    async def invalid(_, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        return error_body(422, f"{where}: {first['msg']}", "invalid_request_error", where or None)

    app.add_middleware(Bounded, max_body_bytes=limits.max_body_bytes)

    def check_model(model: str | None) -> None:
        if model is not None and model != name:
            raise ApiError(400, f"the model {model!r} does not exist; this server holds {name!r}", param="model")

    async def run(request: Request, client: HTTPRequest) -> list[int]:
        """The request's tokens; if the client goes away first, it is cancelled and its rows freed."""

        async def collect() -> list[int]:
            return [token async for token in worker.tokens(request)]

        work = asyncio.ensure_future(asyncio.wait_for(collect(), limits.timeout_s))
        try:
            while not (await asyncio.wait({work}, timeout=0.5))[0]:
                if await client.is_disconnected():
                    work.cancel()  # the token iterator's cleanup cancels it in the batch
                    raise ApiError(499, "the client closed the connection", "cancelled")
            return work.result()
        except Busy as e:
            raise ApiError(429, str(e), "rate_limit_error") from e
        except ValueError as e:
            raise ApiError(400, str(e)) from e
        except asyncio.TimeoutError as e:
            raise ApiError(504, f"the request took more than {limits.timeout_s:g} s; ask for less", "timeout") from e

    def no_world() -> None:
        if wm is None:
            raise ApiError(
                400,
                f"{front.family.name} models make no videos and roll no world forward; this server answers "
                "/v1/chat/completions and /v1/images/generations",
            )

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE.replace('"MODEL"', json.dumps(name))

    @app.get("/health")
    async def health():
        if worker.down is not None:
            return error_body(503, worker.down, "server_error")
        return {"status": "ok", "model": name, "in_flight": worker.held}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "ringworld"}]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody, http: HTTPRequest):
        check_model(body.model)
        prompt = await asyncio.to_thread(chat_prompt, front, body, limits)  # images encode off the event loop
        budget = body.max_completion_tokens or body.max_tokens or 64
        if budget > limits.max_tokens:
            raise ApiError(
                400, f"max_tokens is {budget}; this server makes at most {limits.max_tokens}", param="max_tokens"
            )
        stops = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
        sampling = Sampling(temperature=body.temperature, top_p=body.top_p, seed=body.seed or 0)
        request = Request(prompt, max_new_tokens=budget, sampling=sampling)
        try:
            worker.check(request)  # before a stream starts: its status is still ours to set
        except ValueError as e:
            raise ApiError(400, str(e)) from e
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.stream:
            return StreamingResponse(stream_chat(request, prompt, stops, rid, created), media_type="text/event-stream")
        tokens = np.array(await run(request, http), dtype=np.int64)
        text, reason = finish(front.answer(prompt, tokens), stops, tokens, request)
        return {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}],
            "usage": {
                "prompt_tokens": len(prompt),
                "completion_tokens": len(tokens),
                "total_tokens": len(prompt) + len(tokens),
            },
        }

    async def stream_chat(request: Request, prompt: np.ndarray, stops: list[str], rid: str, created: int):
        def chunk(delta: dict, reason: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "finish_reason": reason}
            body = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": name,
                "choices": [choice],
            }
            return f"data: {json.dumps(body)}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        tokens: list[int] = []
        text, sent, reason = "", "", "stop"
        try:
            async for token in worker.tokens(request):  # leaving this loop early cancels the request
                tokens.append(token)
                text, reason = finish(front.answer(prompt, np.array(tokens)), stops, np.array(tokens), request)
                stable = text.rstrip("\ufffd")  # a character whose bytes are cut short may still complete
                if len(stable) > len(sent) and stable.startswith(sent):
                    yield chunk({"content": stable[len(sent) :]})
                    sent = stable
                if reason == "stop" and any(s and s in front.answer(prompt, np.array(tokens)) for s in stops):
                    break
        except Busy as e:
            yield f"data: {json.dumps({'error': {'message': str(e), 'type': 'rate_limit_error'}})}\n\n"
            return
        if len(text) > len(sent) and text.startswith(sent):  # bytes that never made a character
            yield chunk({"content": text[len(sent) :]})
        yield chunk({}, reason)
        yield "data: [DONE]\n\n"

    def finish(text: str, stops: list[str], tokens: np.ndarray, request: Request) -> tuple[str, str]:
        """The text cut at the first stop string, and OpenAI's finish_reason."""
        for s in stops:
            if s and s in text:
                return text[: text.index(s)], "stop"
        ran_out = len(tokens) >= request.max_new_tokens and int(tokens[-1]) != front.eos
        return text, "length" if ran_out else "stop"

    @app.post("/v1/images/generations")
    async def images(body: ImagesBody, http: HTTPRequest) -> dict:
        check_model(body.model)
        if body.n > limits.max_images:
            raise ApiError(400, f"n is {body.n}; this server draws at most {limits.max_images} at once", param="n")
        try:
            drawing = front.drawing(body.prompt)
        except ValueError as e:
            raise ApiError(400, str(e), param="prompt") from e
        scale = image_scale(body.size, front.frame_size)
        seed = body.seed or 0
        requests = [
            Request(
                drawing.prompt,
                drawing.max_new_tokens,
                replace(DRAWING, seed=seed + i),
                drawing.stop,
                guidance=body.guidance,
                uncond_prompt=drawing.uncond,
            )
            for i in range(body.n)
        ]
        made = await asyncio.gather(*(run(r, http) for r in requests))  # drawn in one batch
        frames = await asyncio.to_thread(lambda: [front.image(drawing.prompt, np.asarray(t)) for t in made])
        made_tokens = sum(len(tokens) for tokens in made)
        usage = {"input_tokens": len(drawing.prompt) * body.n, "output_tokens": made_tokens}
        usage["total_tokens"] = usage["input_tokens"] + made_tokens
        data = [{"b64_json": b64} for b64 in await asyncio.to_thread(lambda: [png_base64(f, scale) for f in frames])]
        return {"created": int(time.time()), "data": data, "usage": usage}

    async def in_thread(task, *args, **kwargs):
        """A multi-step task (``ringworld.infer.tasks``) on a thread of its own, through the batch."""
        try:
            return await asyncio.to_thread(task, *args, **kwargs)
        except Busy as e:
            raise ApiError(429, str(e), "rate_limit_error") from e
        except TimeoutError as e:
            raise ApiError(504, f"{e}; ask for less", "timeout") from e
        except ValueError as e:
            raise ApiError(400, str(e)) from e

    @app.post("/v1/videos")
    async def create_video(request: HTTPRequest) -> dict:
        form = request.headers.get("content-type", "").startswith("multipart/")
        try:
            raw = dict(await request.form()) if form else await request.json()
            body = VideoBody(**raw)
        except ValidationError as e:
            raise RequestValidationError(e.errors()) from e
        except ValueError as e:
            raise ApiError(400, f"the body is neither JSON nor a form ({e})") from e
        check_model(body.model)
        no_world()
        frames = body.frames or (round(body.seconds * body.fps) if body.seconds else wm.video_frames)
        if frames > limits.max_frames:
            raise ApiError(400, f"{frames} frames asked; this server makes at most {limits.max_frames}", param="frames")
        scale = image_scale(body.size, wm.frame_size)
        sampling = replace(DRAWING, seed=body.seed or 0)
        clip = await in_thread(
            generate_videos, tasks_wm, [body.prompt], frames, guidance=body.guidance, sampling=sampling
        )
        data = video_bytes(clip[0], body.format, body.fps, scale)
        vid, now = f"video_{uuid.uuid4().hex[:24]}", int(time.time())
        side = wm.frame_size * scale
        meta = {"id": vid, "object": "video", "model": name, "status": "completed", "progress": 100}
        meta |= {"created_at": now, "completed_at": now, "prompt": body.prompt, "size": f"{side}x{side}"}
        meta |= {"seconds": f"{frames / body.fps:g}", "frames": frames, "fps": body.fps, "format": body.format}
        videos[vid] = (meta, data, "image/gif" if body.format == "gif" else "video/mp4")
        while len(videos) > limits.kept_videos:
            videos.popitem(last=False)
        return meta

    def video(vid: str) -> tuple[dict, bytes, str]:
        if vid not in videos:
            raise ApiError(404, f"no video {vid!r} here (the last {limits.kept_videos} are kept)", param="video_id")
        return videos[vid]

    @app.get("/v1/videos/{vid}")
    async def get_video(vid: str) -> dict:
        return video(vid)[0]

    @app.get("/v1/videos/{vid}/content")
    async def video_content(vid: str, variant: str = "video") -> Response:
        if variant != "video":
            raise ApiError(400, f"variant {variant!r}: only the video itself is kept", param="variant")
        _, data, mime = video(vid)
        return Response(data, media_type=mime)

    @app.post("/v1/world/rollout")
    async def world_rollout(body: RolloutBody) -> dict:
        no_world()
        if (body.actions is None) == (body.steps is None):
            raise ApiError(400, "give actions (the agent's moves) or steps (frames to predict), one of the two")
        ahead = len(body.actions) if body.actions is not None else body.steps
        if not 1 <= ahead <= limits.max_frames:
            raise ApiError(400, f"{ahead} frames asked; this server predicts 1 to {limits.max_frames}", param="steps")
        unknown = sorted(set(body.actions or []) - set(ACTIONS))
        if unknown:
            raise ApiError(400, f"unknown action(s) {unknown}; actions are {', '.join(ACTIONS)}", param="actions")
        seen = [read_data_uri(url, wm.frame_size, limits.max_frames) for url in body.frames]
        clip = np.concatenate([f[None] if f.ndim == 3 else f for f in seen])[-limits.max_frames :]  # (T, H, W, 3)
        if body.actions is not None:
            made = await in_thread(rollout, tasks_wm, clip[-1:], [body.actions])
        else:
            made = await in_thread(predict, tasks_wm, clip[None], body.steps)
        future = made.frames[0]
        whole = video_bytes(np.concatenate([clip, future]), "gif", body.fps)
        return {
            "object": "world.rollout",
            "model": name,
            "frames": [png_base64(f, 1) for f in future],
            "said": made.said[0],  # what the model said before each frame ("" for nothing; --say-motion models)
            "video": base64.b64encode(whole).decode(),  # the clip given, then the prediction (GIF)
        }

    return app


def image_scale(size: str | None, frame: int) -> int:
    """How much to scale the model's ``frame``-pixel images up to reach ``size`` ("WxH", square)."""
    if size is None:
        return 1
    try:
        w, h = (int(x) for x in size.lower().split("x"))
    except ValueError:
        raise ApiError(400, f"size looks like 256x256; got {size!r}", param="size") from None
    if w != h or w % frame or w < frame:
        raise ApiError(400, f"size must be a square multiple of the model's {frame}x{frame} frames", param="size")
    return w // frame


def chat_prompt(front: Front, body: ChatBody, limits: Limits) -> np.ndarray:
    """The last user message as a prompt: media with no text (or "describe ...") is a caption;
    media and text, a question about it; text alone, a question on its own."""
    users = [m for m in body.messages if m.role == "user"]
    if not users:
        raise ApiError(400, "messages hold no user message", param="messages")
    content = users[-1].content
    parts = [Part(type="text", text=content)] if isinstance(content, str) else content
    text = " ".join(p.text or "" for p in parts if p.type == "text").strip()
    urls = [p.image_url.url for p in parts if p.image_url is not None]
    if len(urls) > 1:
        raise ApiError(400, "one image or video a message, please", param="messages")
    if not urls and not text:
        raise ApiError(400, "the message is empty: send text, an image, or both", param="messages")
    try:
        media = read_data_uri(urls[0], front.frame_size, limits.max_frames) if urls else None
        return front.question(media, text)
    except ValueError as e:
        raise ApiError(400, str(e), param="messages") from e
