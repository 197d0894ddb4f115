"""What makes the world model learn (issue #11): the background weight and its inference-time
correction, Muon, and the held-out learning curves that measure objects."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ringworld.data.packing import pack
from ringworld.documents import Image, Text, Video
from ringworld.eval.world import TrainingJudge, evaluate
from ringworld.infer.tasks import load_world_model
from ringworld.model.transformer import ModelConfig, Transformer
from ringworld.tokens.bundle import load_codec
from ringworld.tokens.codec import Codec
from ringworld.train.config import TrainConfig
from ringworld.train.curves import FOLLOW_FLOOR, SKILL_KEYS, HeldOutCurves, follow_curves
from ringworld.train.loop import train
from ringworld.train.loss import background_logit_bias, most_frequent_code, weigh_background
from ringworld.train.metrics import read_metrics
from ringworld.train.optim import Muon, make_optimizer, orthogonalise
from ringworld.world.tasks import TaskConfig


def test_the_logit_bias_undoes_the_background_weight():
    """Fit free logits to a distribution under a weighted cross-entropy: the fit is biased against
    the down-weighted class, and log(1 / w) on its logit restores the true probabilities."""
    truth = torch.tensor([0.7, 0.2, 0.1])  # class 0 is the "background"
    w = 0.1
    logits = torch.zeros(3, requires_grad=True)
    optimizer = torch.optim.LBFGS([logits], max_iter=200, line_search_fn="strong_wolfe")
    class_weight = torch.tensor([w, 1.0, 1.0])

    def closure():
        optimizer.zero_grad()
        loss = -(truth * class_weight * F.log_softmax(logits, -1)).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    learned = logits.detach().softmax(-1)
    assert learned[0] < 0.25  # the weight alone teaches far too little background
    corrected = (logits.detach() + background_logit_bias(3, 0, w)).softmax(-1)
    torch.testing.assert_close(corrected, truth, atol=1e-4, rtol=0)
    assert background_logit_bias(3, 0, 1.0) is None and background_logit_bias(3, None, 0.1) is None
    assert background_logit_bias(3, 2, 0.5)[2] == pytest.approx(math.log(2))


def test_background_is_the_most_frequent_code_and_only_its_targets_are_reweighted(world_tokenizer_dir):
    codec = load_codec(world_tokenizer_dir)
    frame = np.zeros((32, 32, 3), np.uint8)
    frame[:8, :8] = (220, 30, 30)
    docs = [codec.encode([Text("a red square", loss=False), Image(pixels=frame)])]
    batch = pack(docs, 128, codec.vocab.special("<|pad|>"))
    code = most_frequent_code(batch, codec.vocab)
    assert code == int(np.bincount(codec.vision.encode(frame[None]).ravel()).argmax())
    heavy = weigh_background(batch, codec.vocab.code_id(code), 0.1)
    is_background = batch.targets == codec.vocab.code_id(code)
    assert is_background.sum() > 40
    torch.testing.assert_close(heavy.weights[is_background], batch.weights[is_background] * 0.1)
    assert torch.equal(heavy.weights[~is_background], batch.weights[~is_background])
    assert most_frequent_code(pack([codec.encode([Text("only words")])], 16, 0), codec.vocab) is None


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    model = Transformer(ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64))
    adamw, muon = make_optimizer(model, TrainConfig(out="x"), torch.device("cpu"))
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    assert in_muon == {n for n, p in model.named_parameters() if n.startswith("layers.") and p.ndim == 2}
    in_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert {"embed.weight", "head.weight", "norm.weight"} <= in_adamw and not in_adamw & in_muon
    (only,) = make_optimizer(model, TrainConfig(out="x", optimizer="adamw"), torch.device("cpu"))
    assert sum(len(g["params"]) for g in only.param_groups) == len(list(model.parameters()))


def test_muon_is_torchs_in_bf16_and_orthogonalises_in_fp32():
    torch.manual_seed(0)
    shapes = [(48, 16), (16, 40)]  # tall and wide
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    a = Muon(ours, lr=0.02, momentum=0.95, ns_dtype=torch.bfloat16)
    b = torch.optim.Muon(theirs, lr=0.02, momentum=0.95)
    for _ in range(3):
        for p, q in zip(ours, theirs, strict=True):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        a.step()
        b.step()
    for p, q in zip(ours, theirs, strict=True):
        assert torch.equal(p, q)  # the same update, bit for bit
    g = torch.randn(48, 16)
    o = orthogonalise(g, a.defaults["ns_coefficients"], a.defaults["ns_steps"], 1e-7, torch.float32)
    assert o.dtype == torch.float32 and o.shape == g.shape
    singular = torch.linalg.svdvals(o)
    assert singular.min() > 0.5 and singular.max() < 1.5  # Muon's quintic aims near 1, not at it
    close = orthogonalise(g, a.defaults["ns_coefficients"], a.defaults["ns_steps"], 1e-7, torch.bfloat16)
    torch.testing.assert_close(o, close.float(), atol=0.05, rtol=0)


def test_frames_of_targets_and_the_determined_frames(world_tokenizer_dir):
    saved = load_codec(world_tokenizer_dir)
    codec = Codec.build(saved.text, saved.vision, delta_frames=False)
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    docs = [codec.encode([Text("words")]), codec.encode([Video(pixels=clip)])]
    curves = HeldOutCurves(codec, TaskConfig(video_frames=3), 0, documents=2)
    batch = pack(docs, 256, codec.vocab.special("<|pad|>"))
    frame = curves.frame_of_target(batch)[0]
    h, w = codec.grid
    body = h * (w + 1) + 1  # a frame's rows and its <|eof|>
    video_start = len(docs[0])  # <|bos|> of the video document
    targets = batch.targets[0]
    codes = (targets >= codec.vocab.code_ids.start) & (targets < codec.vocab.code_ids.stop)
    frames_of_codes = frame[codes].tolist()
    assert frames_of_codes == [0] * (h * w) + [1] * (h * w) + [2] * (h * w)
    assert (frame[:video_start] == 0).all()  # the text document before it counts no frame
    assert int(frame[video_start + 2 + body]) == 1  # the first target of frame 1

    delta = Codec.build(saved.text, saved.vision, delta_frames=True)  # frames 1 and 2 as their changes
    batch = pack([delta.encode([Video(pixels=clip)])], 512, delta.vocab.special("<|pad|>"))
    targets, frame = (
        batch.targets[0],
        HeldOutCurves(delta, TaskConfig(video_frames=3), 0, documents=2).frame_of_target(batch)[0],
    )
    cells = (targets >= delta.vocab.cell_ids.start) & (targets < delta.vocab.cell_ids.stop)
    codes = delta.vision.encode(clip).reshape(3, -1)
    changed = [int((codes[t] != codes[t - 1]).sum()) for t in (1, 2)]
    assert frame[cells].tolist() == [1] * changed[0] + [2] * changed[1]


def _world_run(out, tokenizer, **settings) -> TrainConfig:
    """A one-block run on world data with held-out curves, quiet: what these tests train."""
    return TrainConfig(
        out=str(out), tokenizer=str(tokenizer), depth=1, seq_len=512, compile=False, tensorboard=False, **settings
    )


def test_curves_are_finite_and_improve_with_training(world_tokenizer_dir, tmp_path):
    run = tmp_path / "run"
    cfg = _world_run(run, world_tokenizer_dir, video_frames=3, batch_size=4, steps=60, warmup=5, eval_every=10)
    train(replace(cfg, tensorboard=True), progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "heldout/t2i_object_acc" in r]
    assert [r["step"] for r in evals] == [10, 20, 30, 40, 50, 60]
    keys = [k for k in evals[0] if k.startswith("heldout/")]
    assert len(keys) == 15 and all(math.isfinite(r[k]) for r in evals for k in keys)
    assert all(0 <= r[k] <= 1 for r in evals for k in keys if k.endswith("_acc"))
    object_loss = [sum(r[f"heldout/{t}_object_loss"] for t in ("t2i", "t2v", "predict", "act")) for r in evals]
    assert object_loss[-1] < object_loss[0] - 1.0, object_loss
    assert evals[-1]["heldout/caption_token_acc"] > evals[0]["heldout/caption_token_acc"]
    assert evals[-1]["seconds"] > evals[0]["seconds"] > 0
    assert isinstance(json.loads((run / "config.json").read_text())["background_code"], int)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("heldout/predict_object_acc")] == [10, 20, 30, 40, 50, 60]


def test_a_run_that_says_motion_curves_what_it_says(world_tokenizer_dir, tmp_path):
    cfg = _world_run(
        tmp_path / "run", world_tokenizer_dir, video_frames=4, batch_size=2, steps=2, log_every=2, eval_every=2
    )
    cfg = replace(cfg, say_motion=True)
    train(cfg, progress=False)
    last = read_metrics(tmp_path / "run")[-1]
    assert 0 <= last["heldout/predict_said_acc"] <= 1 and 0 <= last["heldout/act_said_acc"] <= 1
    wm = load_world_model(tmp_path / "run")
    assert wm.says_motion
    # the judge reads back what it said before the first predicted frame and each action's frame
    judged = evaluate(wm, samples=2, horizon=2, judged_only=True, progress=False)
    assert 0 <= judged.metrics["predict_said_accuracy"] <= 1
    assert all(isinstance(said, str) for task in ("predict", "act") for said in judged.examples[task]["said"])
    with pytest.raises(ValueError, match="say_motion is for world data"):
        replace(cfg, data="shards/")


def test_the_judge_scores_the_live_model_and_leaves_its_training_alone(world_tokenizer_dir, tmp_path):
    cfg = _world_run(tmp_path / "plain", world_tokenizer_dir, video_frames=3, batch_size=2, steps=4, log_every=2)
    plain = train(cfg, progress=False)
    judge = TrainingJudge(video_frames=3, samples=2)
    judged = train(replace(cfg, out=str(tmp_path / "judged"), judge_every=2), progress=False, judge=judge)
    assert [h["loss"] for h in judged.history] == [h["loss"] for h in plain.history]
    rows = [r for r in read_metrics(tmp_path / "judged") if "judged/t2i_accuracy" in r]
    assert [r["step"] for r in rows] == [2, 4]
    assert all(0 <= row[f"judged/{key}"] <= 1 for row in rows for key in SKILL_KEYS.values())


def test_task_weights_follow_what_the_curves_have_left_to_learn():
    base = {"text_to_image": 2.0, "image_to_text": 1.0, "predict": 1.0, "needle_text": 0.5}
    skills = {"t2i_accuracy": 0.5, "caption_accuracy": 1.0, "predict_accuracy_1": float("nan")}
    followed = follow_curves(base, skills)
    # half learned: half its weight; learned: the floor; not measured (nan, or no metric): as it was
    assert followed == {"text_to_image": 1.0, "image_to_text": FOLLOW_FLOOR, "predict": 1.0, "needle_text": 0.5}
    with pytest.raises(ValueError, match="follow_curves needs the judged curves"):
        TrainConfig(out="x", follow_curves=True)
    with pytest.raises(ValueError, match="judge_every is for world data"):
        TrainConfig(out="x", data="shards/", judge_every=10)
