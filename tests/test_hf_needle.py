"""`ringworld eval needle` on runs imported from public families (tiny random Llama, as LWM-Text, and
Emu3): text needles sized in the family's own ids, asked in its layout, and prefilled through a ring of
two processes with the same answers."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("transformers", reason="HF transformers builds the tiny models (pip install 'ringworld[hf]')")

import hf_models  # noqa: E402

from ringworld.cli import main  # noqa: E402
from ringworld.eval.needle import FamilyNeedles  # noqa: E402
from ringworld.infer.imported import load_imported  # noqa: E402
from ringworld.world.needle import needle_document  # noqa: E402
from ringworld.world.sim import WorldConfig  # noqa: E402

# a chat template over the tiny vocabulary (printable ASCII): the user's turn, then the assistant's
TEMPLATE = (
    "{% for m in messages %}<s>USER: {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}BOT:{% endif %}"
)


def _imported(family: str, tmp_path):
    """A run imported from a tiny Llama whose tokenizer has a chat template, or from a tiny Emu3 (none)."""
    if family == "llama":
        hf_models.save(hf_models.llama(theta=1e7), tmp_path / "hf", chat_template=TEMPLATE)
    else:
        hf_models.save(hf_models.emu3(), tmp_path / "hf")
    assert main(["import", "hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0
    return tmp_path / "run"


@pytest.mark.parametrize("family", ["llama", "emu3"])
def test_a_family_needle_is_sized_in_its_own_ids_and_asked_as_one_turn(family, tmp_path) -> None:
    im = load_imported(_imported(family, tmp_path), "cpu")
    asked = FamilyNeedles(im)
    for depth in (0.0, 0.5, 1.0):
        needle = needle_document("text", asked, 300, depth, np.random.default_rng(1), WorldConfig())
        prompt = asked.encode(needle.document[:-1])
        assert 300 - 60 < len(prompt) <= 300
        words = im.codec.tokenizer.decode(prompt, skip_special_tokens=True)
        assert f"magic number is {needle.answer}." in words
        if family == "llama":  # one user turn in the tokenizer's chat template, then the assistant's
            assert words.startswith("USER: ") and words.endswith("? BOT:") and prompt[0] == im.codec.layout.bos
        else:
            assert words.rstrip().endswith("?")


@pytest.mark.slow
def test_eval_needle_on_an_imported_run_and_through_a_ring_of_two(tmp_path, capsys) -> None:
    run = _imported("llama", tmp_path)
    out = tmp_path / "needle.json"
    args = ["eval", "needle", "--checkpoint", str(run), "--lengths", "300,0.5k", "--depths", "0,1", "--samples", "2"]
    assert main([*args, "--json", str(out), "--device", "cpu"]) == 0
    result = json.loads(out.read_text())
    assert result["kinds"] == ["text"]  # the default for a family, which reads no video
    for cell in result["cells"]:
        assert cell["length"] - 16 - 60 < cell["prompt_tokens"] <= cell["length"] - 16
    assert "text  (mean accuracy" in capsys.readouterr().out

    assert main([*args, "--kinds", "video"]) == 2
    assert "read no video" in capsys.readouterr().err

    ring_out = tmp_path / "needle_ring.json"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ringworld"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*torchrun, *args, "--json", str(ring_out), "--device", "cpu", "--cp", "2"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(ring_out.read_text())["cells"] == result["cells"]
