"""The server as its users meet it: the official `openai` client against a live server on a free
local port, many clients at once, and every kind of bad request."""

import base64
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
from conftest import LiveServer
from PIL import Image as PILImage

from ringworld.infer.tasks import rollout
from ringworld.media import read_video, write_gif
from ringworld.serve.app import Limits
from ringworld.serve.worker import served
from ringworld.world.sim import random_state, render
from ringworld.world.sim import rollout as rollout_states

openai = pytest.importorskip("openai", reason="the openai client is a dev extra: pip install -e .[dev]")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wm(server):
    return server.wm


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def _data_uri(frame: np.ndarray) -> str:
    buffer = io.BytesIO()
    PILImage.fromarray(frame).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _frame(seed: int = 0) -> np.ndarray:
    return render(random_state(np.random.default_rng(seed)))


def test_models_health_chat_and_images_through_the_openai_client(client, server, wm):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert json.loads(urllib.request.urlopen(server.url + "/health").read())["status"] == "ok"
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "what is red?"}], max_tokens=8
    )
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].finish_reason in ("stop", "length")
    assert 1 <= reply.usage.completion_tokens <= 8
    image = [{"type": "image_url", "image_url": {"url": _data_uri(_frame())}}]
    caption = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": image}], max_tokens=16)
    assert isinstance(caption.choices[0].message.content, str)
    drawn = client.images.generate(model="tiny", prompt="a red circle in the top left", n=2, size="64x64")
    pictures = [np.asarray(PILImage.open(io.BytesIO(base64.b64decode(d.b64_json)))) for d in drawn.data]
    assert len(pictures) == 2 and all(p.shape == (64, 64, 3) for p in pictures)


def _gif_uri(frames: np.ndarray, tmp_path) -> str:
    write_gif(tmp_path / "clip.gif", frames)
    return "data:image/gif;base64," + base64.b64encode((tmp_path / "clip.gif").read_bytes()).decode()


# the client marks its video methods deprecated (OpenAI's Sora API); the shape is still what it sends
@pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")
def test_videos_through_the_openai_client(client, tmp_path):
    made = client.videos.create(model="tiny", prompt="a blue square moving right", extra_body={"frames": 3, "seed": 1})
    assert made.status == "completed" and client.videos.retrieve(made.id).id == made.id
    (tmp_path / "video.gif").write_bytes(client.videos.download_content(made.id).read())
    assert read_video(tmp_path / "video.gif").shape == (3, 32, 32, 3)


def test_world_rollout_plays_actions_or_predicts_steps(server, wm, tmp_path):
    clip = render(rollout_states(random_state(np.random.default_rng(2), agent=True), 1))  # 2 frames
    body = {"frames": [_gif_uri(clip, tmp_path)], "actions": ["right", "up", "stay"]}
    code, reply = _post(f"{server.url}/v1/world/rollout", json.dumps(body).encode())
    assert code == 200 and len(reply["frames"]) == 3
    (tmp_path / "whole.gif").write_bytes(base64.b64decode(reply["video"]))
    whole = read_video(tmp_path / "whole.gif")
    assert whole.shape == (2 + 3, 32, 32, 3) and np.array_equal(whole[:2], clip)
    expected = rollout(wm, clip[-1:], [["right", "up", "stay"]])  # what the library plays, alone
    drawn = [np.asarray(PILImage.open(io.BytesIO(base64.b64decode(f)))) for f in reply["frames"]]
    assert np.array_equal(np.stack(drawn), expected.frames[0]) and reply["said"] == expected.said[0]
    # a model that says each move before drawing it says the same through the shared batch as alone
    speaking = replace(wm, says_motion=True)
    alone = rollout(speaking, clip[-1:], [["right", "up"]])
    batched = rollout(served(speaking, server.worker, 60.0), clip[-1:], [["right", "up"]])
    assert all(alone.said[0]) and batched.said == alone.said and np.array_equal(batched.frames, alone.frames)
    pngs = {"frames": [_data_uri(f) for f in clip], "steps": 2}
    code, reply = _post(f"{server.url}/v1/world/rollout", json.dumps(pngs).encode())
    assert code == 200 and len(reply["frames"]) == 2
    for bad, says in [
        ({"actions": ["jump"]}, "unknown action"),
        ({}, "one of the two"),
        ({"steps": 10**4}, "frames asked"),
    ]:
        code, reply = _post(f"{server.url}/v1/world/rollout", json.dumps({"frames": pngs["frames"], **bad}).encode())
        assert code == 400 and says in reply["error"]["message"]


def test_streaming_sends_the_same_text_as_one_reply(client):
    messages = [{"role": "user", "content": "where is the blue square?"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12).choices[0]
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.message.content
    assert chunks[-1].choices[0].finish_reason == whole.finish_reason


def test_concurrent_requests_give_what_each_gives_alone(client, server):
    asks = [
        {"messages": [{"role": "user", "content": f"what colour is shape {i}?"}], "max_tokens": 6 + i} for i in range(6)
    ] + [
        {"messages": [{"role": "user", "content": "say something"}], "max_tokens": 10, "temperature": 1.0, "seed": s}
        for s in (1, 2)
    ]

    def ask(kwargs: dict) -> str:
        return client.chat.completions.create(model="tiny", **kwargs).choices[0].message.content

    alone = [ask(k) for k in asks]
    server.worker.batcher.peak = 0  # (only read by the model's thread between requests)
    with ThreadPoolExecutor(len(asks)) as pool:
        together = list(pool.map(ask, asks))
    assert together == alone
    assert server.worker.batcher.peak >= 2, "the requests never shared a forward"


def _post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize(
    "path, body, status, says",
    [
        (
            "chat/completions",
            {"model": "other", "messages": [{"role": "user", "content": "hi"}]},
            400,
            "does not exist",
        ),
        ("chat/completions", {"model": "tiny"}, 422, "messages"),
        (
            "chat/completions",
            {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6},
            400,
            "max_tokens",
        ),
        (
            "chat/completions",
            {
                "model": "tiny",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}],
                    }
                ],
            },
            400,
            "could not be decoded",
        ),
        ("chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": ""}]}, 400, "empty"),
        ("images/generations", {"prompt": "a red circle", "n": 100}, 400, "at most"),
        ("images/generations", {"prompt": "a red circle", "size": "100x50"}, 400, "square"),
        ("images/generations", {}, 422, "prompt"),
    ],
)
def test_bad_requests_get_their_status_and_an_openai_error(server, path, body, status, says):
    code, reply = _post(f"{server.url}/v1/{path}", json.dumps(body).encode())
    assert code == status and says in reply["error"]["message"], reply
    assert {"message", "type"} <= set(reply["error"])
    code, _ = _post(f"{server.url}/v1/chat/completions", b"{not json")
    assert code == 422


def test_a_request_past_its_time_gets_504_and_leaves_the_batch(wm):
    slow = LiveServer(wm, limits=Limits(timeout_s=0.001))
    try:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200}
        code, reply = _post(slow.url + "/v1/chat/completions", json.dumps(body).encode())
        assert code == 504 and reply["error"]["type"] == "timeout"
        for _ in range(100):  # the cancel reaches the model's thread within a step
            if slow.worker.held == 0 and not slow.worker.batcher.running:
                break
            time.sleep(0.05)
        assert slow.worker.held == 0 and not slow.worker.batcher.running
    finally:
        slow.close()


def test_a_client_that_goes_away_frees_its_rows(wm):
    live = LiveServer(wm)
    batcher, gate, cancelled = live.worker.batcher, threading.Event(), []
    step, put = batcher.step, live.worker.inbox.put
    batcher.step = lambda: gate.wait() and step()  # the model's thread waits here until the client is gone
    live.worker.inbox.put = lambda item: (item[0] == "cancel" and cancelled.append(item)) or put(item)
    try:
        body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200})
        with socket.create_connection(("127.0.0.1", live.port)) as conn:
            head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            conn.sendall((head + f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
            while live.worker.held == 0:
                time.sleep(0.01)
        time.sleep(1.5)  # the server looks every 0.5 s
        assert cancelled  # before the model made a single token
        gate.set()
        for _ in range(100):
            if live.worker.held == 0:
                break
            time.sleep(0.05)
        assert live.worker.held == 0 and not batcher.running
    finally:
        gate.set()
        live.close()


def test_a_full_server_says_429_and_a_huge_body_413(wm):
    full = LiveServer(wm, max_requests=0, limits=Limits(max_body_bytes=1000))
    try:
        code, reply = _post(
            full.url + "/v1/chat/completions",
            json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}).encode(),
        )
        assert code == 429 and reply["error"]["type"] == "rate_limit_error"
        code, reply = _post(full.url + "/v1/chat/completions", b"x" * 5000)
        assert code == 413 and "limit" in reply["error"]["message"]
    finally:
        full.close()


def test_the_model_in_a_process_of_its_own_serves_and_its_end_is_a_503(tiny_run, wm, client):
    """``ProcessWorker`` (what ``ringworld serve`` runs) gives the tokens this process's batcher
    gives; when its process dies, the request in flight and those that come next get a 503 (and
    /health says so), not a hang."""
    import os
    import signal

    from ringworld.infer.batcher import Request
    from ringworld.serve.worker import ModelDown, ProcessWorker

    def status(url: str) -> int:
        try:
            return urllib.request.urlopen(url).status
        except urllib.error.HTTPError as e:
            return e.code

    asks = [[{"role": "user", "content": f"what colour is shape {i}?"}] for i in range(3)]
    expected = [client.chat.completions.create(model="tiny", messages=m, max_tokens=8) for m in asks]
    live = LiveServer(wm, worker=ProcessWorker(tiny_run, wm.engine, rows=4, compile=False))
    worker = live.worker
    try:
        served = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
        with ThreadPoolExecutor(3) as pool:
            got = list(pool.map(lambda m: served.chat.completions.create(model="tiny", messages=m, max_tokens=8), asks))
        assert [g.choices[0].message.content for g in got] == [e.choices[0].message.content for e in expected]
        assert status(live.url + "/health") == 200

        os.kill(worker.process.pid, signal.SIGSTOP)  # frozen with a request in flight, then gone
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(worker.run, [Request([1, 2, 3], max_new_tokens=5)], 60)
            while worker.held == 0:
                time.sleep(0.01)
            worker.process.kill()
            with pytest.raises(ModelDown, match="stopped"):
                in_flight.result(timeout=30)
        with pytest.raises(openai.InternalServerError) as e:
            served.chat.completions.create(model="tiny", messages=asks[0], max_tokens=8)
        assert e.value.status_code == 503 and "restart the server" in e.value.message
        assert status(live.url + "/health") == 503
    finally:
        live.close()


def test_a_model_process_that_cannot_start_says_why_in_one_line(tiny_run, wm):
    from ringworld.serve.worker import ProcessWorker

    with pytest.raises(ChildProcessError, match="the model's process did not start: .*nonsense"):
        ProcessWorker(tiny_run, wm.engine, device="nonsense", compile=False)
