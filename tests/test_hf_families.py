"""Public model families in ringworld: the decoder of tiny random Emu3, Chameleon and Llama (LWM-Text)
models built locally with transformers, the independent reference, and `ringworld import/export hf`."""

import dataclasses
import json
import shutil
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("transformers", reason="HF transformers builds the reference models (pip install 'ringworld[hf]')")

import hf_models  # noqa: E402

from ringworld.cli import main  # noqa: E402
from ringworld.documents import Image, Text  # noqa: E402
from ringworld.infer.grammar import SpanGrammar  # noqa: E402
from ringworld.infer.imported import load_imported  # noqa: E402
from ringworld.model.hf import from_hf, model_config  # noqa: E402
from ringworld.model.transformer import Transformer  # noqa: E402
from ringworld.tokens.family import FamilyCodec  # noqa: E402
from ringworld.tokens.hf_vision import HFVision  # noqa: E402
from ringworld.train.checkpoint import check_same_shape, load_model  # noqa: E402
from ringworld.train.config import TrainConfig  # noqa: E402
from ringworld.train.optim import make_optimizer  # noqa: E402

TOL = 1e-4

FAMILIES = {
    "emu3": lambda: hf_models.emu3(),
    "emu3-tied": lambda: hf_models.emu3(tie=True),
    "chameleon": lambda: hf_models.chameleon(),
    "chameleon-swin": lambda: hf_models.chameleon(swin_norm=True),
    "llama-lwm": lambda: hf_models.llama(theta=1e7),
}


def compared(hf) -> torch.Tensor:
    """The vocabulary columns transformers computes freely: its Chameleon sets the logits of every image
    code to the lowest float (its VQ decoder was never released, so it never draws)."""
    keep = torch.ones(hf.config.get_text_config().vocab_size, dtype=torch.bool)
    if hf.config.model_type == "chameleon":
        keep[hf.model.vocabulary_mapping.image_tokens] = False
    return keep


def prompts(family: str) -> torch.Tensor:
    """(2, T) ids: row 0 text alone, row 1 text, an image in the family's layout, text."""
    gen = torch.Generator().manual_seed(2)
    text = torch.randint(3, hf_models.TEXT, (2, 12), generator=gen)
    codes = torch.randint(0, hf_models.CODES, (4, 4), generator=gen)
    if family.startswith("emu3"):
        image = hf_models.emu3_image_ids(codes)
    elif family.startswith("chameleon"):
        image = hf_models.chameleon_image_ids(codes)
    else:
        image = torch.randint(3, hf_models.TEXT, (len(hf_models.emu3_image_ids(codes)),), generator=gen).tolist()
    with_image = torch.cat([text[1, :6], torch.tensor(image), text[1, 6:]])
    only_text = torch.randint(3, hf_models.TEXT, (len(with_image),), generator=gen)
    return torch.stack([only_text, with_image])


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(family: str) -> None:
    hf = FAMILIES[family]()
    model = from_hf(hf)
    ids = prompts(family)
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    keep = compared(hf)
    assert ours.shape == theirs.shape
    assert (ours[..., keep] - theirs[..., keep]).abs().max().item() < TOL


@pytest.mark.parametrize("option", ["post_norm", "qk_norm_per_head"])
def test_each_chameleon_option_is_what_makes_it_match(option: str) -> None:
    """Without the option (or with the shared RMSNorm in place of the per-head LayerNorm), the logits differ."""
    hf = hf_models.chameleon(swin_norm=True)
    model = from_hf(hf)
    assert model.cfg.post_norm and model.cfg.qk_norm_per_head
    other = Transformer(dataclasses.replace(model.cfg, **{option: False})).eval()
    weights = model.state_dict()
    if option == "qk_norm_per_head":  # a shared gain: the mean of the heads' gains, no bias
        weights = {k: v.mean(0) if k.endswith(("q_norm.weight", "k_norm.weight")) else v for k, v in weights.items()}
        weights = {k: v for k, v in weights.items() if not k.endswith("norm.bias")}
    other.load_state_dict(weights)
    ids = prompts("chameleon")
    keep = compared(hf)
    with torch.no_grad():
        assert (other(ids)[..., keep] - hf(ids).logits[..., keep]).abs().max().item() > 1e-2


def test_config_reads_each_family() -> None:
    emu3 = model_config(hf_models.emu3(tie=True).config)
    assert (emu3.qk_norm, emu3.tie_embeddings, emu3.rope_theta, emu3.max_seq_len) == (False, True, 1e6, 512)
    cham = model_config(hf_models.chameleon(swin_norm=True).config)
    assert (cham.qk_norm, cham.qk_norm_per_head, cham.post_norm) == (True, True, True)
    assert model_config(hf_models.llama(theta=1e7).config).rope_theta == 1e7


def test_per_head_norms_are_not_orthogonalised_or_decayed() -> None:
    model = from_hf(hf_models.chameleon())
    optimizers = make_optimizer(model, TrainConfig(out="unused", optimizer="muon"), torch.device("cpu"))
    norms = {id(p) for n, p in model.named_parameters() if "q_norm." in n or "k_norm." in n}
    assert any(p.ndim == 2 for p in model.parameters() if id(p) in norms)
    decayed, no_decay = optimizers[0].param_groups
    assert norms <= {id(p) for p in no_decay["params"]}
    assert not norms & {id(p) for group in optimizers[1].param_groups for p in group["params"]}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["emu3", "emu3-tied", "chameleon-swin", "llama-lwm"])
def test_import_export_import_is_exact(family: str, tmp_path, capsys) -> None:
    import transformers

    hf = FAMILIES[family]()
    folder = hf_models.save(hf, tmp_path / "hf")
    assert main(["import", "hf", str(folder), "--out", str(tmp_path / "run")]) == 0
    model, checkpoint = load_model(tmp_path / "run")
    assert (checkpoint / "tokenizer" / "hf" / "tokenizer_config.json").is_file()
    ids = prompts(family)
    keep = compared(hf)
    with torch.no_grad():
        assert (model(ids)[..., keep] - hf(ids).logits[..., keep]).abs().max().item() < TOL

    assert main(["export", "hf", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text()) == json.loads(
        (folder / "config.json").read_text()
    )
    back = getattr(transformers, type(hf).__name__).from_pretrained(tmp_path / "out").eval()
    for name, weight in hf.state_dict().items():
        assert torch.equal(weight, back.state_dict()[name]), name
    assert main(["import", "hf", str(tmp_path / "out"), "--out", str(tmp_path / "again")]) == 0
    first = load_file(checkpoint / "model.safetensors")
    again = load_file(tmp_path / "again" / "checkpoints" / checkpoint.name / "model.safetensors")
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    vision = checkpoint / "tokenizer" / "hf" / "vision.safetensors"
    assert vision.is_file() == (not family.startswith("llama"))


def test_an_unknown_architecture_is_one_line_naming_the_known_ones(tmp_path, capsys) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    assert main(["import", "hf", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "'gpt2'" in err
    for known in ("Emu3ForConditionalGeneration", "ChameleonForConditionalGeneration", "LlamaForCausalLM"):
        assert known in err


def test_a_folder_without_config_is_named(tmp_path, capsys) -> None:
    assert main(["import", "hf", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_without_transformers_import_says_what_to_install(tmp_path, capsys, monkeypatch) -> None:
    hf_models.save(hf_models.llama(), tmp_path / "hf")
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    assert main(["import", "hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "ringworld: error: this needs Hugging Face transformers: pip install 'ringworld[hf]'"


def test_export_refuses_a_run_that_was_not_imported(tiny_run, tmp_path, capsys) -> None:
    assert main(["export", "hf", str(tiny_run), "--out", str(tmp_path / "out")]) == 2
    assert "was not imported from a Hugging Face folder" in capsys.readouterr().err


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """family -> (the tiny HF model, the checkpoint of its imported run)."""
    from ringworld.jobs.hf import import_hf

    out = {}
    for family in ("emu3", "chameleon", "llama"):
        root = tmp_path_factory.mktemp(family)
        hf = FAMILIES["llama-lwm" if family == "llama" else family]()
        out[family] = hf, import_hf(hf_models.save(hf, root / "hf"), root / "run")
    return out


def frames(n: int = 3) -> np.ndarray:
    return np.random.default_rng(4).integers(0, 256, (n, hf_models.FRAME, hf_models.FRAME, 3), dtype=np.uint8)


@pytest.mark.parametrize("family", ["emu3", "chameleon"])
def test_vq_codes_are_transformers_codes(family: str, imported) -> None:
    """The codes of the vision interface are the image tokens transformers puts in the model's prompt."""
    hf, checkpoint = imported[family]
    vision = HFVision.load(checkpoint / "tokenizer" / "hf")
    assert (vision.frame_size, vision.grid, vision.num_codes) == (hf_models.FRAME, (16, 16), hf_models.CODES)
    images = frames()
    codes = vision.encode(images)
    assert codes.shape == (3, 16, 16) and codes.dtype == np.int64
    scaled = hf_models.processor(family)(list(images), return_tensors="pt")
    if family == "emu3":  # rows of codes, each ended by its <|extra_200|>
        theirs = hf.model.get_image_tokens(scaled.pixel_values, scaled.image_sizes).view(3, 16, 17)[..., :16]
    else:
        theirs = hf.model.get_image_tokens(scaled.pixel_values).view(3, 16, 16)
    mapping = hf.model.vocabulary_mapping.img2bpe_mapping_tensor.long()
    assert torch.equal(mapping[torch.from_numpy(codes)], theirs)
    assert len(np.unique(codes)) > 4  # not a constant the two could share by accident


def test_emu3_decodes_to_transformers_pixels(imported) -> None:
    hf, checkpoint = imported["emu3"]
    vision = HFVision.load(checkpoint / "tokenizer" / "hf")
    codes = vision.encode(frames())
    pixels = vision.decode(codes)
    assert pixels.shape == (3, hf_models.FRAME, hf_models.FRAME, 3) and pixels.dtype == np.uint8
    mapping = hf.model.vocabulary_mapping
    rows = torch.cat([mapping.img2bpe_mapping_tensor.long()[torch.from_numpy(codes)], torch.zeros(3, 16, 1).long()], 2)
    ends = torch.zeros(3, 3, dtype=torch.long)  # decode_image_tokens drops a span's last three ids
    with torch.no_grad():
        theirs = hf.model.decode_image_tokens(image_tokens=torch.cat([rows.view(3, -1), ends], 1), height=16, width=16)
    images = hf_models.processor("emu3").postprocess(list(theirs), input_data_format="channels_first")
    assert np.array_equal(pixels, np.stack([np.asarray(image) for image in images["pixel_values"]]))
    assert pixels.std() > 1  # a real picture, not a blank


def test_chameleon_refuses_to_draw_with_a_reason(imported) -> None:
    _, checkpoint = imported["chameleon"]
    vision = HFVision.load(checkpoint / "tokenizer" / "hf")
    with pytest.raises(ValueError, match="chameleon cannot draw: its VQ decoder was never released"):
        vision.decode(vision.encode(frames(1)))


def test_a_text_only_family_has_no_vq_tokenizer(tmp_path) -> None:
    hf_models.save(hf_models.llama(), tmp_path)
    with pytest.raises(ValueError, match="llama models read and write text only"):
        HFVision.load(tmp_path)


def test_export_after_context_growth_writes_the_new_theta_and_length(tmp_path, capsys) -> None:
    import transformers

    assert (
        main(["import", "hf", str(hf_models.save(hf_models.emu3(), tmp_path / "hf")), "--out", str(tmp_path / "run")])
        == 0
    )
    _, checkpoint = load_model(tmp_path / "run")
    config = json.loads((checkpoint / "config.json").read_text())
    config["model"] |= {"rope_theta": 5e6, "max_seq_len": 1024}  # what a context-growth stage changes
    (checkpoint / "config.json").write_text(json.dumps(config))
    assert main(["export", "hf", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    text = transformers.AutoConfig.from_pretrained(tmp_path / "out").text_config
    assert (text.rope_parameters["rope_theta"], text.max_position_embeddings) == (5e6, 1024)

    config["model"]["n_layers"] = 3  # not a change training makes
    (checkpoint / "config.json").write_text(json.dumps(config))
    assert main(["export", "hf", str(tmp_path / "run"), "--out", str(tmp_path / "other")]) == 2
    assert "another architecture than the folder it was imported from" in capsys.readouterr().err


def test_training_from_an_import_keeps_its_norms(imported, tmp_path) -> None:
    """A run may not resume (or start from) a checkpoint whose norms mean something else; a checkpoint
    written before these options existed reads as their defaults."""
    _, checkpoint = imported["chameleon"]
    cfg = load_model(checkpoint)[0].cfg
    check_same_shape(checkpoint, cfg)
    with pytest.raises(ValueError, match=r"post_norm False -> True"):
        check_same_shape(checkpoint, dataclasses.replace(cfg, post_norm=True))
    old = tmp_path / "old"
    shutil.copytree(checkpoint, old)
    config = json.loads((old / "config.json").read_text())
    for key in ("qk_norm_per_head", "post_norm"):
        del config["model"][key]
    (old / "config.json").write_text(json.dumps(config))
    check_same_shape(old, dataclasses.replace(cfg, qk_norm_per_head=False))


@pytest.mark.parametrize("family", ["emu3", "chameleon"])
def test_the_codec_writes_what_the_family_processor_writes(family: str, imported) -> None:
    """Text and an image, encoded by ringworld, are the ids transformers' processor writes with each image
    placeholder replaced by the model's own image tokens; and they decode back."""
    import transformers

    hf, checkpoint = imported[family]
    codec = FamilyCodec.load(checkpoint / "tokenizer" / "hf")
    image = frames(1)[0]
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint / "tokenizer" / "hf")
    processor = hf_models.family_processor(family, tokenizer)
    options = {"return_for_text_completion": True} if family == "chameleon" else {}
    made = processor(text=["say <image> hi"], images=[image], return_tensors="pt", **options)
    theirs = made.input_ids[0].clone()
    if family == "emu3":
        tokens = hf.model.get_image_tokens(made.pixel_values, made.image_sizes)
    else:
        tokens = hf.model.get_image_tokens(made.pixel_values).flatten()
    theirs[theirs == hf.model.vocabulary_mapping.image_token_id] = tokens.long()
    ours = codec.prompt([Text("say "), Image(pixels=image), Text(" hi")])
    assert torch.equal(torch.from_numpy(ours), theirs)
    text, picture, more = codec.decode(ours[1:])
    assert (text.text, more.text) == ("say ", " hi")
    assert np.array_equal(picture.codes, codec.vision.encode(image[None])[0])


@pytest.mark.slow
@pytest.mark.parametrize("family", ["emu3", "chameleon", "llama"])
def test_greedy_text_is_token_identical_to_transformers(family: str, imported) -> None:
    """Free text after a prompt (with an image where the family reads them): Chameleon's engine, like
    transformers, never picks an image code."""
    hf, checkpoint = imported[family]
    im = load_imported(checkpoint, "cpu")
    doc = [Text("say hi")] if family == "llama" else [Text("say "), Image(pixels=frames(1)[0]), Text(" hi")]
    prompt = im.codec.prompt(doc)
    stop = hf_models.TEXT - 1  # an id (<unused>) neither stops at soon: 16 tokens each, past any end of text
    ours = im.engine.generate([prompt], max_new_tokens=16, stop=[stop], constrained=False).tokens[0]
    prompts = torch.from_numpy(prompt)[None]
    theirs = hf.generate(prompts, do_sample=False, max_new_tokens=16, eos_token_id=stop)[0, len(prompt) :]
    assert ours.tolist() == theirs.tolist() and len(ours) == 16
    if family == "chameleon":
        assert not np.isin(ours, im.codec.layout.code_ids).any()


@pytest.mark.slow
def test_an_emu3_image_span_follows_its_layout_as_constrained_transformers_does(imported) -> None:
    """The grammar of Emu3's layout against transformers' generate under a constraint written out here: rows
    of codes each ended by <|extra_200|>, then <|extra_201|> and <|image end|>."""
    hf, checkpoint = imported["emu3"]
    im = load_imported(checkpoint, "cpu")
    layout = im.codec.layout
    h, w = layout.grid
    prompt = np.concatenate([im.codec.prompt([Text("a cat")]), layout.image_open])
    new = layout.body_length + len(layout.image_close)
    ours = im.engine.generate([prompt], max_new_tokens=new).tokens[0]

    def allowed(_, ids: torch.Tensor) -> list[int]:
        k = len(ids) - len(prompt)
        if k >= h * (w + 1):
            return [layout.image_close[k - h * (w + 1)]]
        return [layout.row_end] if k % (w + 1) == w else layout.code_ids.tolist()

    theirs = hf.generate(
        torch.from_numpy(prompt)[None], do_sample=False, max_new_tokens=new, prefix_allowed_tokens_fn=allowed
    )[0, len(prompt) :]
    assert ours.tolist() == theirs.tolist()
    (image,) = im.codec.decode(np.concatenate([layout.image_open, ours]))
    assert image.codes.shape == (h, w)


@pytest.mark.parametrize("family", ["emu3", "chameleon"])
def test_the_grammar_follows_each_family_layout(family: str, imported) -> None:
    """Written out by hand: once an image's first id is written its other opening ids are forced, then rows
    of codes (Emu3's each ended by <|extra_200|>), then its closing ids; outside it no code."""
    _, checkpoint = imported[family]
    layout = FamilyCodec.load(checkpoint / "tokenizer" / "hf").layout
    grammar = SpanGrammar(layout)
    codes = torch.zeros(layout.vocab_size, dtype=torch.bool)
    codes[torch.from_numpy(layout.code_ids)] = True
    grammar.start(torch.tensor([[layout.bos]]), torch.zeros(1, dtype=torch.long), torch.zeros(1, 0, dtype=torch.long))
    free = grammar.allowed()[0]
    assert free[layout.image_open[0]] and not (free & codes).any() and not free[layout.pad]

    def expect(allowed: torch.Tensor, then: int) -> None:
        assert torch.equal(grammar.allowed()[0], allowed)
        grammar.advance(torch.tensor([then]))

    def only(token: int) -> torch.Tensor:
        return torch.arange(layout.vocab_size) == token

    grammar.advance(torch.tensor([layout.image_open[0]]))
    for token in layout.image_open[1:]:
        expect(only(token), token)
    h, w = layout.grid
    for row in range(h):
        for col in range(w):
            expect(codes, int(layout.code_ids[(row + col) % len(layout.code_ids)]))
        if layout.row_end is not None:
            expect(only(layout.row_end), layout.row_end)
    for token in layout.image_close:
        expect(only(token), token)
    assert torch.equal(grammar.allowed()[0], free)


@pytest.mark.slow
def test_the_commands_work_on_imported_runs(imported, tmp_path, capsys) -> None:
    """`generate image` draws with Emu3 and is refused with Chameleon's reason; `caption` and `ask` answer
    with both; video commands say the families write none."""
    from ringworld.infer.imported import reply
    from ringworld.media import read_image, write_image

    emu3, chameleon = (str(imported[f][1]) for f in ("emu3", "chameleon"))
    out = tmp_path / "drawn.png"
    assert main(["generate", "image", "a cat", "--checkpoint", emu3, "--out", str(out), "--scale", "1"]) == 0
    assert read_image(out).shape == (hf_models.FRAME, hf_models.FRAME, 3)
    assert main(["generate", "image", "a cat", "--checkpoint", chameleon, "--out", str(out)]) == 2
    assert "chameleon cannot draw: its VQ decoder was never released" in capsys.readouterr().err

    picture = tmp_path / "in.png"
    write_image(picture, frames(1)[0])
    capsys.readouterr()
    for run in (emu3, chameleon):
        assert main(["ask", str(picture), "what is it?", "--checkpoint", run]) == 0
        said = capsys.readouterr().out.strip()
        assert said == reply(load_imported(run, "cpu"), [read_image(picture)], ["what is it?"])[0]
        assert main(["caption", str(picture), "--checkpoint", run]) == 0
        capsys.readouterr()
    assert main(["generate", "video", "a cat", "--checkpoint", emu3, "--out", str(tmp_path / "v.gif")]) == 2
    assert "emu3 models write no video" in capsys.readouterr().err


def test_reply_is_transformers_greedy_answer(imported) -> None:
    """An answer is the text of transformers' greedy continuation of the same prompt, up to its end id."""
    from ringworld.infer.imported import chat, reply

    hf, checkpoint = imported["chameleon"]
    im = load_imported(checkpoint, "cpu")
    image = frames(1)[0]
    prompt = torch.from_numpy(im.codec.prompt(chat(im, image, "what is it?")))[None]
    theirs = hf.generate(prompt, do_sample=False, max_new_tokens=24)[0, prompt.shape[1] :]
    words = im.codec.tokenizer.decode(theirs, skip_special_tokens=True).strip()
    assert reply(im, [image], ["what is it?"], max_new_tokens=24) == [words]
