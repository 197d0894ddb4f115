import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ringworld.cli import main
from ringworld.data.shards import ShardWriter
from ringworld.data.sources import WorldSource
from ringworld.model.transformer import ModelConfig, Transformer
from ringworld.parallel.mesh import apply_activation_checkpointing
from ringworld.tokens.bundle import load_codec
from ringworld.train import checkpoint as checkpoint_module
from ringworld.train import loop as loop_module
from ringworld.train.checkpoint import latest_checkpoint, load_model, read_config
from ringworld.train.config import TrainConfig
from ringworld.train.loop import lr_at, train
from ringworld.train.metrics import read_metrics
from ringworld.world.tasks import sample_task

# fp32 and AdamW: the exactness tests compare against one process or one big batch to 1e-5 (Muon's
# Newton-Schulz steps run in bf16 on CPUs with fast bf16; its own test below allows for that)
SMALL = dict(
    depth=1,
    seq_len=256,
    video_frames=2,
    batch_size=4,
    steps=6,
    warmup=2,
    log_every=1,
    tensorboard=False,
    compile=False,
    dtype="fp32",
    optimizer="adamw",
)


def losses(history):
    return [h["loss"] for h in history]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(latest_checkpoint(run) / "model.safetensors")


def test_resume_gives_identical_losses_and_weights(world_tokenizer_dir, tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "once"), tokenizer=str(world_tokenizer_dir), grad_accum=2, **SMALL)
    once = train(cfg, progress=False)
    split = replace(cfg, out=str(tmp_path / "split"))
    first = train(split, stop_at=3, progress=False)
    assert first.checkpoint.name == "step_0000003"
    second = train(split, resume=True, progress=False)
    assert [h["step"] for h in second.history] == [4, 5, 6]
    assert losses(first.history) + losses(second.history) == losses(once.history)  # exact, not close
    a, b = weights(tmp_path / "once"), weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logged = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5, 6]


class StandInJudge:
    """A tiny model's judged figures stay at 0 for a few steps: this judge says QA is learned, and its
    figure for drawing moves with the weights, as a real judge's figures do."""

    def check(self, world_settings):
        pass

    def __call__(self, model, codec, settings, logit_bias):
        drawn = float(next(model.parameters()).detach().double().sum() * 1e4 % 1)
        return {"qa_accuracy": 0.95, "t2i_accuracy": drawn}


class RefusingJudge(StandInJudge):
    def check(self, world_settings):
        raise ValueError("this judge cannot judge this world")


def test_task_weights_that_follow_the_judge_resume_exactly(world_tokenizer_dir, tmp_path):
    judge = StandInJudge()
    common = {**SMALL, "judge_every": 2, "video_frames": 3}
    cfg = TrainConfig(out=str(tmp_path / "once"), tokenizer=str(world_tokenizer_dir), follow_curves=True, **common)
    once = train(cfg, progress=False, judge=judge)
    fixed = train(replace(cfg, out=str(tmp_path / "fixed"), follow_curves=False), progress=False, judge=judge)
    assert losses(once.history)[:2] == losses(fixed.history)[:2]
    assert losses(once.history)[2:] != losses(fixed.history)[2:]  # from step 3 on, another mixture
    split = replace(cfg, out=str(tmp_path / "split"))
    first = train(split, stop_at=3, progress=False, judge=judge)
    # judged at its last step 3 as well, it still draws the mixture followed at step 2 until step 4
    followed = next(r for r in read_metrics(tmp_path / "once") if "task_weight/qa" in r)
    at_stop = json.loads((latest_checkpoint(tmp_path / "split") / "trainer_state.json").read_text())["data"]
    assert at_stop["task_weights"] == pytest.approx(
        {t: followed[f"task_weight/{t}"] for t in at_stop["task_weights"]}, abs=1e-4
    )
    second = train(split, resume=True, progress=False, judge=judge)
    assert losses(first.history) + losses(second.history) == losses(once.history)
    state = json.loads((latest_checkpoint(tmp_path / "split") / "trainer_state.json").read_text())
    assert state["data"]["task_weights"]["qa"] == pytest.approx(0.1) and state["data"]["task_weights"]["act"] == 1.0
    logged = read_metrics(tmp_path / "once")
    assert [r["step"] for r in logged if "task_weight/qa" in r] == [2, 4, 6]
    assert [r["judged/qa_accuracy"] for r in logged if "judged/qa_accuracy" in r] == [0.95] * 3
    with pytest.raises(ValueError, match="judge_every needs a judge"):
        train(cfg, progress=False)
    with pytest.raises(ValueError, match="cannot judge this world"):  # before the first step, not at it
        train(replace(cfg, out=str(tmp_path / "refused")), progress=False, judge=RefusingJudge())
    assert not (tmp_path / "refused" / "metrics.jsonl").exists()


def test_a_resumed_run_draws_the_task_mixture_it_is_given_now(world_tokenizer_dir, tmp_path):
    cfg = TrainConfig(
        out=str(tmp_path / "run"), tokenizer=str(world_tokenizer_dir), tasks={"qa": 1.0}, **{**SMALL, "steps": 2}
    )
    train(cfg, progress=False)
    train(replace(cfg, steps=4, tasks={"text_to_image": 1.0}), resume=True, progress=False)
    state = json.loads((latest_checkpoint(tmp_path / "run") / "trainer_state.json").read_text())
    assert state["data"]["task_weights"] == {"text_to_image": 1.0}


def test_gradient_accumulation_equals_one_big_batch(world_tokenizer_dir, tmp_path):
    base = TrainConfig(out=str(tmp_path / "a"), tokenizer=str(world_tokenizer_dir), **{**SMALL, "steps": 3})
    big = train(base, progress=False)
    accumulated = train(replace(base, out=str(tmp_path / "b"), grad_accum=4), progress=False)
    torch.testing.assert_close(losses(accumulated.history), losses(big.history), atol=1e-5, rtol=0)
    # AdamW and clipping would hide a gradient off by a constant factor from the losses: check the norms
    norms = [[h["grad_norm"] for h in r.history] for r in (accumulated, big)]
    torch.testing.assert_close(*norms, atol=1e-5, rtol=1e-5)
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)


def test_checkpoint_is_self_contained_and_a_failed_save_keeps_the_last(world_tokenizer_dir, tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = TrainConfig(out=str(run), tokenizer=str(world_tokenizer_dir), **{**SMALL, "steps": 4, "save_every": 2})
    train(cfg, stop_at=2, progress=False)
    good = latest_checkpoint(run)
    names = {p.name for p in good.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer", "trainer_state.json", "optimizer", "rng"} <= names
    model, path = load_model(run)
    assert path == good and not model.training

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        train(cfg, resume=True, progress=False)
    assert latest_checkpoint(run) == good and sorted(p.name for p in (run / "checkpoints").glob("step_*")) == [
        "step_0000002"
    ]
    monkeypatch.undo()
    resumed = train(cfg, resume=True, progress=False)
    assert [h["step"] for h in resumed.history] == [3, 4]


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(out="x", steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(cfg, 0, 0) == pytest.approx(0.1) and lr_at(cfg, 9, 0) == pytest.approx(1.0)
    assert lr_at(cfg, 54, 0) == pytest.approx(0.55) and lr_at(cfg, 99, 0) == pytest.approx(0.1)  # last step: floor
    timed = replace(cfg, max_seconds=10.0)
    assert lr_at(timed, 20, 10.0) == pytest.approx(0.1)  # out of time: at the floor whatever the step


def test_train_cli_errors(world_tokenizer_dir, tmp_path, capsys):
    common = ["--depth", "1", "--seq-len", "256", "--video-frames", "2", "--steps", "1", "--no-tensorboard"]
    common += ["--no-compile"]
    assert main(["train", "--out", str(tmp_path / "a"), *common]) == 2
    assert "pass --tokenizer" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "b"), "--resume", *common]) == 2
    assert "no checkpoint to resume" in capsys.readouterr().err
    tok = ["--tokenizer", str(world_tokenizer_dir)]
    assert main(["train", "--out", str(tmp_path / "c"), *tok, *common, "--batch-size", "3", "--grad-accum", "2"]) == 2
    assert "multiple of 2" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "d"), *tok, *common, "--seq-len", "64"]) == 2
    assert "raise --seq-len" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "e"), *tok, *common]) == 0
    assert main(["train", "--out", str(tmp_path / "e"), *tok, *common]) == 2
    assert "--resume" in capsys.readouterr().err


def small_cli(tokenizer: Path, steps: int, optimizer: str = "adamw") -> list[str]:
    """``SMALL`` as ``ringworld train`` options."""
    args = ["--tokenizer", str(tokenizer), "--depth", "1", "--seq-len", "256", "--video-frames", "2"]
    args += ["--batch-size", "4", "--steps", str(steps), "--warmup", "2", "--log-every", "1"]
    return [*args, "--no-tensorboard", "--no-compile", "--dtype", "fp32", "--optimizer", optimizer]


def torchrun(nproc: int, args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    done = subprocess.run([*cmd, "-m", "ringworld", "train", *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def logged(run: Path, key: str) -> list[float]:
    return [json.loads(line)[key] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_fsdp_two_processes_equal_one_and_resume_at_another_world_size(world_tokenizer_dir, tmp_path):
    """FSDP2 over gloo, 2 processes sharing the global batch, against one process; then the 2-process
    run's sharded checkpoint resumed by one process, and a one-process checkpoint by two."""
    cfg = TrainConfig(out=str(tmp_path / "single"), tokenizer=str(world_tokenizer_dir), **{**SMALL, "steps": 4})
    single = train(cfg, progress=False).history
    loss, norm = [h["loss"] for h in single], [h["grad_norm"] for h in single]
    args = small_cli(world_tokenizer_dir, steps=4)

    dp2 = tmp_path / "dp2"  # 2 processes x 2 micro-batches of 1 row
    torchrun(2, ["--out", str(dp2), *args, "--grad-accum", "2", "--stop-at", "2"])
    torch.testing.assert_close(logged(dp2, "loss"), loss[:2], atol=1e-5, rtol=0)
    torch.testing.assert_close(logged(dp2, "grad_norm"), norm[:2], atol=1e-5, rtol=1e-5)
    assert main(["train", "--out", str(dp2), "--resume", "--grad-accum", "1"]) == 0  # 2 -> 1 process
    torch.testing.assert_close(logged(dp2, "loss"), loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(logged(dp2, "grad_norm"), norm, atol=1e-5, rtol=1e-5)
    a, b = weights(tmp_path / "single"), weights(dp2)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)

    dp1 = tmp_path / "dp1"
    train(replace(cfg, out=str(dp1)), stop_at=2, progress=False)
    torchrun(2, ["--out", str(dp1), "--resume"])  # 1 -> 2 processes
    torch.testing.assert_close(logged(dp1, "loss"), loss, atol=1e-5, rtol=0)


def test_muon_under_fsdp_equals_one_process_and_its_state_reshards(world_tokenizer_dir, tmp_path):
    """Muon on sharded DTensor weights takes the steps of one process, and a 2-process checkpoint's
    Muon momentum resumes in one process. Exact only to bf16: Muon orthogonalises in bf16 on CPUs
    with fast bf16 (fp32 elsewhere), where the last-bit differences of FSDP's gradients round
    apart. Measured: one Muon step on a (704, 256) matrix, plain or sharded in two, is 1.2 % or
    1.8 % off the fp32 Newton-Schulz update, and after 4 steps the matrices of the two runs differ
    by ~1 % (one process against itself with grad_accum 2: 0.3 %). Orthogonalising each shard on
    its own would be off by tens of percent."""
    cfg = TrainConfig(
        out=str(tmp_path / "single"), tokenizer=str(world_tokenizer_dir), **{**SMALL, "steps": 4, "optimizer": "muon"}
    )
    single = train(cfg, progress=False).history
    dp2 = tmp_path / "dp2"
    torchrun(2, ["--out", str(dp2), *small_cli(world_tokenizer_dir, steps=4, optimizer="muon"), "--stop-at", "2"])
    assert main(["train", "--out", str(dp2), "--resume"]) == 0  # 2 -> 1 process, Muon's momentum resharded
    torch.testing.assert_close(logged(dp2, "loss"), [h["loss"] for h in single], atol=5e-4, rtol=0)
    a, b = weights(tmp_path / "single"), weights(dp2)
    relative = {k: float((a[k] - b[k]).norm() / a[k].norm()) for k in a}
    assert max(relative.values()) < 3e-2, relative


def test_training_on_ingested_shards_resumes_with_the_sampler_state(world_tokenizer_dir, tmp_path):
    codec = load_codec(world_tokenizer_dir)
    rng = np.random.default_rng(0)
    with ShardWriter(tmp_path / "shards", codec.vocab) as writer:
        for i in range(12):
            writer.add(codec.encode(sample_task("image_to_text", rng).document), f"doc{i}")
    cfg = TrainConfig(
        out=str(tmp_path / "once"), tokenizer=str(world_tokenizer_dir), data=str(tmp_path / "shards"), **SMALL
    )
    once = train(cfg, progress=False)
    split = replace(cfg, out=str(tmp_path / "split"))
    train(split, stop_at=2, progress=False)
    state = json.loads((latest_checkpoint(tmp_path / "split") / "trainer_state.json").read_text())
    assert state["data"]["kind"] == "shards" and state["data"]["cursor"] > 0
    resumed = train(split, resume=True, progress=False)
    assert losses(resumed.history) == losses(once.history)[2:]


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64))
    ids = torch.randint(0, 50, (2, 12))
    seg = torch.tensor([[0] * 5 + [1] * 7, [0] * 12])

    def grads():
        model.zero_grad()
        model(ids, segment_ids=seg).logsumexp(-1).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    keys = list(model.state_dict())
    mlp = model.layers[0].mlp
    apply_activation_checkpointing(model)
    calls, forward = [], mlp.forward
    mlp.forward = lambda x: calls.append(1) or forward(x)
    for a, b in zip(plain, grads(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert len(calls) == 2  # the block ran again in backward
    assert list(model.state_dict()) == keys  # what checkpoints store


@pytest.mark.slow
def test_compiled_blocks_train_like_eager(world_tokenizer_dir, tmp_path):
    """Compiling each block (the default; ~20 s to compile on 2 cores) changes speed, not losses."""
    cfg = TrainConfig(out=str(tmp_path / "eager"), tokenizer=str(world_tokenizer_dir), **{**SMALL, "steps": 2})
    eager = losses(train(cfg, progress=False).history)
    compiled = losses(train(replace(cfg, out=str(tmp_path / "compiled"), compile=True), progress=False).history)
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=0)


def test_a_stop_signal_ends_after_the_step_with_a_checkpoint(world_tokenizer_dir, tmp_path, monkeypatch):
    cfg = TrainConfig(out=str(tmp_path / "once"), tokenizer=str(world_tokenizer_dir), **{**SMALL, "steps": 4})
    once = losses(train(cfg, progress=False).history)
    real_step, calls = loop_module.train_step, []

    def step_then_ctrl_c(*args, **kwargs):
        out = real_step(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C during step 2
        return out

    monkeypatch.setattr(loop_module, "train_step", step_then_ctrl_c)
    split = replace(cfg, out=str(tmp_path / "split"))
    stopped = train(split, progress=False)
    assert [h["step"] for h in stopped.history] == [1, 2] and stopped.checkpoint.name == "step_0000002"
    monkeypatch.undo()
    assert losses(stopped.history) + losses(train(split, resume=True, progress=False).history) == once


def test_resuming_with_another_model_shape_is_refused_and_harmless(world_tokenizer_dir, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = TrainConfig(out=str(run), tokenizer=str(world_tokenizer_dir), **{**SMALL, "steps": 1})
    train(cfg, progress=False)
    assert main(["train", "--out", str(run), "--resume", "--depth", "2", "--steps", "2"]) == 2
    assert "n_layers 1 -> 2" in capsys.readouterr().err
    assert main(["train", "--out", str(run), "--resume", "--steps", "2", "--weight-decay", "0.05"]) == 0
    saved = read_config(latest_checkpoint(run))["train"]
    assert saved["steps"] == 2 and saved["weight_decay"] == 0.05 and saved["depth"] == 1


def test_resume_applies_changed_optimizer_settings(world_tokenizer_dir, tmp_path, monkeypatch):
    small = {**SMALL, "steps": 2, "optimizer": "muon"}
    cfg = TrainConfig(out=str(tmp_path / "run"), tokenizer=str(world_tokenizer_dir), **small)
    train(cfg, stop_at=1, progress=False)
    seen = []
    real_step = loop_module.train_step

    def spy(model, optimizer, *args, **kwargs):
        adamw, muon = optimizer
        seen.append([(g["weight_decay"], g["betas"]) for g in adamw.param_groups])
        seen.append([(g["peak_lr"], g["momentum"]) for g in muon.param_groups])
        return real_step(model, optimizer, *args, **kwargs)

    monkeypatch.setattr(loop_module, "train_step", spy)
    changed = replace(cfg, weight_decay=0.01, betas=(0.8, 0.9), muon_lr=0.01, muon_momentum=0.9)
    train(changed, resume=True, progress=False)
    assert seen == [[(0.01, (0.8, 0.9)), (0.0, (0.8, 0.9))], [(0.01, 0.9)]]


def test_logs_carry_both_losses_speed_and_mfu(world_tokenizer_dir, tmp_path):
    run = tmp_path / "run"
    cfg = TrainConfig(out=str(run), tokenizer=str(world_tokenizer_dir), **{**SMALL, "steps": 2, "tensorboard": True})
    train(cfg, progress=False)
    lines = read_metrics(run)
    assert [line["step"] for line in lines] == [1, 2]
    for line in lines:
        assert line["text_loss"] > 0 and line["vision_loss"] > 0 and line["tokens_per_s"] > 0
        assert 0 < line["mfu_measured_peak"] < 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"loss/text", "loss/vision", "speed/mfu_measured_peak"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss/vision")] == [1, 2]


def test_train_options_are_the_config_fields(capsys):
    """`ringworld train`'s options come from TrainConfig (flags, help, defaults) and its choices from
    the modules that define them."""
    from dataclasses import fields

    from ringworld.model.attention import KERNELS
    from ringworld.model.transformer import PRESETS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for f in fields(TrainConfig):
        if "help" in f.metadata:
            flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
            assert flag in text and " ".join(f.metadata["help"].split())[:40] in text, f.name
    assert "{" + ",".join(PRESETS) + "}" in text and "{" + ",".join(("auto", *KERNELS)) + "}" in text
    assert "optimizer steps [1000]" in text and "--no-compile" in text


def test_background_batches_and_states_are_those_made_in_turn(world_tokenizer_dir):
    """The accelerator path makes batches in a thread; checkpoints must still record the state after
    the last batch *used*, not the one being made."""
    codec = load_codec(world_tokenizer_dir)
    made = [WorldSource(codec, seq_len=512, rows=2, seed=1) for _ in range(2)]
    with loop_module._Prefetcher(made[0], slice(None), background=True) as ahead:
        with loop_module._Prefetcher(made[1], slice(None), background=False) as in_turn:
            for step in range(1, 4):
                assert torch.equal(ahead.next().ids, in_turn.next().ids)
                assert ahead.state == in_turn.state == {"kind": "world", "step": step, "seed": 1, "task_weights": None}


@pytest.mark.slow
def test_fsdp_with_compiled_blocks_trains_like_one_eager_process(world_tokenizer_dir, tmp_path):
    """The README's torchrun command compiles by default: FSDP2 around compiled blocks, on gloo."""
    cfg = TrainConfig(out=str(tmp_path / "single"), tokenizer=str(world_tokenizer_dir), **{**SMALL, "steps": 2})
    single = losses(train(cfg, progress=False).history)
    args = ["--tokenizer", str(world_tokenizer_dir), "--depth", "1", "--seq-len", "256", "--video-frames", "2"]
    args += ["--batch-size", "4", "--steps", "2", "--warmup", "2", "--log-every", "1", "--no-tensorboard"]
    args += ["--dtype", "fp32", "--optimizer", "adamw"]
    torchrun(2, ["--out", str(tmp_path / "dp2"), *args, "--compile"])
    torch.testing.assert_close(logged(tmp_path / "dp2", "loss"), single, atol=1e-4, rtol=0)


def test_metrics_reader_skips_a_half_written_last_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert read_metrics(tmp_path / "nowhere") == []


def test_saved_configs_round_trip_and_unknown_keys_are_refused():
    cfg = TrainConfig(out="x", tasks={"qa": 1.0}, stages=[{"seq_len": 2048, "rope_theta": 2e4, "steps": 3}])
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # what a run's config.json holds
    with pytest.raises(ValueError, match=r"unknown training config keys \['learning_rate'\]"):
        TrainConfig.from_dict({"out": "x", "learning_rate": 0.1})
