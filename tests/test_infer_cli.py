"""End to end on a tiny run: a few training steps, then every inference command and the evaluation."""

import json
import re
import shutil

import numpy as np
import pytest

from ringworld.cli import main
from ringworld.eval.world import caption_matches, judge_video, scene_matches
from ringworld.infer.tasks import answer, load_world_model
from ringworld.media import read_image, read_video, write_gif, write_image
from ringworld.world.oracle import parse_frame, parse_frames
from ringworld.world.sim import Obj, State, WorldConfig, random_state, render, rollout

pytestmark = pytest.mark.slow

FRAME = 32


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


def test_generate_image_and_video(run, tmp_path):
    image = tmp_path / "img.png"
    assert (
        main(["generate", "image", "a red circle in the top left", "--checkpoint", str(run), "--out", str(image)]) == 0
    )
    assert read_image(image).shape == (FRAME * 4, FRAME * 4, 3)
    clip = tmp_path / "clip.gif"
    args = ["generate", "video", "a blue square moving right", "--frames", "5", "--checkpoint", str(run)]
    assert main([*args, "--out", str(clip), "--scale", "1", "--temperature", "1", "--top-k", "20"]) == 0
    assert read_video(clip).shape == (5, FRAME, FRAME, 3)  # 3 frames in one go (as trained), 2 more by rollout


def test_caption_predict_ask_and_resize_notice(run, tmp_path, capsys):
    frames = render(rollout(random_state(np.random.default_rng(0), agent=True), 2))
    big = tmp_path / "big.png"
    write_image(big, frames[0], scale=2)  # 64x64: fitted with a notice
    assert main(["caption", str(big), "--checkpoint", str(run)]) == 0
    captured = capsys.readouterr()
    assert "resized to 32x32" in captured.err
    clip = tmp_path / "clip.gif"
    write_gif(clip, frames)
    future = tmp_path / "future.gif"
    args = ["predict", str(clip), "--actions", "right,right,up,left", "--checkpoint", str(run), "--scale", "1"]
    assert main([*args, "--out", str(future)]) == 0
    assert "4 frames after right,right,up,left" in capsys.readouterr().out
    assert read_video(future).shape == (3 + 4, FRAME, FRAME, 3)  # the clip, then a frame per action
    steps = tmp_path / "steps.gif"
    assert main(["predict", str(clip), "--steps", "2", "--checkpoint", str(run), "--out", str(steps)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {steps}: 2 predicted frames after 3 of the clip"
    written = read_video(steps)  # scale 4
    assert written.shape == (3 + 2, FRAME * 4, FRAME * 4, 3)
    assert np.array_equal(written[:3, ::4, ::4], read_video(clip))  # the context first, as it was
    question = "what colour is the square?"
    assert main(["ask", str(clip), question, "--checkpoint", str(run)]) == 0
    said = capsys.readouterr().out.splitlines()
    wm = load_world_model(run)
    assert said == [answer(wm, [read_video(clip)], [question])[0]]  # greedy: what the library answers


def test_bad_inputs_get_clear_errors(run, tmp_path, capsys):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    assert main(["caption", str(junk), "--checkpoint", str(run)]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert main(["caption", str(tmp_path / "x.txt"), "--checkpoint", str(run)]) == 2
    assert "not an image or video suffix" in capsys.readouterr().err
    assert main(["caption", str(junk), "--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert "neither a checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", str(junk), "--actions", "jump", "--checkpoint", str(run), "--out", "x.gif"])


def test_a_broken_checkpoint_or_an_empty_prompt_is_one_line_not_a_traceback(run, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    weights = next(broken.glob("checkpoints/step_*/model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])  # a save cut short
    image = tmp_path / "x.png"
    write_image(image, np.zeros((FRAME, FRAME, 3), dtype=np.uint8))
    for argv in (["caption", str(image)], ["serve"], ["eval", "world"]):
        assert main([*argv, "--checkpoint", str(broken)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ringworld: error:") and "truncated" in err and len(err.splitlines()) == 1, err
    weights.unlink()
    assert main(["caption", str(image), "--checkpoint", str(broken)]) == 2
    assert "is missing" in capsys.readouterr().err
    assert main(["generate", "image", "  ", "--checkpoint", str(run), "--out", str(tmp_path / "y.png")]) == 2
    assert "the prompt is empty" in capsys.readouterr().err


def test_eval_writes_every_metric_and_a_report(run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    report = tmp_path / "report"
    args = ["eval", "world", "--checkpoint", str(run), "--json", str(out), "--report", str(report)]
    assert main([*args, "--samples", "3", "--horizon", "3"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads(out.read_text())
    assert len(metrics["predict_accuracy"]) == 3 and len(metrics["action_accuracy_per_step"]) == 3
    scores = [metrics[k] for k in ("t2i_accuracy", "caption_accuracy", "t2v_accuracy", "action_accuracy")]
    scores += [metrics["qa_accuracy"], *metrics["predict_accuracy"], *metrics["action_accuracy_per_step"]]
    for value in scores:  # a share of 3 episodes
        assert 0.0 <= value <= 1.0 and abs(value * 3 - round(value * 3)) < 1e-3
    per_step = metrics["action_accuracy_per_step"]
    assert metrics["action_accuracy"] == per_step[-1] and per_step == sorted(per_step, reverse=True)
    for task in ("predict", "act", "t2v"):  # the share of contexts that leave the future open
        assert 0.0 <= metrics[f"{task}_hidden_share"] <= 1.0
    assert re.search(rf"t2i_accuracy\s+{metrics['t2i_accuracy']:.4f}\n", printed)
    again = tmp_path / "again.json"
    assert (
        main(["eval", "world", "--checkpoint", str(run), "--json", str(again), "--samples", "3", "--horizon", "3"]) == 0
    )
    assert json.loads(again.read_text()) == metrics  # the same episodes, seeded
    assert metrics["perplexity_text"] > 1 and metrics["perplexity_vision"] > 1 and metrics["tokenizer_psnr"] > 0
    page = (report / "report.html").read_text()
    linked = re.findall(r"src='([^']+)'", page)
    assert linked and all((report / name).exists() for name in linked)
    assert {"loss.png", "horizon.png"} <= set(linked)
    assert "broke at frame" in page  # a wrong clip names the first frame and object no consistent world explains


# the judges, on worlds whose answers are known --------------------------------------------------
WORLD = WorldConfig()


def test_scene_and_caption_judges_accept_the_truth_and_reject_changes():
    state = State((Obj("red", "circle", 0, 0), Obj("blue", "square", 24, 24)))
    seen = parse_frame(render(state))
    assert scene_matches(seen, state.objects, WORLD)
    moved = State((Obj("red", "circle", 24, 0), Obj("blue", "square", 24, 24)))
    assert not scene_matches(parse_frame(render(moved)), state.objects, WORLD)  # top right, not top left
    assert not scene_matches(seen[:1], state.objects, WORLD)  # one object missing
    assert caption_matches("A red circle in the top left and a blue square near the bottom right.", state)
    assert not caption_matches("A red circle in the top left.", state)
    assert not caption_matches("A red square in the top left and a blue square near the bottom right.", state)


def test_video_judge_wants_every_move():
    state = State((Obj("green", "triangle", 12, 12, vx=4, vy=0),))
    frames = render(rollout(state, 2))
    assert judge_video(frames, state, WORLD).correct
    still = np.stack([frames[0]] * 3)
    assert judge_video(still, state, WORLD).broke.startswith("frame 1: the green triangle is at (12, 12)")
    late = np.stack([frames[0], frames[1], frames[1]])  # moves once, then stops
    assert judge_video(late, state, WORLD).right == 1
    assert len(parse_frames(frames, WORLD)) == 3
