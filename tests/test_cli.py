"""The `ringworld` command as a user runs it: help, world samples, tokenizer training, errors."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image as PILImage

from ringworld.cli import main
from ringworld.media import read_video

COMMANDS = {  # every command, and the subcommands of those that have them
    "world": ["sample"],
    "tokenizer": ["train", "eval"],
    "data": ["ingest"],
    "train": [],
    "generate": ["image", "video"],
    "caption": [],
    "predict": [],
    "ask": [],
    "eval": ["world", "needle"],
    "serve": [],
    "demo": [],
    "import": ["hf"],
    "export": ["hf"],
}


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def _listed(help_text: str) -> set[str]:
    """The (sub)commands a --help lists: its indented "name  what it does" lines."""
    return set(re.findall(r"^    (\w+)\s{2,}\S", help_text, flags=re.M))


def test_help_covers_every_command_and_subcommand(capsys):
    assert _listed(_help([], capsys)) == set(COMMANDS)
    for command, subcommands in COMMANDS.items():
        text = _help([command], capsys)
        if subcommands:
            assert _listed(text) == set(subcommands), command
        leaves = [[command, sub] for sub in subcommands] or [[command]]
        for argv in leaves:
            text = _help(argv, capsys)
            assert len(text.splitlines()) >= 5, argv
            # every option explains itself: a flag alone on its line has its help on the next one
            lines = text.splitlines() + [""]
            bare = [
                line
                for line, after in zip(lines, lines[1:], strict=False)
                if re.fullmatch(r"\s+-[-\w]+( [A-Z_]+)?(, --?[\w-]+( [A-Z_]+)?)?", line)
                and not re.match(r"\s{8,}[^\s-]", after)
            ]
            assert not bare, (argv, bare)


def test_world_sample_writes_files_a_person_can_open(tmp_path):
    assert main(["world", "sample", "--out", str(tmp_path), "--n", "4", "--frames", "5", "--scale", "2"]) == 0
    records = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 4
    for r in records:
        with PILImage.open(tmp_path / r["image"]) as image:
            assert image.size == (64, 64)
        assert read_video(tmp_path / r["video"]).shape == (5, 64, 64, 3)
        assert len(r["states"]) == 5 and r["caption"] and r["answer"]
    assert records[1]["actions"] is not None and len(records[1]["actions"]) == 4
    assert (tmp_path / "contact_sheet.png").exists()


def test_user_errors_are_one_line_not_a_traceback(tmp_path, capsys):
    assert main(["tokenizer", "eval", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ringworld: error:") and "ringworld tokenizer train" in err
    with pytest.raises(SystemExit):
        main(["tokenizer", "train", "--out", str(tmp_path), "--levels", "8,x"])
    assert "comma-separated" in capsys.readouterr().err


# 300 seeded steps give 20.5 dB; a collapsed or untrained autoencoder gives 12-14 dB
PSNR_AFTER_300_STEPS = 19.0


@pytest.mark.slow
def test_tokenizer_train_end_to_end(tmp_path):
    """The real command, a short budget: files in standard formats and metrics that mean something."""
    out = tmp_path / "tok"
    cmd = [
        sys.executable,
        "-m",
        "ringworld",
        "tokenizer",
        "train",
        "--out",
        str(out),
        "--max-seconds",
        "0",
        "--steps",
        "300",
        "--text-vocab",
        "400",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)  # a hang guard; generous on a shared CPU
    assert run.returncode == 0, run.stderr
    assert "PSNR" in run.stdout
    for name in (
        "tokenizer.json",
        "vision/config.json",
        "vision/model.safetensors",
        "vocab.json",
        "metrics.json",
    ):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("psnr", "oracle_agreement", "codebook_utilization", "train_seconds"):
        assert key in metrics
    # 300 steps (a tenth of the real run), seeded: the autoencoder is already far past chance
    assert metrics["train_steps"] == 300
    assert metrics["psnr"] > PSNR_AFTER_300_STEPS and metrics["codebook_utilization"] > 0.2

    from ringworld.tokens.bundle import load_codec
    from ringworld.world.tasks import sample_task

    codec = load_codec(out)
    sample = sample_task("act", np.random.default_rng(0))
    decoded = codec.decode(codec.encode(sample.document).ids)
    assert decoded.problems == [] and decoded.segments[0].actions == sample.actions
    frames = codec.decode_pixels(decoded.segments)[0].pixels
    assert frames.shape == (4, 32, 32, 3)


def test_data_ingest_command(tmp_path, capsys):
    from ringworld.data.shards import ShardDataset
    from ringworld.media import write_image
    from ringworld.tokens.bundle import save_tokenizers
    from ringworld.tokens.text import train_text_tokenizer
    from ringworld.tokens.vision import VisionConfig, VisionTokenizer

    save_tokenizers(
        tmp_path / "tok",
        train_text_tokenizer(["a red circle", "a blue square"] * 5, 300),
        VisionTokenizer(VisionConfig(channels=8, blocks=0)),
    )
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        write_image(src / name, rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8))
    (src / "c.png").write_bytes(b"broken")
    (src / "captions.jsonl").write_text('{"file": "a.png", "caption": "a red circle"}\n')
    argv = ["data", "ingest", str(src), "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "shards")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 documents" in out and "c.png" in out
    assert len(ShardDataset(tmp_path / "shards")) == 2
    assert main(["data", "ingest", str(tmp_path / "nowhere"), "--tokenizer", str(tmp_path / "tok"), "--out", "x"]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_unwritable_output_is_a_clear_error(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "out"))

    monkeypatch.setattr("ringworld.world.export.Path.mkdir", refuse)
    assert main(["world", "sample", "--out", str(tmp_path / "out"), "--n", "1"]) == 2
    assert "Permission denied" in capsys.readouterr().err
