"""Context parallelism in training (dp x cp meshes against one process) and progressive context growth."""

import json

import pytest
import torch
from safetensors.torch import load_file
from test_train import SMALL, logged, small_cli, torchrun, weights

from ringworld.cli import main
from ringworld.train.checkpoint import latest_checkpoint, read_config, resolve_checkpoint
from ringworld.train.config import TrainConfig, parse_stage
from ringworld.train.loop import train


@pytest.mark.slow
def test_context_parallel_training_equals_one_process(world_tokenizer_dir, tmp_path):
    """Rows split over a ring of 2 (dp 1 x cp 2), and 2 row groups of rings of 2 (dp 2 x cp 2, FSDP over
    all 4): the same losses, gradient norms and weights as one process with whole rows."""
    cfg = TrainConfig(out=str(tmp_path / "single"), tokenizer=str(world_tokenizer_dir), **{**SMALL, "steps": 3})
    single = train(cfg, progress=False).history
    args = small_cli(world_tokenizer_dir, steps=3)
    for name, nproc in (("cp2", 2), ("dp2cp2", 4)):
        run = tmp_path / name
        torchrun(nproc, ["--out", str(run), *args, "--cp", "2"])
        torch.testing.assert_close(logged(run, "loss"), [h["loss"] for h in single], atol=1e-5, rtol=0)
        torch.testing.assert_close(logged(run, "grad_norm"), [h["grad_norm"] for h in single], atol=1e-5, rtol=1e-5)
        a, b = weights(tmp_path / "single"), weights(run)
        for k in a:  # 3 AdamW steps, whose sign-like first updates magnify last-bit gradient differences
            torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=0, msg=f"{name} {k}")


def test_cp_errors_are_clear(world_tokenizer_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match="multiple of 4"):
        TrainConfig(out="x", seq_len=250, context_parallel=2)
    common = ["--tokenizer", str(world_tokenizer_dir), "--depth", "1", "--steps", "1", "--no-tensorboard"]
    assert (
        main(["train", "--out", str(tmp_path / "a"), *common, "--cp", "2"]) == 2
    )  # one process cannot hold a ring of 2
    assert "does not divide the 1 process" in capsys.readouterr().err


def test_stages_grow_the_context_from_a_checkpoint_and_resume(world_tokenizer_dir, tmp_path):
    base = TrainConfig(out=str(tmp_path / "base"), tokenizer=str(world_tokenizer_dir), **{**SMALL, "steps": 2})
    train(base, progress=False)
    stages = [parse_stage("512:2e4:2"), parse_stage("1k:5e4:1:2")]
    grown = TrainConfig(
        out=str(tmp_path / "grown"), init_from=str(tmp_path / "base"), stages=stages, **{**SMALL, "lr": 1e-12}
    )
    result = train(grown, progress=False)
    assert [h["step"] for h in result.history] == [1, 2, 1]
    # the first stage started from the base weights (an lr of 1e-12 leaves them where they were)
    start, after = weights(tmp_path / "base"), weights(tmp_path / "grown" / "stage_1")
    for k in start:
        torch.testing.assert_close(after[k], start[k], atol=1e-6, rtol=0, msg=k)
    last = resolve_checkpoint(tmp_path / "grown")
    assert last == latest_checkpoint(tmp_path / "grown" / "stage_2")
    model = read_config(last)["model"]
    assert (model["max_seq_len"], model["rope_theta"]) == (1024, 5e4)
    assert json.loads((last / "trainer_state.json").read_text())["step"] == 1
    assert train(grown, resume=True, progress=False).history == []  # every stage done: nothing to train
    assert load_file(last / "model.safetensors").keys() == start.keys()


@pytest.mark.parametrize("bad", ["16k:1e6", "x:1e6:5", "1k:1e6:5:2:9"])
def test_bad_stage_is_an_argparse_error(bad, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--out", "x", "--stage", bad])
    assert "a stage looks like 16k:1e6:50" in capsys.readouterr().err
