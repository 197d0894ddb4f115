"""Exact evaluation of a world model on held-out world episodes, judged by the oracle.

| metric           | asked                               | right when                                      |
| ---------------- | ----------------------------------- | ----------------------------------------------- |
| t2i_accuracy     | draw a caption                      | every object: colour, shape, region; no extra   |
| caption_accuracy | caption a rendered frame            | exactly the scene's objects, each in its region |
| t2v_accuracy     | a video of a caption with motion    | frame 0 as t2i, the same objects in every frame, |
|                  |                                     | each first move in the true direction           |
| predict_accuracy | frames after 2 real ones, per step  | step k's frame parses to the true state (±1 px) |
| action_accuracy  | one frame after each action         | the agent where the actions put it (±1 px)      |
| qa_accuracy      | a question about an image or video  | the answer equals the true one                  |

Plus perplexity of text and vision targets on held-out packed documents, and the tokenizer's PSNR.
Every task draws ``samples`` episodes from seeds training never uses, the same ones each run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from ringworld.data.sources import WorldSource
from ringworld.eval.tokenizer import evaluate_vision
from ringworld.infer.sampling import Sampling
from ringworld.infer.tasks import (
    DEFAULT_GUIDANCE,
    DRAWING,
    WorldModel,
    answer,
    caption_images,
    generate_images,
    generate_videos,
    predict,
    rollout,
)
from ringworld.train.loss import modality_counts, modality_sums, per_modality_means
from ringworld.world.captions import direction, parse_caption, region
from ringworld.world.oracle import parse_frames, score
from ringworld.world.sim import Obj, State, WorldConfig
from ringworld.world.tasks import TaskConfig, TaskSample, sample_task

EVAL_SEED = 7_000_003  # episodes from this seed on; training draws from (seed, step, row)
CONTEXT_FRAMES = 2  # real frames given before prediction: two show every velocity


@dataclass
class Evaluation:
    metrics: dict  # the numbers (JSON-ready)
    examples: dict = field(default_factory=dict)  # per task: media and text to show in a report


def _episodes(task: str, n: int, cfg: TaskConfig, seed: int) -> list[TaskSample]:
    rng = np.random.default_rng([seed, sum(map(ord, task))])
    return [sample_task(task, rng, cfg) for _ in range(n)]


def _as_obj(seen) -> Obj:
    return Obj(seen.color, seen.shape, seen.x, seen.y)


def scene_matches(seen: list, objects: tuple[Obj, ...], world: WorldConfig) -> bool:
    """The parse shows exactly these objects (colour, shape), each in its region of the 3x3 grid."""
    by_color = {s.color: s for s in seen}
    if set(by_color) != {o.color for o in objects}:
        return False
    return all(
        by_color[o.color].shape == o.shape and region(_as_obj(by_color[o.color]), world) == region(o, world)
        for o in objects
    )


def caption_matches(text: str, state: State) -> bool:
    """The caption names exactly the scene's objects, each with its colour, shape and region."""
    said = sorted((m.color, m.shape, m.row, m.column) for m in parse_caption(text))
    truth = sorted((o.color, o.shape, *region(o, state.config)) for o in state.objects)
    return said == truth


def video_matches(frames: np.ndarray, states: list[State], world: WorldConfig) -> bool:
    """Frame 0 shows the caption's scene, every frame the same objects, and each object's first
    move goes the way the true first move does (a bounce included)."""
    parsed = parse_frames(frames, world)
    if not scene_matches(parsed[0], states[0].objects, world):
        return False
    kinds = {(o.color, o.shape) for o in states[0].objects}
    if any({(s.color, s.shape) for s in p} != kinds for p in parsed):
        return False
    first, second = ({s.color: s for s in p} for p in parsed[:2])
    for before, after in zip(states[0].objects, states[1].objects, strict=True):
        moved = Obj(
            "", "", 0, 0, second[before.color].x - first[before.color].x, second[before.color].y - first[before.color].y
        )
        truth = Obj("", "", 0, 0, after.x - before.x, after.y - before.y)
        if direction(moved) != direction(truth):
            return False
    return True


def agent_at(seen: list, agent: Obj, tolerance: int = 1) -> bool:
    return any(
        s.color == agent.color
        and s.shape == agent.shape
        and abs(s.x - agent.x) <= tolerance
        and abs(s.y - agent.y) <= tolerance
        for s in seen
    )


def _mean(flags) -> float:
    flags = list(flags)
    return round(float(np.mean(flags)), 4) if flags else float("nan")


@torch.inference_mode()
def perplexity(wm: WorldModel, cfg: TaskConfig, *, rows: int = 16, seq_len: int = 512, seed: int = EVAL_SEED) -> dict:
    """exp(mean cross-entropy) of text and of vision targets over held-out packed world documents."""
    source = WorldSource(wm.codec, seq_len=seq_len, rows=rows, seed=seed, task_config=cfg, caption_dropout=0.0)
    batch = source.batch(0).to(wm.engine.device)
    logits = wm.engine.model(batch.ids, segment_ids=batch.segment_ids, positions=batch.positions).float()
    if wm.engine.logit_bias is not None:
        logits = logits + wm.engine.logit_bias
    means = per_modality_means(modality_sums(logits.float(), batch), modality_counts(batch))
    return {f"perplexity_{name}": round(math.exp(mean), 4) for name, mean in means.items()}


def evaluate(
    wm: WorldModel,
    *,
    samples: int = 100,
    horizon: int = 4,
    guidance: float = DEFAULT_GUIDANCE,
    sampling: Sampling = DRAWING,
    seed: int = EVAL_SEED,
    psnr_frames: int = 500,
    progress: bool = True,
) -> Evaluation:
    """Every metric of the module docstring on ``samples`` held-out episodes per task; prediction
    and action rollouts go ``horizon`` steps (past the trained video length, the window slides)."""
    world = wm.world
    cfg = TaskConfig(world=world, video_frames=wm.video_frames)
    frames = {"predict": CONTEXT_FRAMES + horizon, "act": 1 + horizon}
    metrics: dict = {}
    examples: dict = {}
    steps = [
        ("text_to_image", _t2i),
        ("image_to_text", _caption),
        ("text_to_video", _t2v),
        ("predict", _predict),
        ("act", _act),
        ("qa", _qa),
    ]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(steps) + 1, desc="eval", unit="task")
    for task, run in steps:
        if bar is not None:
            bar.set_postfix_str(task)
        episodes = _episodes(task, samples, replace(cfg, video_frames=frames.get(task, cfg.video_frames)), seed)
        found, shown = run(wm, episodes, world, guidance, sampling)
        metrics.update(found)
        examples[task] = shown
        if bar is not None:
            bar.update()
    metrics.update(perplexity(wm, cfg, seed=seed))
    metrics["tokenizer_psnr"] = evaluate_vision(wm.codec.vision, world, psnr_frames)["psnr"]
    metrics["eval_samples_per_task"] = samples
    metrics["drawing"] = asdict(sampling) | {"guidance": guidance}  # how images and videos were sampled
    if bar is not None:
        bar.update()
        bar.close()
    return Evaluation(metrics, examples)


def _t2i(wm, episodes, world, guidance, sampling):
    captions = [e.document[0].text for e in episodes]
    images = generate_images(wm, captions, guidance=guidance, sampling=sampling)
    parsed = parse_frames(images, world)
    right = [scene_matches(p, e.states[0].objects, world) for p, e in zip(parsed, episodes, strict=True)]
    return {"t2i_accuracy": _mean(right)}, {"prompts": captions, "images": images, "correct": right}


def _caption(wm, episodes, world, guidance, sampling):
    images = np.stack([e.document[0].pixels for e in episodes])
    said = caption_images(wm, images)
    right = [caption_matches(c, e.states[0]) for c, e in zip(said, episodes, strict=True)]
    return {"caption_accuracy": _mean(right)}, {"images": images, "captions": said, "correct": right}


def _t2v(wm, episodes, world, guidance, sampling):
    captions = [e.document[0].text for e in episodes]
    frames = len(episodes[0].states)
    videos = generate_videos(wm, captions, frames, guidance=guidance, sampling=sampling)
    right = [video_matches(v, e.states, world) for v, e in zip(videos, episodes, strict=True)]
    return {"t2v_accuracy": _mean(right)}, {"prompts": captions, "videos": videos, "correct": right}


def _predict(wm, episodes, world, guidance, sampling):
    clips = np.stack([e.document[0].pixels for e in episodes])  # (N, T, H, W, 3)
    future = predict(wm, clips[:, :CONTEXT_FRAMES], clips.shape[1] - CONTEXT_FRAMES)  # (N, K, H, W, 3)
    parsed = [parse_frames(f, world) for f in future]
    per_step = [
        _mean(score(p[k], e.states[CONTEXT_FRAMES + k]).correct for p, e in zip(parsed, episodes, strict=True))
        for k in range(future.shape[1])
    ]
    shown = {"context": clips[:, :CONTEXT_FRAMES], "predicted": future, "truth": clips[:, CONTEXT_FRAMES:]}
    return {"predict_accuracy": per_step}, shown


def _act(wm, episodes, world, guidance, sampling):
    clips = np.stack([e.document[0].pixels for e in episodes])
    actions = [e.actions for e in episodes]
    future = rollout(wm, clips[:, 0], actions)  # (N, A, H, W, 3)
    right = [
        [agent_at(seen, e.states[k + 1].agent) for k, seen in enumerate(parse_frames(f, world))]
        for f, e in zip(future, episodes, strict=True)
    ]
    per_step = [_mean(r[k] for r in right) for k in range(future.shape[1])]
    shown = {"start": clips[:, 0], "actions": actions, "predicted": future, "truth": clips[:, 1:]}
    return {"action_accuracy": _mean(np.ravel(right)), "action_accuracy_per_step": per_step}, shown


def _qa(wm, episodes, world, guidance, sampling):
    seen = [e.document[0].pixels for e in episodes]
    questions = [e.document[1].text for e in episodes]
    said = answer(wm, seen, questions)
    right = [a.strip().lower() == e.answer.lower() for a, e in zip(said, episodes, strict=True)]
    shown = {
        "media": seen,
        "questions": questions,
        "answers": said,
        "truth": [e.answer for e in episodes],
        "correct": right,
    }
    return {"qa_accuracy": _mean(right)}, shown
