"""What a world model is asked to do, as prompts for the engine and media back.

| task           | prompt                                        | generated                         |
| -------------- | --------------------------------------------- | --------------------------------- |
| generate_image | <|bos|> caption <|image|>                     | one image (guided by the caption) |
| generate_video | <|bos|> caption <|video|>                     | ``frames`` frames                 |
| caption        | <|bos|> image instruction <|sep|>             | text up to <|eos|>                |
| predict        | <|bos|> <|video|> context frames              | the next frames [1]               |
| rollout        | <|bos|> <|video|> frame <|eof|>, then actions | one frame after each action [1]   |
| ask            | <|bos|> image or video, question <|sep|>      | the answer up to <|eos|>          |

The prompts are the training documents of ``ringworld.world.tasks`` cut where the answer starts,
so a model trained on the world mixture answers in the form it learned. Guidance's unconditional
prompt is what caption dropout trained: the same prompt without its caption.

[1] A model trained with ``--say-motion`` says how each object moves before each frame it draws
(``Predicted.said``): the reason for the frame, in words a user can check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ringworld.device import default_device
from ringworld.documents import Document, Image, Text, Video
from ringworld.infer.engine import Engine, Prefill
from ringworld.infer.sampling import GREEDY, Sampling
from ringworld.tokens.bundle import load_codec, world_settings
from ringworld.train.checkpoint import load_model, read_config
from ringworld.train.loss import background_logit_bias
from ringworld.world.captions import CAPTION_PROMPT
from ringworld.world.sim import WorldConfig

DEFAULT_GUIDANCE = 3.0
# Images and videos are sampled, not greedy: a caption places an object in a region of several
# cells, and greedy decoding puts it where the model is surest or nowhere (LlamaGen and Emu3 sample
# too). Measured against greedy and other settings by bench/sampling.py (docs/results.md, #11).
DRAWING = Sampling(temperature=1.0, top_k=0, top_p=1.0, seed=0)


@dataclass
class WorldModel:
    """A checkpoint ready to answer: the engine, its codec and the world its tokenizer knows."""

    engine: Engine
    world: WorldConfig
    checkpoint: Path
    video_frames: int = 4  # frames in the videos it was trained on: the longest it makes in one go
    says_motion: bool = False  # trained to say each move before drawing it (``TrainConfig.say_motion``)

    @property
    def codec(self):
        return self.engine.codec

    @property
    def frame_size(self) -> int:
        return self.engine.codec.vision.frame_size

    def room(self, prompts: Sequence[np.ndarray]) -> int:
        """New ids that fit in the model's context after the longest of ``prompts``."""
        return self.engine.room(prompts)

    def generate(self, prompts: Sequence[np.ndarray], **kwargs) -> list[np.ndarray]:
        """Each prompt's new tokens (``Engine.generate``'s arguments). The one place the tasks below
        run the model: a server replaces it to send them through its shared batch."""
        return self.engine.generate(prompts, **kwargs).tokens


def load_world_model(
    run: str | Path,
    device: str | torch.device | None = None,
    *,
    compile: bool = False,
    prefill: Prefill | None = None,
) -> WorldModel:
    """The latest checkpoint of a run (or a checkpoint directory), on ``device``; ``prefill`` says
    how its engine prefills prompts (e.g. ``ringworld.parallel.context.RingPrefill``)."""
    device = torch.device(device) if device is not None else default_device()
    model, checkpoint = load_model(run, device)
    codec = load_codec(checkpoint / "tokenizer", device=device)
    config = read_config(checkpoint)
    frames = int(config["train"].get("video_frames", 4))
    code = config.get("background_code")
    bias = background_logit_bias(
        model.cfg.vocab_size,
        None if code is None else codec.vocab.code_id(code),
        config["train"].get("background_weight", 1.0),
    )
    engine = Engine(model, codec, compile=compile, prefill=prefill, logit_bias=bias)
    world = WorldConfig(**world_settings(checkpoint / "tokenizer"))
    says = bool(config["train"].get("say_motion", False))
    return WorldModel(engine, world, checkpoint, max(2, frames), says)


def _prompt(wm: WorldModel, doc: Document, drop: int = 1) -> np.ndarray:
    """The ids of ``doc`` without its last ``drop`` ids (its <|eos|> and any closing tags)."""
    return wm.codec.encode(doc).ids[:-drop]


def _special(wm: WorldModel, name: str) -> int:
    return wm.codec.vocab.special(name)


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def decoded_media(wm: WorldModel, ids: np.ndarray, kind: type, frames: int = 0) -> np.ndarray:
    """Pixels of the last image or video in ``ids`` (read leniently; constrained spans always parse).
    A video of fewer than ``frames`` frames, cut short by the model's context (frames written as
    changes can run long), goes on with its last frame: the frames it did not change."""
    return _pixels(wm, _last_media(wm, ids, kind), frames)


def decoded_video(wm: WorldModel, ids: np.ndarray, frames: int) -> tuple[np.ndarray, list[str]]:
    """The last video in ``ids``: its pixels, as ``decoded_media`` gives them, and its notes, one
    per gap between its frames ("" where none)."""
    video = _last_media(wm, ids, Video)
    return _pixels(wm, video, frames), video.notes or [""] * max(0, video.num_frames - 1)


def _last_media(wm: WorldModel, ids: np.ndarray, kind: type) -> Image | Video:
    media = [s for s in wm.codec.decode(ids, lenient=True).segments if isinstance(s, kind)]
    if not media:
        raise RuntimeError(f"the model produced no {kind.__name__.lower()}; this is a bug in constrained decoding")
    return media[-1]


def _pixels(wm: WorldModel, media: Image | Video, frames: int) -> np.ndarray:
    pixels = wm.codec.decode_pixels([media])[0].pixels
    if isinstance(media, Video) and 0 < len(pixels) < frames:
        pixels = np.concatenate([pixels, np.repeat(pixels[-1:], frames - len(pixels), axis=0)])
    return pixels


NOTE_IDS_PER_OBJECT = 16  # room for one object's words in a note ("red circle up and to the left, ")


def frame_room(wm: WorldModel, action: bool = False, notes: bool = False) -> int:
    """The most ids one generated video frame takes: its changes or rows, its <|eof|>, its action,
    and (``notes``, for a model that says the motion) what it says before the frame."""
    said = NOTE_IDS_PER_OBJECT * wm.world.max_objects if notes and wm.says_motion else 0
    return wm.codec.longest_frame + 1 + int(action) + said


@dataclass
class Predicted:
    """Frames a world model made, and what it said before each one."""

    frames: np.ndarray  # (N, K, H, W, 3) uint8
    said: list[list[str]]  # said[n][k]: the note before frame k of clip n ("" where it said none)


def _fitting(wm: WorldModel, prompts: Sequence[np.ndarray], budget: dict) -> dict:
    """``budget`` (``generate``'s arguments) with no more new ids than the context has room for."""
    return budget | {"max_new_tokens": min(budget["max_new_tokens"], wm.room(prompts))}


def drawing_prompts(wm: WorldModel, caption: str, kind: type) -> tuple[np.ndarray, np.ndarray]:
    """The prompt that opens an image (``kind`` Image) or a video after ``caption``, and its
    caption-less twin that guidance mixes against."""
    if not caption.strip():
        raise ValueError('the prompt is empty: give a caption, e.g. "a red circle in the top left"')
    opener = [_special(wm, "<|video|>" if kind is Video else "<|image|>")]
    return np.r_[_prompt(wm, [Text(caption)]), opener], np.array([_special(wm, "<|bos|>"), *opener])


def drawing_budget(wm: WorldModel, kind: type, frames: int) -> dict:
    """``generate`` arguments that make one image, or a video of ``frames`` frames, and stop there."""
    video = kind is Video
    return {
        # a video's frames each end in <|eof|>, and those written as changes may be longer than rows
        "max_new_tokens": frames * (frame_room(wm) if video else wm.codec.frame_length) + 1,
        "video_frames": frames if video else 0,
        "stop": (_special(wm, "<|/video|>" if video else "<|/image|>"),),
    }


def _from_captions(
    wm: WorldModel,
    captions: Sequence[str],
    kind: type,
    frames: int,
    *,
    guidance: float,
    sampling: Sampling,
    batch_size: int,
) -> np.ndarray:
    """An image (``kind`` Image, frames 1) or a video of ``frames`` frames per caption, guided
    against the caption-less prompt; (N, H, W, 3) or (N, T, H, W, 3) uint8."""
    out = []
    for part in _batches(len(captions), batch_size):
        pairs = [drawing_prompts(wm, c, kind) for c in captions[part]]
        prompts = [p for p, _ in pairs]
        made = wm.generate(
            prompts,
            sampling=sampling,
            guidance=guidance,
            uncond_prompts=[u for _, u in pairs],
            **_fitting(wm, prompts, drawing_budget(wm, kind, frames)),
        )
        out += [decoded_media(wm, np.r_[p, t], kind, frames) for p, t in zip(prompts, made, strict=True)]
    return np.stack(out)


def generate_images(
    wm: WorldModel,
    captions: Sequence[str],
    *,
    guidance: float = DEFAULT_GUIDANCE,
    sampling: Sampling = DRAWING,
    batch_size: int = 64,
) -> np.ndarray:
    """One image per caption: (N, H, W, 3) uint8."""
    return _from_captions(wm, captions, Image, 1, guidance=guidance, sampling=sampling, batch_size=batch_size)


def generate_videos(
    wm: WorldModel,
    captions: Sequence[str],
    frames: int,
    *,
    guidance: float = DEFAULT_GUIDANCE,
    sampling: Sampling = DRAWING,
    batch_size: int = 64,
) -> np.ndarray:
    """One video of ``frames`` frames per caption: (N, T, H, W, 3) uint8. Past the length the
    model was trained on, the video goes on as a rollout (``predict``) from its last frames."""
    first = min(frames, wm.video_frames)
    videos = _from_captions(wm, captions, Video, first, guidance=guidance, sampling=sampling, batch_size=batch_size)
    if frames > first:
        videos = np.concatenate([videos, predict(wm, videos, frames - first, sampling=sampling).frames], axis=1)
    return videos


def answer_text(wm: WorldModel, prompt: np.ndarray, tokens: np.ndarray) -> str:
    """The text the model wrote after ``prompt`` ("" if it began with anything but text)."""
    segments = wm.codec.decode(np.r_[prompt, tokens], lenient=True).segments
    texts = [s.text for s in segments if isinstance(s, Text)]
    return texts[-1].strip() if texts and tokens.size and wm.codec.vocab.is_text(int(tokens[0])) else ""


def _text_answers(wm: WorldModel, prompts: list[np.ndarray], max_new_tokens: int, batch_size: int) -> list[str]:
    out = []
    for part in _batches(len(prompts), batch_size):
        made = wm.generate(prompts[part], max_new_tokens=max_new_tokens)
        out += [answer_text(wm, p, t) for p, t in zip(prompts[part], made, strict=True)]
    return out


def caption_images(wm: WorldModel, images: np.ndarray, *, max_new_tokens: int = 64, batch_size: int = 64) -> list[str]:
    """A caption for each image (N, H, W, 3) uint8: the answer to the caption instruction."""
    documents = [[Image(pixels=image), Text(CAPTION_PROMPT)] for image in images]
    return answer_documents(wm, documents, max_new_tokens=max_new_tokens, batch_size=batch_size)


def answer(
    wm: WorldModel,
    media: Sequence[np.ndarray],
    questions: Sequence[str],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 64,
) -> list[str]:
    """The answer to each question about an image (H, W, 3) or a video (T, H, W, 3)."""
    if len(media) != len(questions):
        raise ValueError(f"{len(media)} images/videos but {len(questions)} questions")
    if not all(q.strip() for q in questions):
        raise ValueError('a question is empty: ask something, e.g. "what colour is the square?"')
    documents = [
        [Image(pixels=seen) if seen.ndim == 3 else Video(pixels=seen), Text(q)]
        for seen, q in zip(media, questions, strict=True)
    ]
    return answer_documents(wm, documents, max_new_tokens=max_new_tokens, batch_size=batch_size)


def answer_documents(
    wm: WorldModel, documents: Sequence[Document], *, max_new_tokens: int = 16, batch_size: int = 64
) -> list[str]:
    """The answer to each document, whose last segment is a question (text, images, videos before it)."""
    return _text_answers(wm, [question_prompt(wm, doc) for doc in documents], max_new_tokens, batch_size)


def question_prompt(wm: WorldModel, document: Document) -> np.ndarray:
    """The prompt that asks for the answer to ``document``'s last segment (a question)."""
    return np.r_[_prompt(wm, document), _special(wm, "<|sep|>")]


def predict(
    wm: WorldModel,
    clips: np.ndarray,
    steps: int,
    *,
    sampling: Sampling = GREEDY,
    batch_size: int = 64,
) -> Predicted:
    """The ``steps`` frames after each clip (N, T, H, W, 3), and what the model said before each.

    The model sees at most the last ``video_frames - 1`` frames (the videos it was trained on
    are that long with one to predict) and the window slides on as frames are made."""
    frames, said = clips, [[] for _ in clips]
    while frames.shape[1] < clips.shape[1] + steps:
        context = frames[:, -(wm.video_frames - 1) :]
        seen = context.shape[1]
        n = min(wm.video_frames - seen, clips.shape[1] + steps - frames.shape[1])
        out = []
        for part in _batches(len(clips), batch_size):
            # a video's ids end <|/video|> <|eos|>: cut both to leave it open after its last <|eof|>
            prompts = [_prompt(wm, [Video(pixels=clip)], drop=2) for clip in context[part]]
            tokens = wm.generate(
                prompts,
                max_new_tokens=min(n * frame_room(wm, notes=True) + 1, wm.room(prompts)),
                sampling=sampling,
                video_frames=seen + n,
                video_notes=wm.says_motion,
                stop=[_special(wm, "<|/video|>")],
            )
            for i, p, t in zip(range(len(clips))[part], prompts, tokens, strict=True):
                pixels, notes = decoded_video(wm, np.r_[p, t], seen + n)
                out.append(pixels[seen:])
                said[i] += _notes_before(notes, seen, n)
        frames = np.concatenate([frames, np.stack(out)], axis=1)
    return Predicted(frames[:, clips.shape[1] :], said)


def _notes_before(notes: list[str], first: int, n: int) -> list[str]:
    """The notes before frames ``first`` .. ``first + n - 1`` of a video ("" past what was said)."""
    return [notes[f - 1] if f - 1 < len(notes) else "" for f in range(first, first + n)]


def rollout(
    wm: WorldModel,
    frames: np.ndarray,
    actions: Sequence[Sequence[str]],
    *,
    sampling: Sampling = GREEDY,
    batch_size: int = 64,
) -> Predicted:
    """Play ``actions[i]`` from frame ``frames[i]`` (N, H, W, 3): the frame after each action,
    (N, A, H, W, 3) uint8, and what the model said before each. Every row takes the same number
    of actions. Longer plays than the trained videos go in chunks, each starting from the last
    frame made."""
    if len({len(a) for a in actions}) > 1:
        raise ValueError("every rollout takes the same number of actions")
    if len(frames) != len(actions):
        raise ValueError(f"{len(frames)} start frames but {len(actions)} action lists")
    vocab = wm.codec.vocab
    ids = np.array([[vocab.action_id(a) for a in acts] for acts in actions]).reshape(len(actions), -1)
    made, said = [frames[:, None]], [[] for _ in frames]
    for start in range(0, ids.shape[1], wm.video_frames - 1):
        chunk = ids[:, start : start + wm.video_frames - 1]
        n = chunk.shape[1]
        out = []
        for part in _batches(len(frames), batch_size):
            prompts = [_prompt(wm, [Video(pixels=frame[None])], drop=2) for frame in made[-1][part, -1]]
            tokens = wm.generate(
                prompts,
                max_new_tokens=min(n * frame_room(wm, action=True, notes=True) + 1, wm.room(prompts)),
                sampling=sampling,
                video_frames=1 + n,
                video_actions=chunk[part].tolist(),
                video_notes=wm.says_motion,
                stop=[_special(wm, "<|/video|>")],
            )
            for i, p, t in zip(range(len(frames))[part], prompts, tokens, strict=True):
                pixels, notes = decoded_video(wm, np.r_[p, t], 1 + n)
                out.append(pixels[1:])
                said[i] += _notes_before(notes, 1, n)
        made.append(np.stack(out))
    return Predicted(np.concatenate(made[1:], axis=1), said)
