"""Exact evaluation of a world model on held-out world episodes, judged by the oracle.

| metric           | asked                               | right when                                      |
| ---------------- | ----------------------------------- | ----------------------------------------------- |
| t2i_accuracy     | draw a caption                      | every object: colour, shape, region; no extra   |
| caption_accuracy | caption a rendered frame            | exactly the scene's objects, each in its region |
| t2v_accuracy     | a video of a caption with motion    | frame 0 as t2i; every later frame the world's   |
|                  |                                     | rollout of frame 0 as drawn, at the caption's   |
|                  |                                     | motion                                          |
| predict_accuracy | frames after 2 real ones, per step  | the clip up to step k follows one world that    |
|                  |                                     | the 2 frames allow                              |
| action_accuracy  | one frame after each action         | the whole clip follows one world that frame 0   |
|                  |                                     | allows (any agent, any velocities); per step    |
|                  |                                     | too, and their mean (``action_accuracy_mean``)  |
| qa_accuracy      | a question about an image or video  | the answer equals the true one; also per kind   |
|                  |                                     | of question (``qa_accuracy_by_kind``: count,    |
|                  |                                     | colour, shape, place, motion)                   |
| predict_said_    | (models trained with --say-motion)  | the motion said before the first predicted      |
| accuracy         | how each object moves, before it    | frame names every object's true move (the one   |
|                  | draws the first predicted frame     | sampled world's)                                |

Prediction, actions and text->video are judged against every world consistent with what the
model was shown (``ringworld.world.consistent``), not against the one the episode was sampled
from; ``*_hidden_share`` says in how many episodes the context leaves the future open.
Plus perplexity of text and vision targets on held-out packed documents, and the tokenizer's PSNR.
Every task draws ``samples`` episodes from seeds training never uses, the same ones each run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ringworld.data.sources import WorldSource
from ringworld.eval.tokenizer import evaluate_vision
from ringworld.infer.engine import Engine
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
from ringworld.world.captions import motion_note, parse_caption, parse_motion_note, question_kind, region
from ringworld.world.consistent import (
    Unknowns,
    Verdict,
    check_judgeable,
    extra_object,
    hides_something,
    judge,
    misdrawn,
)
from ringworld.world.oracle import Seen, parse_frames
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


def scene_mismatch(seen: list[Seen], objects: tuple[Obj, ...], world: WorldConfig) -> str | None:
    """How a parse differs from a scene asked for by colour, shape and region of the 3x3 grid (the
    first object that does), or None when it shows exactly these objects."""
    by_color = {s.color: s for s in seen}
    for o in objects:
        wrong = misdrawn(by_color.get(o.color), o)
        if wrong is not None:
            return wrong
        drawn, asked = region(_as_obj(by_color[o.color]), world), region(o, world)
        if drawn != asked:
            return f"the {o.color} {o.shape} is in the {' '.join(drawn)}, not the {' '.join(asked)}"
    return extra_object(seen, objects)


def scene_matches(seen: list[Seen], objects: tuple[Obj, ...], world: WorldConfig) -> bool:
    """The parse shows exactly these objects (colour, shape), each in its region of the 3x3 grid."""
    return scene_mismatch(seen, objects, world) is None


def caption_matches(text: str, state: State) -> bool:
    """The caption names exactly the scene's objects, each with its colour, shape and region."""
    said = sorted((m.color, m.shape, m.row, m.column) for m in parse_caption(text))
    truth = sorted((o.color, o.shape, *region(o, state.config)) for o in state.objects)
    return said == truth


def _snapped(seen: Seen, world: WorldConfig) -> Obj:
    """A drawn object on the world's lattice, where the simulator can move it."""
    g, top = world.grid, world.max_position
    return Obj(seen.color, seen.shape, min(max(round(seen.x / g) * g, 0), top), min(max(round(seen.y / g) * g, 0), top))


def _directions(state: State) -> list[tuple[int, int]]:
    return [(o.vx, o.vy) for o in state.objects]


def judge_video(frames: np.ndarray, start: State, world: WorldConfig) -> Verdict:
    """A text->video clip (T, H, W, 3) for a caption of ``start``'s objects and motion: frame 0 shows
    the caption's scene, and frames 1.. follow the world from frame 0 as drawn, each object
    moving the caption's way (at any speed the world allows)."""
    parsed = parse_frames(frames, world)
    wrong = scene_mismatch(parsed[0], start.objects, world)
    if wrong is not None:
        return Verdict(len(frames) - 1, 0, f"frame 0: {wrong}")
    drawn = {s.color: s for s in parsed[0]}
    objects = [_snapped(drawn[o.color], world) for o in start.objects]
    unknowns = Unknowns.from_directions(objects, _directions(start), world)
    return judge(unknowns, parsed[1:])


def _seen_objects(seen: list[Seen]) -> list[Obj]:
    return [_as_obj(s) for s in seen]


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
    judged_only: bool = False,
    progress: bool = True,
) -> Evaluation:
    """Every metric of the module docstring on ``samples`` held-out episodes per task; prediction
    and action rollouts go ``horizon`` steps (past the trained video length, the window slides).
    ``judged_only``: the oracle-judged tasks alone, without perplexity and PSNR, which is what any
    object shaped like ``WorldModel`` can be held to, a trained model or a reference model."""
    world = wm.world
    check_judgeable(world)
    cfg = TaskConfig(world=world, video_frames=wm.video_frames)
    frames = {"predict": CONTEXT_FRAMES + horizon, "act": 1 + horizon}
    tasks = {
        "text_to_image": _t2i,
        "image_to_text": _caption,
        "text_to_video": _t2v,
        "predict": _predict,
        "act": _act,
        "qa": _qa,
    }
    evaluation = Evaluation({})
    for task, run in (bar := tqdm(tasks.items(), desc="eval", unit="task", disable=not progress)):
        bar.set_postfix_str(task)
        episodes = _episodes(task, samples, replace(cfg, video_frames=frames.get(task, cfg.video_frames)), seed)
        found, shown = run(wm, episodes, world, guidance, sampling)
        evaluation.metrics.update(found)
        evaluation.examples[task] = shown
    if not judged_only:
        evaluation.metrics.update(perplexity(wm, cfg, seed=seed))
        evaluation.metrics["tokenizer_psnr"] = evaluate_vision(wm.codec.vision, world, psnr_frames)["psnr"]
        evaluation.metrics["eval_samples_per_task"] = samples
        evaluation.metrics["drawing"] = asdict(sampling) | {"guidance": guidance}  # how images and videos were drawn
    return evaluation


JUDGE_SAMPLES = 32  # episodes a task for a judge during training: ~10 s on one core for the tiny model
JUDGE_SEED = 7_000_017  # its episodes: neither training's nor the final eval's, which no choice may see


def judged_skills(metrics: dict) -> dict[str, float]:
    """``evaluate``'s judged figures as one number a key, the ones the targets name: prediction one
    step ahead, and actions as the mean over their rollout steps."""
    skills = {
        "t2i_accuracy": metrics["t2i_accuracy"],
        "caption_accuracy": metrics["caption_accuracy"],
        "t2v_accuracy": metrics["t2v_accuracy"],
        "predict_accuracy_1": metrics["predict_accuracy"][0],
        "action_accuracy_mean": metrics["action_accuracy_mean"],
        "qa_accuracy": metrics["qa_accuracy"],
    }
    said = {k: metrics[k] for k in ("predict_said_accuracy",) if k in metrics}  # models that say the motion
    return skills | said


@dataclass(frozen=True)
class TrainingJudge:
    """The oracle's judgement of the model being trained (``ringworld train --judge-every N``):
    ``samples`` held-out episodes of each task (``JUDGE_SEED``), generated from the live weights and
    judged as ``evaluate`` does, as ``judged_skills``. Called by the training loop, which has the model, its
    codec, the tokenizer's world settings and the logit bias it samples with."""

    video_frames: int
    says_motion: bool = False
    samples: int = JUDGE_SAMPLES

    def check(self, world_settings: dict) -> None:
        check_judgeable(WorldConfig(**world_settings))

    def __call__(self, model, codec, world_settings: dict, logit_bias: torch.Tensor | None) -> dict[str, float]:
        was_training = model.training
        try:
            engine = Engine(model, codec, logit_bias=logit_bias)
            world = WorldConfig(**world_settings)
            wm = WorldModel(engine, world, Path(), max(2, self.video_frames), self.says_motion)
            judged = evaluate(wm, samples=self.samples, seed=JUDGE_SEED, judged_only=True, progress=False)
            return judged_skills(judged.metrics)
        finally:
            model.train(was_training)


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
    verdicts = [judge_video(v, e.states[0], world) for v, e in zip(videos, episodes, strict=True)]
    hidden = [
        hides_something(Unknowns.from_directions(e.states[0].objects, _directions(e.states[0]), world), [], frames - 1)
        for e in episodes
    ]
    metrics = {"t2v_accuracy": _mean(v.correct for v in verdicts), "t2v_hidden_share": _mean(hidden)}
    return metrics, {"prompts": captions, "videos": videos} | _marks(verdicts)


def _marks(verdicts: list[Verdict]) -> dict:
    """What a report shows of each clip's verdict: right or not, and where it broke."""
    return {"correct": [v.correct for v in verdicts], "broke": [v.broke for v in verdicts]}


def _predict(wm, episodes, world, guidance, sampling):
    clips = np.stack([e.document[0].pixels for e in episodes])  # (N, T, H, W, 3)
    steps = clips.shape[1] - CONTEXT_FRAMES
    made = predict(wm, clips[:, :CONTEXT_FRAMES], steps)
    future = made.frames  # (N, K, H, W, 3)
    verdicts, hidden = [], []
    for clip, drawn in zip(clips, future, strict=True):
        context = parse_frames(clip[:CONTEXT_FRAMES], world)
        unknowns = Unknowns.from_frame(_seen_objects(context[0]), world, agent=False)
        # frames 1.. of the clip: the last real one, then the model's
        verdicts.append(judge(unknowns, [*context[1:], *parse_frames(drawn, world)]))
        hidden.append(hides_something(unknowns, context[1:], steps))
    per_step = [_mean(v.right >= CONTEXT_FRAMES - 1 + k for v in verdicts) for k in range(1, steps + 1)]
    shown = {"context": clips[:, :CONTEXT_FRAMES], "predicted": future, "truth": clips[:, CONTEXT_FRAMES:]}
    metrics = {"predict_accuracy": per_step, "predict_hidden_share": _mean(hidden)}
    if wm.says_motion:
        first = CONTEXT_FRAMES - 1  # the move from the last real frame to the first predicted one
        truth = [motion_note(e.states[first], e.states[first + 1]) for e in episodes]
        right = [parse_motion_note(said[0]) == parse_motion_note(t) for said, t in zip(made.said, truth, strict=True)]
        metrics["predict_said_accuracy"] = _mean(right)
        shown["said"] = [said[0] for said in made.said]
    return metrics, shown | _marks(verdicts)


def _act(wm, episodes, world, guidance, sampling):
    clips = np.stack([e.document[0].pixels for e in episodes])
    actions = [e.actions for e in episodes]
    made = rollout(wm, clips[:, 0], actions)
    future = made.frames  # (N, A, H, W, 3)
    verdicts, hidden = [], []
    for clip, drawn, acts in zip(clips, future, actions, strict=True):
        unknowns = Unknowns.from_frame(_seen_objects(parse_frames(clip[:1], world)[0]), world, agent=True)
        verdicts.append(judge(unknowns, parse_frames(drawn, world), acts))
        hidden.append(hides_something(unknowns, [], len(acts), acts))
    per_step = [_mean(v.right >= k for v in verdicts) for k in range(1, future.shape[1] + 1)]
    metrics = {
        "action_accuracy": per_step[-1],  # the whole rollout
        "action_accuracy_mean": round(sum(per_step) / len(per_step), 4),  # over its steps: #21's target
        "action_accuracy_per_step": per_step,
        "act_hidden_share": _mean(hidden),
    }
    shown = {"start": clips[:, 0], "actions": actions, "predicted": future, "truth": clips[:, 1:]}
    if wm.says_motion:
        shown["said"] = [said[0] for said in made.said]
    return metrics, shown | _marks(verdicts)


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
    kinds = [question_kind(q) for q in questions]
    by_kind = {k: _mean([r for r, q in zip(right, kinds, strict=True) if q == k]) for k in sorted(set(kinds))}
    return {"qa_accuracy": _mean(right), "qa_accuracy_by_kind": by_kind}, shown
