"""Needle in a haystack: documents of the length and depth asked, training rows that fit, the judge,
the flash frame through a trained vision tokenizer, and `ringworld eval needle` end to end."""

import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from ringworld.cli import main
from ringworld.data.sources import WorldSource
from ringworld.documents import Video
from ringworld.tokens.bundle import load_codec
from ringworld.tokens.codec import Codec
from ringworld.tokens.text import TextTokenizer
from ringworld.tokens.vision import VisionConfig, train_vision_tokenizer
from ringworld.train.config import TrainConfig
from ringworld.train.loop import train
from ringworld.world.needle import judge, needle_document, prompt_length
from ringworld.world.sim import COLORS, PALETTE, Obj, State, WorldConfig, random_state, render
from ringworld.world.tasks import (
    DEFAULT_TASKS,
    EDGE_DEPTHS,
    NEEDLE_TASKS,
    TASKS,
    TaskConfig,
    fit_needles,
    needle_depth,
    sample_mixture,
    sample_task,
)

# the demo's lattice world: one 8 px sprite is one 8 px patch, so a solid patch is a square's code
LATTICE = WorldConfig(frame_size=48, object_size=8, snap=8)


@pytest.fixture(scope="module")
def codec(world_tokenizer_dir):
    return load_codec(world_tokenizer_dir)  # the default 32 px world, 8x8 codes a frame


@pytest.fixture(scope="module")
def lattice_codec(world_tokenizer_dir):
    """A vision tokenizer trained briefly (~7 s) on scenes of squares in the lattice world: it
    knows every colour's solid patch, which is all the flash frame is made of."""
    rng = np.random.default_rng(0)
    world = replace(LATTICE, min_objects=3)

    def squares(n: int) -> np.ndarray:
        states = [random_state(rng, world) for _ in range(n)]
        return render([replace(s, objects=tuple(replace(o, shape="square") for o in s.objects)) for s in states])

    with torch.random.fork_rng():
        config = VisionConfig(frame_size=48, patch=8, kernel=1, channels=32, blocks=0)
        vision = train_vision_tokenizer(squares, config, steps=500, batch_size=16, lr=1e-2, progress=False).model
    return Codec.build(TextTokenizer.load(world_tokenizer_dir), vision)


@pytest.mark.parametrize("length", [400, 1000])
@pytest.mark.parametrize("depth", [0.0, 0.3, 1.0])
def test_text_needle_has_the_length_and_depth_asked(codec, length, depth):
    needle = needle_document("text", codec, length, depth, np.random.default_rng(length), WorldConfig())
    n = prompt_length(codec, needle)
    assert length * 0.95 <= n <= length
    haystack, question, answer = needle.document
    assert [s.loss for s in needle.document] == [False, False, True]
    assert answer.text == needle.answer and len(answer.text) == 5 and answer.text.isdigit()
    assert "magic number" in question.text
    assert haystack.text.count(needle.answer) == 1
    sentences = haystack.text.split(". ")  # captions and the needle each end in "."
    assert len(sentences) == needle.haystack + 1 and needle.answer in sentences[needle.at]
    before = len(codec.text.encode(". ".join(sentences[: needle.at])))  # filler tokens before the needle
    after = len(codec.text.encode(". ".join(sentences[needle.at + 1 :])))  # and after it
    assert abs(before / (before + after) - depth) < 0.05
    assert needle.at == round(needle.depth * needle.haystack)


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_video_needle_has_the_length_and_depth_asked(codec, depth):
    length, frame = 1000, codec.longest_frame + 1  # with its <|eof|>; whole, a 32 px frame is 8 x 9 + 1 ids
    needle = needle_document("video", codec, length, depth, np.random.default_rng(3), WorldConfig())
    assert length - frame < prompt_length(codec, needle) <= length
    video, question, answer = needle.document
    assert [s.loss for s in needle.document] == [False, False, True] and answer.text == needle.answer
    assert video.num_frames == needle.haystack + 1 == len(needle.states)
    solid = [t for t, f in enumerate(video.pixels) if (f == PALETTE[needle.answer]).all()]
    assert solid == [round(depth * needle.haystack)] == [needle.at]
    assert not any(o.shape == "square" for s in needle.states for o in s.objects)


def test_flash_frame_decodes_as_its_colour_and_no_haystack_code_is_solid(lattice_codec):
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(6):
        needle = needle_document("video", lattice_codec, 600, float(rng.random()), rng, LATTICE)
        codes = lattice_codec.decode(lattice_codec.encode(needle.document).ids).segments[0].codes  # (T, 6, 6)
        flash = codes[needle.at]
        assert len(np.unique(flash)) == 1  # one code, the solid patch of the colour
        assert flash[0, 0] not in np.delete(codes, needle.at, axis=0)  # found nowhere in the haystack
        square = State((Obj(needle.answer, "square", 16, 8),), config=LATTICE)
        assert lattice_codec.vision.encode(render(square)[None])[0, 1, 2] == flash[0, 0]  # a square's code
        pixels = lattice_codec.decode_pixels([Video(codes=codes[needle.at : needle.at + 1])])[0].pixels[0]
        mean = pixels.reshape(-1, 3).mean(0)
        nearest = min(COLORS, key=lambda c: float(np.sum((mean - np.array(PALETTE[c])) ** 2)))
        assert nearest == needle.answer
        seen.add(needle.answer)
    assert len(seen) >= 3


@pytest.mark.parametrize("delta_frames", [False, True])
def test_training_needles_fit_their_rows_and_stay_out_of_the_default_mixture(codec, delta_frames):
    codec = Codec.build(codec.text, codec.vision, delta_frames=delta_frames)
    assert set(DEFAULT_TASKS) == set(TASKS) - set(NEEDLE_TASKS)
    rng = np.random.default_rng(0)
    assert not {sample_mixture(rng).task for _ in range(200)} & set(NEEDLE_TASKS)
    seq_len = 512
    with pytest.raises(ValueError, match="longer than a row"):  # the defaults are sized for 1024-id rows
        source = WorldSource(codec, seq_len=seq_len, rows=1, task_weights={"needle_video": 1.0})
        [source.row_documents(s, 0) for s in range(20)]
    cfg = fit_needles(TaskConfig(), codec, seq_len)
    weights = dict.fromkeys(NEEDLE_TASKS, 1.0)
    source = WorldSource(codec, seq_len=seq_len, rows=4, task_weights=weights, task_config=cfg, caption_dropout=0.0)
    lengths = [len(d) for s in range(15) for r in range(4) for d in source.row_documents(s, r)]
    assert max(lengths) <= seq_len  # rows are never overrun
    if not delta_frames:  # and are used (frames written as changes are sized at their longest)
        assert max(lengths) > 0.75 * seq_len
    frames = [sample_task("needle_video", rng, cfg).meta["haystack"] for _ in range(100)]
    sentences = [sample_task("needle_text", rng, cfg).meta for _ in range(100)]
    assert cfg.needle_frames // 8 <= min(frames) < max(frames) == cfg.needle_frames
    assert max(m["haystack"] for m in sentences) <= cfg.needle_sentences
    assert min(m["depth"] for m in sentences) < 0.2 and max(m["depth"] for m in sentences) > 0.8
    depths = [needle_depth(rng) for _ in range(2000)]  # the edges are trained on purpose
    assert abs(sum(d in (0.0, 1.0) for d in depths) / len(depths) - EDGE_DEPTHS) < 0.03
    assert {0.0, 1.0} <= set(depths) and all(0 <= d <= 1 for d in depths)
    with pytest.raises(ValueError, match="raise --seq-len"):
        fit_needles(TaskConfig(), codec, 60)


def test_judge_accepts_the_truth_and_rejects_others():
    assert judge("text", "48213", "48213") and judge("text", "The magic number is 48213.", "48213")
    assert not judge("text", "4821", "48213") and not judge("text", "48213 1", "48213")
    assert not judge("text", "", "04213")
    assert judge("video", "red", "red") and judge("video", " Red.", "red")
    assert not judge("video", "blue", "red") and not judge("video", "reddish", "red")


def test_needle_lengths_that_hold_no_haystack_are_errors(codec):
    with pytest.raises(ValueError, match="at least"):
        needle_document("video", codec, 60, 0.5, np.random.default_rng(0), WorldConfig())
    with pytest.raises(ValueError, match="no filler"):
        needle_document("text", codec, 30, 0.5, np.random.default_rng(0), WorldConfig())
    with pytest.raises(ValueError, match="kinds are"):
        needle_document("audio", codec, 300, 0.5, np.random.default_rng(0), WorldConfig())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lengths", "1k,lots"], "lengths look like"),
        (["--depths", "0,1.5"], "in [0, 1]"),
        (["--kinds", "text,audio"], "kinds are"),
    ],
)
def test_eval_needle_rejects_bad_values(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "needle", "--checkpoint", str(tmp_path), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, stray",
    [(["world", "--lengths", "1k"], "--lengths"), (["needle", "--report", "r"], "--report"), ([], "")],
)
def test_eval_options_belong_to_their_suite(argv, stray, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", *argv[:1], "--checkpoint", str(tmp_path), *argv[1:]])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"unrecognized arguments: {stray}" in err if stray else "world" in err and "needle" in err


@pytest.mark.slow
def test_eval_needle_cli_writes_every_cell_and_a_heatmap(world_tokenizer_dir, tmp_path, capsys):
    """Then the same evaluation with prompts prefilled through a ring of 2 processes answers alike."""
    run = tmp_path / "run"
    cfg = TrainConfig(
        out=str(run),
        tokenizer=str(world_tokenizer_dir),
        depth=1,
        seq_len=512,
        batch_size=2,
        steps=2,
        warmup=1,
        tensorboard=False,
        compile=False,
    )
    train(cfg, progress=False)
    out, plot = tmp_path / "needle.json", tmp_path / "needle.png"
    args = ["eval", "needle", "--checkpoint", str(run), "--lengths", "300,0.5k", "--depths", "0,1", "--samples", "2"]
    assert main([*args, "--json", str(out), "--plot", str(plot), "--device", "cpu"]) == 0
    result = json.loads(out.read_text())
    assert result["lengths"] == [300, 512] and result["depths"] == [0.0, 1.0]
    cells = {(c["kind"], c["length"], c["depth"]): c for c in result["cells"]}
    assert set(cells) == {(k, n, d) for k in ("text", "video") for n in (300, 512) for d in (0.0, 1.0)}
    for (_, n, _), cell in cells.items():
        assert cell["samples"] == 2 and cell["accuracy"] in (0.0, 0.5, 1.0)
        assert n - 16 - 73 < cell["prompt_tokens"] <= n - 16  # room for a 16-token answer
    for kind in ("text", "video"):
        mean = np.mean([c["accuracy"] for c in result["cells"] if c["kind"] == kind])
        assert result["mean_accuracy"][kind] == pytest.approx(mean)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "video  (mean accuracy" in printed and "512" in printed
    assert main(["eval", "needle", "--checkpoint", str(run), "--lengths", "1k"]) == 2  # past the 512-token context
    assert "context is 512" in capsys.readouterr().err

    ring_out = tmp_path / "needle_ring.json"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ringworld"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ring_args = [*args, "--json", str(ring_out), "--device", "cpu", "--cp", "2"]
    done = subprocess.run([*torchrun, *ring_args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("video  (mean accuracy") == 1  # one rank speaks
    assert json.loads(ring_out.read_text())["cells"] == result["cells"]
