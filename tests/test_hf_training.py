"""Fine-tuning a run imported from a public family (#22 item 4) on tiny random Emu3, Chameleon and Llama
(LWM-Text) models built locally: your pictures (or texts) ingested in the family's ids, packed and trained
as ringworld's own data is (one process, FSDP2, ring attention), and the new run still one that
`load_imported` and `export hf` read."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="HF transformers builds the reference models (pip install 'ringworld[hf]')")

import hf_models  # noqa: E402
from test_packing import assert_packed_is_one_by_one  # noqa: E402
from test_train import logged, torchrun  # noqa: E402

from ringworld import media  # noqa: E402
from ringworld.cli import main  # noqa: E402
from ringworld.data.packing import pack  # noqa: E402
from ringworld.data.shards import ShardDataset  # noqa: E402
from ringworld.data.sources import drop_caption  # noqa: E402
from ringworld.documents import Image, Text  # noqa: E402
from ringworld.tokens.bundle import load_codec  # noqa: E402
from ringworld.tokens.codec import Encoded  # noqa: E402
from ringworld.tokens.family import FamilyCodec  # noqa: E402
from ringworld.tokens.family_vocab import FamilyVocab, read_vocab  # noqa: E402
from ringworld.tokens.vocab import MODALITY_TEXT, MODALITY_VISION  # noqa: E402
from ringworld.train.checkpoint import load_model, read_config  # noqa: E402
from ringworld.train.loss import LossWeights  # noqa: E402

FAMILIES = {"emu3": hf_models.emu3, "chameleon": lambda: hf_models.chameleon(swin_norm=True)}
CAPTIONS = {"a.png": "a red square", "b.png": "the blue sky", "sub/c.png": "green grass", "d.png": "a small cat"}
SEQ_LEN = 320  # one picture a row (Emu3's: 290 ids, Chameleon's: 270); a multiple of 4 for a ring of 2
# fp32 AdamW, no warmup: a few steps move a random model's loss
TRAIN = ["--seq-len", str(SEQ_LEN), "--batch-size", "2", "--warmup", "0", "--lr", "1e-2", "--log-every", "1"]
TRAIN += ["--optimizer", "adamw", "--dtype", "fp32", "--no-compile", "--no-tensorboard", "--caption-dropout", "0"]


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """A folder of four PNGs of another size than the VQ tokenizer's (ingest crops and scales them), their
    captions, and a video."""
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    for name in CAPTIONS:
        (folder / name).parent.mkdir(exist_ok=True)
        media.write_image(folder / name, rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    media.write_gif(folder / "clip.gif", rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
    lines = [json.dumps({"file": name, "caption": text}) for name, text in CAPTIONS.items()]
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def imported(tmp_path_factory, pictures):
    """family -> (its imported run, its pictures ingested with `ringworld data ingest --tokenizer RUN`)."""
    from ringworld.jobs.hf import import_hf

    out = {}
    for family, build in FAMILIES.items():
        root = tmp_path_factory.mktemp(family)
        import_hf(hf_models.save(build(), root / "hf"), root / "run")
        assert (
            main(["data", "ingest", str(pictures), "--tokenizer", str(root / "run"), "--out", str(root / "shards")])
            == 0
        )
        out[family] = root / "run", root / "shards"
    return out


def codec_of(run) -> FamilyCodec:
    """The family's codec of an imported run, as `load_codec` gives it for the run's tokenizer directory."""
    codec = load_codec(run / "checkpoints" / "step_0000000" / "tokenizer")
    assert isinstance(codec, FamilyCodec)
    return codec


@pytest.mark.parametrize("family", FAMILIES)
def test_ingest_writes_each_picture_in_the_family_ids_and_skips_videos(family, imported, pictures) -> None:
    run, shards = imported[family]
    codec = codec_of(run)
    dataset = ShardDataset(shards)
    assert isinstance(dataset.vocab, FamilyVocab) and dataset.vocab == codec.vocab
    assert sorted(dataset.sources) == sorted(CAPTIONS)
    for i, name in enumerate(dataset.sources):
        picture = media.fit_square(media.read_image(pictures / name), codec.vision.frame_size)
        want = codec.encode([Text(CAPTIONS[name]), Image(pixels=picture)])
        ids, loss = dataset[i]
        assert np.array_equal(ids, want.ids) and np.array_equal(loss, want.loss_mask)
        assert np.array_equal(dataset.vocab.modality(ids), want.modality)
        image = codec.layout.image_ids(codec.vision.encode(picture[None])[0])
        assert np.array_equal(ids[-1 - len(image) : -1], image)  # the picture, then the end id
    (skipped,) = json.loads((shards / "index.json").read_text())["skipped_files"]
    assert skipped[0] == "clip.gif" and "writes no videos" in skipped[1]


def test_a_family_vocabulary_reads_as_ringworld_reads_its_own(imported) -> None:
    """Which ids are vision, text and special, caption dropout, and the JSON round trip, against the layout."""
    codec = codec_of(imported["emu3"][0])
    vocab, layout = codec.vocab, codec.layout
    assert read_vocab(json.loads(json.dumps(vocab.to_json()))) == vocab
    assert [vocab.special(n) for n in ("<|bos|>", "<|eos|>", "<|pad|>")] == [layout.bos, layout.eos, layout.pad]
    assert vocab.vision_openers == {vocab.special("<|image|>")} == {layout.image_open[0]}
    with pytest.raises(ValueError, match="a public family's vocabulary has no <|video|>"):
        vocab.special("<|video|>")
    doc = codec.encode([Text("a cat", loss=False), Image(codes=np.zeros(layout.grid, dtype=np.int64))])
    size = len(layout.image_open) - 2  # Emu3 writes the image's size as text inside its opening
    vision = doc.modality == MODALITY_VISION
    assert vision.sum() == len(layout.image_ids(np.zeros(layout.grid, dtype=np.int64))) - size
    assert doc.modality[0] == doc.modality[-1] == MODALITY_TEXT  # begin and end ids
    assert not vocab.is_text(layout.bos) and vocab.is_text(int(doc.ids[1])) and not vocab.is_text(layout.code_ids[0])
    assert vocab.describe(layout.code_ids[5]) == f"id {layout.code_ids[5]} (visual code 5)"
    dropped = drop_caption(doc, vocab)  # what guidance's unconditional branch is: <bos>, then the image
    assert np.array_equal(dropped.ids, np.r_[layout.bos, doc.ids[1 + len("a cat") :]])
    with pytest.raises(ValueError, match=f"id {vocab.size} \\(outside the vocabulary of size {vocab.size}\\)"):
        vocab.modality(np.array([0, vocab.size]))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_packed_family_batch_has_the_loss_and_gradients_of_its_documents_one_by_one(family, imported) -> None:
    """Chameleon's per-head QK LayerNorm and post-norm blocks, and Emu3's, see their own document only."""
    run, shards = imported[family]
    model, _ = load_model(run)
    dataset = ShardDataset(shards)
    codec = codec_of(run)
    docs = [codec.encode([Text("a cat and a dog")])]
    docs += [Encoded(ids, loss, dataset.vocab.modality(ids)) for ids, loss in dataset]
    batch = pack(docs, seq_len=2 * SEQ_LEN, pad_id=dataset.vocab.special("<|pad|>"))
    assert (batch.segment_ids[0].unique() >= 0).sum() >= 2  # really packed
    assert_packed_is_one_by_one(model, docs, batch, LossWeights(text=0.3, vision=0.7))


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_fine_tuning_an_imported_run_learns_and_stays_a_family_run(family, imported, tmp_path, capsys) -> None:
    """Three steps on the ingested pictures: the loss falls; the new run keeps the family's options, its
    context and its "hf" key, `load_imported` reads it, and `export hf` writes a folder transformers loads
    whose logits are the fine-tuned model's."""
    import transformers

    from ringworld.infer.imported import load_imported

    run, shards = imported[family]
    new = tmp_path / "tuned"
    assert (
        main(["train", "--init-from", str(run), "--data", str(shards), "--out", str(new), "--steps", "3", *TRAIN]) == 0
    )
    loss = logged(new, "loss")
    assert loss[-1] < loss[0] - 0.1, loss
    before, after = read_config(run / "checkpoints" / "step_0000000"), read_config(new / "checkpoints" / "step_0000003")
    assert after["hf"] == before["hf"] and after["background_code"] is None
    assert after["model"] == before["model"]  # norms, tied head, theta, and the context (512 > the rows' 320)

    tuned, start = load_model(new)[0].state_dict(), load_model(run)[0].state_dict()
    served = load_imported(new, "cpu").engine.model.state_dict()
    assert all(torch.equal(served[k], tuned[k]) for k in tuned)
    assert sum(not torch.equal(start[k], tuned[k]) for k in tuned) > len(tuned) // 2
    tuned, _ = load_model(new)

    capsys.readouterr()
    assert main(["export", "hf", str(new), "--out", str(tmp_path / "hf")]) == 0
    folder = run / "checkpoints" / "step_0000000" / "tokenizer" / "hf"
    assert json.loads((tmp_path / "hf" / "config.json").read_text()) == json.loads((folder / "config.json").read_text())
    hf = getattr(transformers, before["hf"]["architecture"]).from_pretrained(tmp_path / "hf").eval()
    ids, _ = ShardDataset(shards)[0]
    ids = torch.from_numpy(ids)[None]
    keep = torch.ones(tuned.cfg.vocab_size, dtype=torch.bool)
    if family == "chameleon":  # transformers' Chameleon never picks an image code (its logits are the lowest float)
        keep[hf.model.vocabulary_mapping.image_tokens] = False
    with torch.no_grad():
        assert (tuned(ids)[..., keep] - hf(ids).logits[..., keep]).abs().max().item() < 1e-4


def test_an_imported_run_refuses_world_data_in_one_line(imported, tmp_path, capsys) -> None:
    run, _ = imported["emu3"]
    assert main(["train", "--init-from", str(run), "--out", str(tmp_path / "x"), "--steps", "1", *TRAIN]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ringworld data ingest SOURCE --tokenizer" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_two_processes_fine_tune_an_import_as_one_does(imported, tmp_path) -> None:
    """A ring of 2 (--cp 2: ring attention, FSDP2 sharding the weights over both processes, gloo) on an
    imported Emu3: the losses and gradient norms of one process, and a checkpoint that is still Emu3's."""
    run, shards = imported["emu3"]
    args = ["--init-from", str(run), "--data", str(shards), "--steps", "2", *TRAIN]
    assert main(["train", "--out", str(tmp_path / "one"), *args]) == 0
    torchrun(2, ["--out", str(tmp_path / "ring"), *args, "--cp", "2"])
    for key in ("loss", "grad_norm"):
        torch.testing.assert_close(logged(tmp_path / "ring", key), logged(tmp_path / "one", key), atol=1e-5, rtol=1e-5)
    assert read_config(tmp_path / "ring" / "checkpoints" / "step_0000002")["hf"]["family"] == "emu3"


@pytest.mark.slow
def test_a_text_family_fine_tunes_on_text_files(tmp_path) -> None:
    """LWM-Text (Llama) has no VQ tokenizer, so its own data is text: each .txt file is a document in its
    ids, a picture is skipped with the reason, and three steps on them lower the loss of a run that still
    answers as an imported one."""
    from ringworld.infer.imported import load_imported
    from ringworld.jobs.hf import import_hf

    import_hf(hf_models.save(hf_models.llama(theta=1e7), tmp_path / "hf"), tmp_path / "run")
    source = tmp_path / "texts"
    source.mkdir()
    texts = {"a.txt": "The magic number is 48213. " * 4, "b.txt": "Keys and values pass round the ring. " * 3}
    for name, text in texts.items():
        (source / name).write_text(text)
    media.write_image(source / "p.png", np.zeros((8, 8, 3), dtype=np.uint8))
    shards = tmp_path / "shards"
    assert main(["data", "ingest", str(source), "--tokenizer", str(tmp_path / "run"), "--out", str(shards)]) == 0
    dataset, codec = ShardDataset(shards), load_imported(tmp_path / "run", "cpu").codec
    assert dataset.sources == ["a.txt", "b.txt"]
    for i, name in enumerate(dataset.sources):
        assert np.array_equal(dataset[i][0], codec.encode([Text(texts[name])]).ids)
    (skipped,) = json.loads((shards / "index.json").read_text())["skipped_files"]
    assert skipped[0] == "p.png" and "llama models read and write text only" in skipped[1]

    new = tmp_path / "tuned"
    args = ["--init-from", str(tmp_path / "run"), "--data", str(shards), "--out", str(new), "--steps", "3", *TRAIN]
    assert main(["train", *args]) == 0
    loss = logged(new, "loss")
    assert loss[-1] < loss[0] - 0.1, loss
    tuned, start = load_imported(new, "cpu"), load_model(tmp_path / "run")[0].state_dict()
    assert tuned.family.name == "llama" and tuned.codec.vision is None
    assert any(not torch.equal(w, start[k]) for k, w in tuned.engine.model.state_dict().items())
