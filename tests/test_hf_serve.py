"""`ringworld serve` on runs imported from public families, as the official `openai` client meets it: a
tiny random Emu3 (chat about an image, text alone, and images) and Chameleon (chat about an image; it
cannot draw). The server's answers equal what the imported run gives in this process."""

import base64
import io
from dataclasses import replace

import numpy as np
import pytest
from conftest import LiveServer
from PIL import Image as PILImage

pytest.importorskip("transformers", reason="HF transformers builds the tiny models (pip install 'ringworld[hf]')")
openai = pytest.importorskip("openai", reason="the openai client is a dev extra: pip install -e .[dev]")

import hf_models  # noqa: E402

from ringworld.cli import main  # noqa: E402
from ringworld.infer.imported import CAPTION_QUESTION, answers, draw, load_imported, question_prompt, reply  # noqa: E402
from ringworld.infer.tasks import DRAWING  # noqa: E402

pytestmark = pytest.mark.slow


def _imported(family: str, tmp_path_factory):
    folder = tmp_path_factory.mktemp(family)
    hf = {"emu3": hf_models.emu3, "chameleon": hf_models.chameleon, "llama": hf_models.llama}[family]()
    hf_models.save(hf, folder / "hf")
    assert main(["import", "hf", str(folder / "hf"), "--out", str(folder / "run")]) == 0
    return folder / "run"


@pytest.fixture(scope="module", params=["emu3", "chameleon"])
def served(request, tmp_path_factory):
    """(family, the imported model, its live server, an openai client of it)."""
    run = _imported(request.param, tmp_path_factory)
    im = load_imported(run, "cpu")
    live = LiveServer(im)
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
    yield request.param, im, live, client
    live.close()


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (hf_models.FRAME, hf_models.FRAME, 3), dtype=np.uint8)


def _data_uri(frame: np.ndarray) -> str:
    buffer = io.BytesIO()
    PILImage.fromarray(frame).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _ask(client, content, max_tokens: int = 12) -> str:
    made = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": content}], max_tokens=max_tokens
    )
    assert made.choices[0].finish_reason in ("stop", "length") and 1 <= made.usage.completion_tokens <= max_tokens
    return made.choices[0].message.content


def test_chat_about_an_image_answers_as_the_imported_run(served) -> None:
    family, im, _, client = served
    image = _image()
    question = [{"type": "image_url", "image_url": {"url": _data_uri(image)}}, {"type": "text", "text": "what?"}]
    assert _ask(client, question) == reply(im, [image], ["what?"], max_new_tokens=12)[0]
    caption = [{"type": "image_url", "image_url": {"url": _data_uri(_image(1))}}]
    assert _ask(client, caption) == reply(im, [_image(1)], [CAPTION_QUESTION], max_new_tokens=12)[0]


def test_a_streamed_chat_sends_what_one_reply_sends(served) -> None:
    _, _, _, client = served
    content = [{"type": "image_url", "image_url": {"url": _data_uri(_image(2))}}, {"type": "text", "text": "hm?"}]
    whole = _ask(client, content)
    stream = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": content}], max_tokens=12, stream=True
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream).strip() == whole


def test_emu3_draws_through_the_images_endpoint_and_chameleon_says_it_cannot(served) -> None:
    family, im, _, client = served
    if family == "chameleon":
        with pytest.raises(openai.BadRequestError, match="chameleon cannot draw"):
            client.images.generate(model="tiny", prompt="a red apple")
        return
    size = 2 * hf_models.FRAME
    asked = {"model": "tiny", "prompt": "a red apple", "n": 2, "size": f"{size}x{size}", "extra_body": {"seed": 5}}
    drawn = client.images.generate(**asked)
    pictures = [np.asarray(PILImage.open(io.BytesIO(base64.b64decode(d.b64_json)))) for d in drawn.data]
    assert [p.shape for p in pictures] == [(size, size, 3)] * 2
    alone = [draw(im, ["a red apple"], sampling=replace(DRAWING, seed=5 + i))[0] for i in range(2)]
    for picture, expected in zip(pictures, alone, strict=True):  # each served image is drawn 2x larger
        assert np.array_equal(picture[::2, ::2], expected)


def test_text_alone_and_what_a_family_cannot_do(served) -> None:
    family, im, live, client = served
    assert _ask(client, "hello") == answers(im, [question_prompt(im, None, "hello")], max_new_tokens=12)[0]
    with pytest.raises(openai.BadRequestError, match="make no videos"):
        client.post("/world/rollout", body={"frames": [_data_uri(_image())], "steps": 1}, cast_to=object)
    with pytest.raises(openai.BadRequestError, match="make no videos"):
        client.post("/videos", body={"prompt": "a red apple falls"}, cast_to=object)
    opener = im.codec.tokenizer.convert_ids_to_tokens(im.codec.layout.image_open[0])
    with pytest.raises(openai.BadRequestError, match="opens an image"):  # typed by a user: it would open one
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"hi {opener}"}], max_tokens=4, temperature=1.0
        )
    frames = [PILImage.fromarray(_image(i)) for i in range(2)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    gif = "data:image/gif;base64," + base64.b64encode(buffer.getvalue()).decode()
    with pytest.raises(openai.BadRequestError, match="read images, not videos"):
        _ask(client, [{"type": "image_url", "image_url": {"url": gif}}])


def test_a_text_family_chats_and_says_it_takes_no_images(tmp_path_factory) -> None:
    """LWM-Text (Llama) answers text as the imported run does; an image, or a drawing, gets a 400."""
    im = load_imported(_imported("llama", tmp_path_factory), "cpu")
    live = LiveServer(im)
    try:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
        assert _ask(client, "hello") == answers(im, [question_prompt(im, None, "hello")], max_new_tokens=12)[0]
        with pytest.raises(openai.BadRequestError, match="llama models read and write text only"):
            _ask(client, [{"type": "image_url", "image_url": {"url": _data_uri(_image())}}])
        with pytest.raises(openai.BadRequestError, match="llama models read and write text only"):
            client.images.generate(model="tiny", prompt="a red apple", size="64x64")
    finally:
        live.close()


def test_serve_runs_an_imported_run_in_a_process_of_its_own(tmp_path_factory) -> None:
    """``ProcessWorker`` (what ``ringworld serve`` runs) loads an imported run and answers as it does here."""
    from ringworld.serve.worker import ProcessWorker

    run = _imported("emu3", tmp_path_factory)
    im = load_imported(run, "cpu")
    live = LiveServer(im, worker=ProcessWorker(run, im.engine, rows=4, compile=False))
    try:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
        content = [{"type": "image_url", "image_url": {"url": _data_uri(_image())}}, {"type": "text", "text": "hm"}]
        assert _ask(client, content) == reply(im, [_image()], ["hm"], max_new_tokens=12)[0]
    finally:
        live.close()
