import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from ringworld import media
from ringworld.data.ingest import ingest
from ringworld.data.shards import ShardDataset, ShardWriter
from ringworld.documents import Image, Text, Video
from ringworld.tokens.bundle import load_codec, save_tokenizers
from ringworld.tokens.codec import Codec, Encoded
from ringworld.tokens.text import train_text_tokenizer
from ringworld.tokens.vision import VisionConfig, VisionTokenizer
from ringworld.tokens.vocab import Vocab

CAPTIONS = {
    "a_wide.png": "a wide red square on grey",
    "sub/b_small.jpg": "a small blue circle",
    "clip.mp4": "the green ball bounces off the wall",
    "anim.gif": "café: the agent moves up ☕",
}
MAX_FRAMES, STRIDE = 4, 2
MP4_FRAMES, GIF_FRAMES = 10, 5  # -> min(4, ceil(10/2)) = 4 and min(4, ceil(5/2)) = 3 frames
# sorted walk order, corrupt files left out
DOCS = ["a_wide.png", "anim.gif", "c_big.jpeg", "clip.mp4", "notes.txt", "sub/b_small.jpg"]
NOTES = "notes: café ☕, not media"


@pytest.fixture(scope="module")
def codec(tmp_path_factory: pytest.TempPathFactory) -> Codec:
    torch.manual_seed(0)
    text = train_text_tokenizer(list(CAPTIONS.values()) * 3, 300)
    vision = VisionTokenizer(VisionConfig(channels=8, blocks=0)).eval()
    directory = tmp_path_factory.mktemp("tok")
    save_tokenizers(directory, text, vision)
    return load_codec(directory)


def _frames(rng: np.random.Generator, t: int, h: int, w: int) -> np.ndarray:
    """(t, h, w, 3) uint8: smooth gradients plus a moving offset, so codecs keep them recognisable."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1)
    return np.stack([(base + 20 * i + rng.integers(0, 10)) % 256 for i in range(t)]).astype(np.uint8)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("src")
    (root / "sub").mkdir()
    (root / ".hidden").mkdir()
    PILImage.fromarray(_frames(rng, 1, 40, 70)[0]).save(root / "a_wide.png")  # wider than tall
    PILImage.fromarray(_frames(rng, 1, 20, 24)[0]).save(root / "sub" / "b_small.jpg")  # smaller than 32
    PILImage.fromarray(_frames(rng, 1, 100, 60)[0]).save(root / "c_big.jpeg")  # taller, no caption
    PILImage.fromarray(_frames(rng, 1, 16, 16)[0]).save(root / ".hidden" / "x.png")  # not looked at
    media.write_mp4(root / "clip.mp4", _frames(rng, MP4_FRAMES, 48, 64))
    media.write_gif(root / "anim.gif", _frames(rng, GIF_FRAMES, 30, 40))
    (root / "broken.png").write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    good = (root / "clip.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (root / "notes.txt").write_text(NOTES, encoding="utf-8")  # a text document
    (root / "empty.txt").write_text("  \n")  # skipped: no text
    lines = [json.dumps({"file": f, "caption": c}) for f, c in CAPTIONS.items()]
    lines.insert(2, '{"file": "a_wide.png", "caption": ')  # line 3: malformed
    lines.append(json.dumps({"file": "missing.png", "caption": "nobody"}))  # line 6: no such file
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def ingested(source: Path, codec: Codec, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("out") / "shards"
    report = ingest(source, codec, out, max_frames=MAX_FRAMES, stride=STRIDE, progress=False)
    return report, out


def expected_document(source: Path, rel: str, size: int) -> list:
    path = source / rel
    if path.suffix == ".txt":
        return [Text(path.read_text(encoding="utf-8"))]
    if path.suffix in media.VIDEO_SUFFIXES:
        frames = media.read_video(path, max_frames=MAX_FRAMES, stride=STRIDE)
        seg = Video(pixels=np.stack([media.fit_square(f, size) for f in frames]))
    else:
        seg = Image(pixels=media.fit_square(media.read_image(path), size))
    return ([Text(CAPTIONS[rel])] if rel in CAPTIONS else []) + [seg]


def test_report_counts_and_problems(ingested) -> None:
    report, out = ingested
    assert (report.images, report.videos, report.texts, report.documents) == (3, 2, 1, 6)
    assert [name for name, _ in report.skipped] == ["broken.png", "empty.txt", "truncated.mp4"]
    assert dict(report.skipped)["empty.txt"] == "the file holds no text"
    assert all(why for _, why in report.skipped)
    assert len(report.caption_problems) == 2
    assert report.caption_problems[0].startswith("line 3:")
    assert report.caption_problems[1].startswith("line 6:") and "missing.png" in report.caption_problems[1]
    summary = report.summary()
    for needle in ("6 documents", "1 texts", "broken.png", "truncated.mp4", "line 3", "missing.png"):
        assert needle in summary
    index = json.loads((out / "index.json").read_text())
    assert index["format"] == "ringworld-shards/1" and index["dtype"] == "uint16"
    assert (index["images"], index["videos"], index["texts"], index["skipped"]) == (3, 2, 1, 3)
    assert [f for f, _ in index["skipped_files"]] == ["broken.png", "empty.txt", "truncated.mp4"]
    assert index["sources"] == DOCS
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no temp dirs left


def test_documents_round_trip(ingested, codec: Codec, source: Path) -> None:
    report, out = ingested
    ds = ShardDataset(out)
    assert len(ds) == 6 and ds.vocab == codec.vocab and ds.sources == DOCS
    assert ds.num_tokens == report.tokens == int(ds.lengths.sum())
    frames = {"clip.mp4": min(MAX_FRAMES, math.ceil(MP4_FRAMES / STRIDE)), "anim.gif": 3}
    for i, rel in enumerate(DOCS):
        ids, mask = ds[i]
        assert ids.dtype == np.int64 and mask.dtype == bool
        want = codec.encode(expected_document(source, rel, codec.vision.frame_size))
        np.testing.assert_array_equal(ids, want.ids)
        np.testing.assert_array_equal(mask, want.loss_mask)
        segments = codec.decode(ids).segments  # strict: raises on any malformed id
        kinds = [type(s) for s in segments]
        media_kind = Video if rel in frames else Image
        if rel == "notes.txt":
            assert kinds == [Text] and segments[0].text == NOTES
            continue
        assert kinds == ([Text, media_kind] if rel in CAPTIONS else [media_kind])
        if rel in CAPTIONS:
            assert segments[0].text == CAPTIONS[rel]
        if rel in frames:
            assert segments[-1].num_frames == frames[rel]
    assert frames["clip.mp4"] == 4
    ids, mask = pickle.loads(pickle.dumps(ds))[-1]  # DataLoader workers get a picklable dataset
    np.testing.assert_array_equal(ids, ds[-1][0])


def test_shard_rollover_in_ingest(source: Path, codec: Codec, ingested, tmp_path: Path) -> None:
    _, out = ingested
    ds = ShardDataset(out)
    small = ingest(
        source,
        codec,
        tmp_path / "s",
        max_frames=MAX_FRAMES,
        stride=STRIDE,
        progress=False,
        shard_tokens=int(ds.lengths.max()),
    )
    rolled = ShardDataset(tmp_path / "s")
    assert len(rolled.index["shards"]) > 1 and small.tokens == ds.num_tokens
    for (a, am), (b, bm) in zip(rolled, ds, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(am, bm)


def test_shard_writer_rollover_and_uint32(tmp_path: Path) -> None:
    vocab = Vocab(text_size=70_000, num_codes=10)  # > 65535 ids: stored as uint32
    rng = np.random.default_rng(1)
    docs = []
    with ShardWriter(tmp_path, vocab, shard_tokens=10) as w:
        for n in (4, 4, 4, 12, 3):  # 12 > 10 gets a shard of its own
            ids = rng.integers(0, vocab.size, n)
            ids[0] = vocab.size - 1
            e = Encoded(ids, rng.random(n) < 0.5, vocab.modality(ids))
            docs.append(e)
            w.add(e, f"doc{len(docs)}")
    ds = ShardDataset(tmp_path)
    assert ds.index["dtype"] == "uint32"
    assert [s["tokens"] for s in ds.index["shards"]] == [8, 4, 12, 3]
    assert ds.index["documents"] == [[0, 0, 4], [0, 4, 4], [1, 0, 4], [2, 0, 12], [3, 0, 3]]
    for (ids, mask), e in zip(ds, docs, strict=True):
        np.testing.assert_array_equal(ids, e.ids)
        np.testing.assert_array_equal(mask, e.loss_mask)
    (tmp_path / "shard-00002.bin").write_bytes(b"\0" * 8)  # truncated: a clear error, not garbage
    with pytest.raises(ValueError, match="shard-00002.bin has 8 bytes"):
        ShardDataset(tmp_path)


def test_interrupted_ingest_leaves_previous_output(source: Path, codec: Codec, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "shards"
    ingest(source, codec, out, max_frames=2, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_encode, calls = codec.encode, []

    def flaky(doc):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("power cut")
        return real_encode(doc)

    monkeypatch.setattr(codec, "encode", flaky)
    with pytest.raises(RuntimeError, match="power cut"):
        ingest(source, codec, out, max_frames=MAX_FRAMES, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


def test_clear_errors(source: Path, codec: Codec, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        ingest(tmp_path / "nope", codec, tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("hi")
    with pytest.raises(ValueError, match="no image, video or text files under"):
        ingest(tmp_path / "empty", codec, tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="would replace the source folder"):
        ingest(source, codec, source, progress=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="x.jpg"):
        ingest(tmp_path / "bad", codec, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="ringworld data ingest"):
        ShardDataset(tmp_path / "empty")
