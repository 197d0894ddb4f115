import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringworld.documents import ACTIONS, Action, Image, Text, Video
from ringworld.tokens.codec import Codec, Decoded
from ringworld.tokens.parse import MalformedTokens, Parser
from ringworld.tokens.text import _bytes_to_unicode, train_text_tokenizer
from ringworld.tokens.vocab import SPECIAL_TOKENS, Vocab

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None)
GRID = (3, 4)  # h, w
NUM_CODES = 50
H, W = GRID
SENTENCES = [
    "a red square moves left",
    "the blue circle bounces off the wall",
    "the agent moves up, then right",
]


@pytest.fixture(scope="module")
def codec() -> Codec:
    text = train_text_tokenizer(SENTENCES * 4, vocab_size=280)
    return Codec(text, Vocab(text.vocab_size, NUM_CODES), GRID)


# documents -------------------------------------------------------------------------------
def code_grids(t: int) -> st.SearchStrategy[np.ndarray]:
    n = t * H * W
    ints = st.lists(st.integers(0, NUM_CODES - 1), min_size=n, max_size=n)
    return ints.map(lambda c: np.array(c, dtype=np.int64).reshape(t, H, W))


@st.composite
def videos(draw: st.DrawFn) -> Video:
    t = draw(st.integers(0, 3))
    actions = None
    if t and draw(st.booleans()):
        actions = draw(st.lists(st.sampled_from(ACTIONS), min_size=t - 1, max_size=t - 1))
    notes = None
    if t > 1 and draw(st.booleans()):
        notes = draw(st.lists(st.text(max_size=8), min_size=t - 1, max_size=t - 1))
    return Video(codes=draw(code_grids(t)), actions=actions, loss=draw(st.booleans()), notes=notes)


segments = st.one_of(
    st.builds(Text, st.text(min_size=1, max_size=12), st.booleans()),
    st.builds(lambda c, loss: Image(codes=c[0], loss=loss), code_grids(1), st.booleans()),
    videos(),
    st.builds(Action, st.lists(st.sampled_from(ACTIONS), max_size=4), st.booleans()),
)
documents = st.lists(segments, max_size=6)


def assert_same(got: list, want: list) -> None:
    """Same segments (loss flags aside: decoding cannot know them)."""
    assert [type(s) for s in got] == [type(s) for s in want]
    for g, w in zip(got, want, strict=True):
        if isinstance(w, Text):
            assert g.text == w.text
        elif isinstance(w, Action):
            assert g.actions == w.actions
        else:
            assert g.codes.dtype == np.int64
            np.testing.assert_array_equal(g.codes, w.codes)
        if isinstance(w, Video):
            assert g.actions == (w.actions or None)  # a 1-frame video's [] decodes as None
            assert g.notes == (w.notes if w.notes and any(w.notes) else None)  # nothing said decodes as None


def span_length(codec: Codec, seg) -> int:
    """Tokens a segment takes, counted from the layout rather than from the encoder."""
    if isinstance(seg, Text):
        return len(codec.text.encode(seg.text))
    if isinstance(seg, Image):
        return 2 + H * (W + 1)
    if isinstance(seg, Video):
        return 2 + seg.num_frames * (H * (W + 1) + 1) + len(seg.actions or []) + sum(note_lengths(codec, seg))
    return 2 + len(seg.actions)


def note_lengths(codec: Codec, video: Video) -> list[int]:
    """Text ids of each note of a video (0 where nothing is said)."""
    return [len(codec.text.encode(n)) if n else 0 for n in video.notes or [""] * max(0, video.num_frames - 1)]


# round trips -----------------------------------------------------------------------------
@SETTINGS
@given(doc=documents)
def test_round_trip(codec, doc):
    enc = codec.encode(doc)
    assert enc.ids.dtype == np.int64 and enc.loss_mask.dtype == bool and enc.modality.dtype == np.uint8
    assert enc.ids.shape == enc.loss_mask.shape == enc.modality.shape
    dec = codec.decode(enc.ids)
    assert dec.problems == []
    assert_same(dec.segments, doc)
    # the slow parser (the one that diagnoses faults) reads well-formed input the same way
    assert_same(Parser(codec, enc.ids, lenient=False, fast=False).document(), doc)


@SETTINGS
@given(doc=documents)
def test_ids_fall_in_their_ranges(codec, doc):
    v = codec.vocab
    ids = codec.encode(doc).ids
    texts = [s for s in doc if isinstance(s, Text)]
    said = sum(sum(note_lengths(codec, s)) for s in doc if isinstance(s, Video))
    grids = [s.codes[None] if isinstance(s, Image) else s.codes for s in doc if isinstance(s, (Image, Video))]
    acts = [a for s in doc if isinstance(s, (Video, Action)) for a in (s.actions or [])]
    seps = sum(isinstance(a, Text) and isinstance(b, Text) for a, b in zip(doc[:-1], doc[1:], strict=True))
    n_specials = 2 + seps
    for s in doc:
        if isinstance(s, Image):
            n_specials += 2 + H
        elif isinstance(s, Video):
            n_specials += 2 + s.num_frames * (H + 1)
        elif isinstance(s, Action):
            n_specials += 2
    assert ids.min() >= 0 and ids.max() < v.size
    assert v.is_text(ids).sum() == sum(len(codec.text.encode(t.text)) for t in texts) + said
    assert v.is_special(ids).sum() == n_specials
    all_codes = np.concatenate([g.ravel() for g in grids]) if grids else np.zeros(0, np.int64)
    np.testing.assert_array_equal(np.sort(v.code_of(ids[v.is_code(ids)])), np.sort(all_codes))
    assert sorted(v.action_of(i) for i in ids[v.is_action(ids)]) == sorted(acts)


@SETTINGS
@given(doc=documents)
def test_modality_and_loss_mask_follow_segments(codec, doc):
    enc = codec.encode(doc)
    want_loss, want_vision = [False], [0]  # <|bos|>
    prev = None
    for seg in doc:
        if isinstance(prev, Text) and isinstance(seg, Text):
            want_loss.append(prev.loss)  # <|sep|>
            want_vision.append(0)
        n = span_length(codec, seg)
        want_loss += [seg.loss] * n
        if isinstance(seg, Image):
            want_vision += [1] * n
        elif isinstance(seg, Video):
            vision = [1]  # <|video|>
            for t in range(seg.num_frames):  # action t - 1, then note t - 1, then frame t
                if t:
                    vision += [0] * (seg.actions is not None) + [0] * note_lengths(codec, seg)[t - 1]
                vision += [1] * (H * (W + 1) + 1)
            want_vision += [*vision, 1]  # <|/video|>
        else:
            want_vision += [0] * n
        prev = seg
    want_loss.append(prev.loss if prev is not None else False)  # <|eos|>
    want_vision.append(0)
    np.testing.assert_array_equal(enc.loss_mask, want_loss)
    np.testing.assert_array_equal(enc.modality, want_vision)


def test_layout_of_a_small_document(codec):
    v, sp = codec.vocab, codec.vocab.special
    img = np.arange(12).reshape(3, 4)
    vid = np.arange(24).reshape(2, 3, 4) + 20
    doc = [Text("a", loss=False), Text("b"), Image(codes=img)]
    doc += [Video(codes=vid, actions=["left"]), Action(["up"])]
    ids = codec.encode(doc).ids.tolist()
    rows = lambda g: [x for r in g for x in [*(v.code_id(int(c)) for c in r), sp("<|eol|>")]]  # noqa: E731
    want = [sp("<|bos|>"), *codec.text.encode("a"), sp("<|sep|>"), *codec.text.encode("b")]
    want += [sp("<|image|>"), *rows(img), sp("<|/image|>")]
    want += [sp("<|video|>"), *rows(vid[0]), sp("<|eof|>"), v.action_id("left")]
    want += [*rows(vid[1]), sp("<|eof|>"), sp("<|/video|>")]
    want += [sp("<|actions|>"), v.action_id("up"), sp("<|/actions|>"), sp("<|eos|>")]
    assert ids == want
    assert len(ids) == 1 + 1 + 1 + 1 + codec.image_length + (2 + 2 * 16 + 1) + 3 + 1 == 60


def test_specials_in_user_text_stay_text(codec):
    ids = codec.encode([Text("<|eos|><|image|>")]).ids
    assert codec.vocab.is_text(ids[1:-1]).all()
    assert codec.decode(ids).segments[0].text == "<|eos|><|image|>"


# encode errors ---------------------------------------------------------------------------
def test_encode_errors(codec):
    with pytest.raises(ValueError, match="segment 1 is an empty Text"):
        codec.encode([Text("a"), Text("")])
    with pytest.raises(ValueError, match=r"segment 0: codes are 4x4 per frame; this codec's grid is 3x4"):
        codec.encode([Image(codes=np.zeros((4, 4), np.int64))])
    with pytest.raises(ValueError, match=r"segment 0: codes lie in 27\.\.50; this vocabulary has codes 0\.\.49"):
        codec.encode([Video(codes=np.arange(24).reshape(2, 3, 4) + 27)])
    with pytest.raises(ValueError, match="codes are float64"):
        codec.encode([Image(codes=np.zeros((3, 4)))])
    with pytest.raises(ValueError, match="needs a vision tokenizer"):
        codec.encode([Image(pixels=np.zeros((8, 8, 3), np.uint8))])
    with pytest.raises(TypeError, match="segment 0 is a str"):
        codec.encode(["hello"])


class FakeVision:
    """A 'vision tokenizer' whose code is the mean of each 2x2 patch's red channel // 8."""

    frame_size = 6
    grid = (3, 3)
    num_codes = 32

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        self.calls += 1
        n = len(pixels)
        red = pixels[..., 0].reshape(n, 3, 2, 3, 2).astype(np.int64)
        return red.mean(axis=(2, 4)).astype(np.int64) // 8  # (N, 3, 3)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        px = np.repeat(np.repeat(codes * 8, 2, axis=1), 2, axis=2).astype(np.uint8)  # (N, 6, 6)
        return np.stack([px, px, px], axis=-1)


def test_pixels_go_through_vision_in_one_batch():
    text = train_text_tokenizer(SENTENCES, vocab_size=260)
    vision = FakeVision()
    codec = Codec.build(text, vision)
    assert codec.grid == (3, 3) and codec.vocab.num_codes == 32
    frames = (np.arange(3 * 36).reshape(3, 6, 6) % 256).astype(np.uint8)
    frames = np.repeat(frames[..., None], 3, axis=-1)  # (3, 6, 6, 3)
    doc = [Image(pixels=frames[0]), Text("a"), Video(pixels=frames[1:], actions=["up"])]
    dec = codec.decode(codec.encode(doc).ids)
    assert vision.calls == 1
    np.testing.assert_array_equal(dec.segments[0].codes, vision.encode(frames[:1])[0])
    np.testing.assert_array_equal(dec.segments[2].codes, vision.encode(frames[1:]))
    back = codec.decode_pixels(dec.segments)
    assert back[0].pixels.shape == (6, 6, 3) and back[2].pixels.shape == (2, 6, 6, 3)
    assert back[2].actions == ["up"] and back[1].text == "a"
    np.testing.assert_array_equal(back[2].pixels, vision.decode(dec.segments[2].codes))
    with pytest.raises(ValueError, match=r"frames are 5x5; the vision tokenizer takes 6x6"):
        codec.encode([Image(pixels=np.zeros((5, 5, 3), np.uint8))])
    with pytest.raises(ValueError, match="vision tokenizer has grid"):
        Codec(text, Vocab(text.vocab_size, 32), (2, 2), vision)


# malformed sequences ---------------------------------------------------------------------
DOC = [
    Text("a red square"),
    Text("moves left"),
    Image(codes=np.arange(12).reshape(3, 4)),
    Video(codes=np.arange(36).reshape(3, 3, 4) % NUM_CODES, actions=["up", "left"]),
    Action(["down", "stay"]),
]


def insert(ids: list[int], at: int, *new: int) -> list[int]:
    return ids[:at] + list(new) + ids[at:]


def delete(ids: list[int], at: int, n: int = 1) -> list[int]:
    return ids[:at] + ids[at + n :]


class Spots:
    """Where things are in the encoding of DOC, for writing mutations and expected messages."""

    def __init__(self, codec: Codec) -> None:
        self.v = codec.vocab
        self.ids = codec.encode(DOC).ids.tolist()
        self.n = len(self.ids)
        self.size = self.v.size
        self.img, self.img_close = self.at("<|image|>"), self.at("<|/image|>")
        self.vid, self.vid_close = self.at("<|video|>"), self.at("<|/video|>")
        self.act, self.act_close = self.at("<|actions|>"), self.at("<|/actions|>")
        self.eof = self.at("<|eof|>")  # the first frame's
        self.sep = self.at("<|sep|>")
        self.lone_ff = codec.text.tokenizer.token_to_id(_bytes_to_unicode()[0xFF])  # never UTF-8

    def sp(self, name: str) -> int:
        return self.v.special(name)

    def at(self, name: str) -> int:
        return self.ids.index(self.v.special(name))

    def ins(self, at: int, *new: int) -> list[int]:
        return insert(self.ids, at, *new)

    def drop(self, at: int, n: int = 1) -> list[int]:
        return delete(self.ids, at, n)


# (name, mutation of DOC's ids, expected message fragment), each a function of s = Spots(codec)
# fmt: off
CASES = [
    ("no bos", lambda s: s.ids[1:],
     lambda s: "missing <|bos|> at position 0"),
    ("no eos", lambda s: s.ids[:-1],
     lambda s: f"missing <|eos|> at the end (position {s.n - 1})"),
    ("after eos", lambda s: s.ids + [5],
     lambda s: f"position {s.n}: id 5 (text) after <|eos|> at position {s.n - 1}"),
    ("eol outside", lambda s: s.ins(1, s.sp("<|eol|>")),
     lambda s: f"position 1: id {s.sp('<|eol|>')} (<|eol|>) outside an image or video span"),
    ("code outside", lambda s: s.ins(1, s.v.code_id(7)),
     lambda s: f"position 1: id {s.v.code_id(7)} (visual code 7) outside an image or video span"),
    ("action outside", lambda s: s.ins(1, s.v.action_id("up")),
     lambda s: f"position 1: id {s.v.action_id('up')} (action up) outside an <|actions|> span or a video"),
    ("too big", lambda s: s.ins(1, s.size),
     lambda s: f"position 1: id {s.size} (outside the vocabulary of size {s.size})"),
    ("negative", lambda s: s.ins(1, -3),
     lambda s: f"position 1: id -3 (outside the vocabulary of size {s.size})"),
    ("pad inside", lambda s: s.ins(1, s.sp("<|pad|>")),
     lambda s: f"position 1: id {s.sp('<|pad|>')} (<|pad|>) inside a document; cut padding off"),
    ("second bos", lambda s: s.ins(1, s.sp("<|bos|>")),
     lambda s: f"position 1: id {s.sp('<|bos|>')} (<|bos|>) inside a document; <|bos|> only starts one"),
    ("sep before image", lambda s: s.ins(s.img, s.sp("<|sep|>")),
     lambda s: f"position {s.img}: <|sep|> must sit between two text segments"),
    ("short row", lambda s: s.drop(s.img + 6),
     lambda s: f"position {s.img + 6}: image row 1 has 3 codes; this tokenizer's grid is 4 wide"),
    ("long row", lambda s: s.drop(s.img + 5),
     lambda s: f"position {s.img + 1}: image row 0 has 8 codes; this tokenizer's grid is 4 wide"),
    ("missing row", lambda s: s.drop(s.img + 11, 5),
     lambda s: f"position {s.img + 11}: image has 2 rows; this tokenizer's grid is 3 tall"),
    ("extra row", lambda s: s.ins(s.img_close, *s.ids[s.img + 1 : s.img + 6]),
     lambda s: f"position {s.img_close}: image has more than 3 rows; this tokenizer's grid is 3 tall"),
    ("unclosed image", lambda s: s.ids[: s.img + 7],
     lambda s: f"unclosed <|image|> at position {s.img}"),
    ("text in image", lambda s: s.ins(s.img + 2, 5),
     lambda s: f"position {s.img + 2}: id 5 (text) inside an image "
               f"(the <|image|> at position {s.img} is unclosed)"),
    ("eof in image", lambda s: s.ins(s.img + 2, s.sp("<|eof|>")),
     lambda s: f"position {s.img + 2}: id {s.sp('<|eof|>')} (<|eof|>) inside an image "
               f"(opened at position {s.img})"),
    ("row without eol", lambda s: s.drop(s.img_close - 1),
     lambda s: f"position {s.img_close - 1}: image row 2 ends without <|eol|>"),
    ("frame without eof", lambda s: s.drop(s.eof),
     lambda s: f"position {s.eof}: video frame 0 has no <|eof|> after its 3 rows"),
    ("last frame without eof", lambda s: s.drop(s.vid_close - 1),
     lambda s: f"position {s.vid_close - 1}: video frame 2 has no <|eof|> after its 3 rows"),
    ("action after last frame", lambda s: s.ins(s.vid_close, s.v.action_id("up")),
     lambda s: f"position {s.vid_close}: id {s.v.action_id('up')} (action up) after the last frame "
               f"of the video at position {s.vid}"),
    ("missing video action", lambda s: s.drop(s.eof + 1),
     lambda s: f"video at position {s.vid}: no action after frame(s) [0]"),
    ("action not after eof", lambda s: s.ins(s.vid + 1, s.v.action_id("up")),
     lambda s: f"position {s.vid + 1}: id {s.v.action_id('up')} (action up) inside a video "
               f"(opened at position {s.vid}) (an action sits right after a frame's <|eof|>)"),
    ("unclosed video", lambda s: s.ids[: s.eof + 1],
     lambda s: f"unclosed <|video|> at position {s.vid}"),
    ("image inside video", lambda s: s.ins(s.vid + 1, s.sp("<|image|>")),
     lambda s: f"position {s.vid + 1}: id {s.sp('<|image|>')} (<|image|>) inside a video "
               f"(the <|video|> at position {s.vid} is unclosed)"),
    ("code in actions", lambda s: s.ins(s.act + 1, s.v.code_id(0)),
     lambda s: f"position {s.act + 1}: id {s.v.code_id(0)} (visual code 0) inside an <|actions|> span "
               f"(opened at position {s.act})"),
    ("unclosed actions", lambda s: s.drop(s.act_close),
     lambda s: f"position {s.act_close}: id {s.sp('<|eos|>')} (<|eos|>) inside an <|actions|> span "
               f"(the <|actions|> at position {s.act} is unclosed)"),
    ("stray close", lambda s: s.ins(1, s.sp("<|/video|>")),
     lambda s: f"position 1: id {s.sp('<|/video|>')} (<|/video|>) outside an image or video span"),
    ("bad utf-8", lambda s: s.ins(1, s.lone_ff),
     lambda s: f"positions 1..{s.sep}: text bytes are not valid UTF-8 (invalid start byte at byte 0)"),
]
# fmt: on


@pytest.mark.parametrize(("name", "mutate", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_malformed(codec, name, mutate, fragment):
    s = Spots(codec)
    bad = mutate(s)
    fragment = fragment(s)
    with pytest.raises(MalformedTokens, match=re.escape(fragment)):
        codec.decode(bad)
    dec = codec.decode(bad, lenient=True)
    assert len(dec.problems) >= 1
    assert fragment in dec.problems[0]
    assert_is_document(codec, dec)


def assert_is_document(codec: Codec, dec: Decoded) -> None:
    """Lenient output is a valid document: it encodes, and decodes strictly to itself."""
    again = codec.decode(codec.encode(dec.segments).ids)
    assert again.problems == []
    assert_same(again.segments, dec.segments)


def test_lenient_repairs(codec):
    s = Spots(codec)
    # a stray token is dropped and nothing else changes
    dec = codec.decode(s.ins(1, s.sp("<|eol|>")), lenient=True)
    assert len(dec.problems) == 1
    assert_same(dec.segments, DOC)
    # a short row is padded with code 0
    dec = codec.decode(s.drop(s.img + 6), lenient=True)
    np.testing.assert_array_equal(dec.segments[2].codes, [[0, 1, 2, 3], [5, 6, 7, 0], [8, 9, 10, 11]])
    # a long row (its <|eol|> lost) is cut, and the rows run short
    dec = codec.decode(s.drop(s.img + 5), lenient=True)
    np.testing.assert_array_equal(dec.segments[2].codes, [[0, 1, 2, 3], [8, 9, 10, 11], [0, 0, 0, 0]])
    # an image cut off after 1.5 rows: closed, padded, and the document ends there
    dec = codec.decode(s.ids[: s.img + 8], lenient=True)
    np.testing.assert_array_equal(dec.segments[2].codes, [[0, 1, 2, 3], [4, 5, 0, 0], [0, 0, 0, 0]])
    assert len(dec.segments) == 3
    assert [p.rsplit("; ", 1)[0] for p in dec.problems] == [
        f"unclosed <|image|> at position {s.img}",
        f"position {s.img + 6}: image row 1 has 2 codes; this tokenizer's grid is 4 wide",
        f"position {s.img + 8}: image has 2 rows; this tokenizer's grid is 3 tall",
        f"missing <|eos|> at the end (position {s.img + 8})",
    ]
    # a missing action between frames is filled with "stay"
    dec = codec.decode(s.drop(s.eof + 1), lenient=True)
    assert dec.segments[3].actions == ["stay", "left"]
    # a frame without its <|eof|> is ended after its rows; its action and the next frame read on
    dec = codec.decode(s.drop(s.eof), lenient=True)
    assert len(dec.problems) == 1
    assert_same(dec.segments, DOC)


def check_decoders(codec: Codec, ids: list[int]) -> None:
    """Strict succeeds exactly when lenient finds nothing to repair, and then they agree."""
    lenient = codec.decode(ids, lenient=True)
    try:
        strict = codec.decode(ids)
    except MalformedTokens:
        assert lenient.problems
    else:
        assert lenient.problems == []
        assert_same(lenient.segments, strict.segments)
    assert_is_document(codec, lenient)


def any_ids(v: Vocab) -> st.SearchStrategy[list[int]]:
    """Ids of every kind, drawn often from the specials, the codes and (where there are any) the cells."""
    kinds = [
        st.integers(0, v.size - 1),
        st.sampled_from([v.special(s) for s in SPECIAL_TOKENS]),
        st.integers(v.code_ids.start, v.code_ids.stop - 1),
    ]
    if v.num_cells:
        kinds.append(st.integers(v.cell_ids.start, v.cell_ids.stop - 1))
    return st.lists(st.one_of(*kinds), max_size=60)


@SETTINGS
@given(data=st.data())
def test_random_ids_never_break_decoding(codec, data):
    check_decoders(codec, data.draw(any_ids(codec.vocab)))


edits = st.tuples(st.sampled_from("idr"), st.integers(0, 10**6), st.integers(0, 10**6))  # (op, where, id)


@SETTINGS
@given(doc=documents, edits=st.lists(edits, min_size=1, max_size=4))
def test_edited_documents_never_break_decoding(codec, doc, edits):
    """Deletions, insertions and replacements in a real encoding reach the deep repair paths."""
    ids = codec.encode(doc).ids.tolist()
    for op, at, new in edits:
        at, new = at % (len(ids) + 1), new % codec.vocab.size
        if op == "i":
            ids = insert(ids, at, new)
        elif at < len(ids):
            ids = delete(ids, at) if op == "d" else ids[:at] + [new] + ids[at + 1 :]
    check_decoders(codec, ids)


def test_decode_rejects_non_sequences(codec):
    with pytest.raises(ValueError, match=r"one sequence of integer ids, got shape \(2, 2\)"):
        codec.decode(np.zeros((2, 2), np.int64))
    assert codec.decode([], lenient=True).problems[0].startswith("missing <|bos|> at position 0")


def test_lenient_decode_of_a_video_cut_short_mid_frame(codec):
    """Found by hypothesis: a text id inside the last frame of an action video cut that frame
    short, and the video came back with one action too few for its frames."""
    doc = [Video(codes=np.zeros((3, H, W), np.int64), actions=["up", "up"], loss=False)]
    ids = codec.encode(doc).ids.tolist()
    cut = len(ids) - 4  # inside the last frame's rows
    decoded = codec.decode(ids[:cut] + [0] + ids[cut:], lenient=True)
    video = decoded.segments[0]
    assert decoded.problems and video.num_frames == 3 and video.actions == ["up", "up"]


# video frames written as their changes ---------------------------------------------------
@pytest.fixture(scope="module")
def delta_codec(codec) -> Codec:
    return Codec(codec.text, Vocab(codec.vocab.text_size, NUM_CODES, num_cells=H * W), GRID)


def test_frames_after_the_first_are_their_changes(delta_codec):
    v, sp = delta_codec.vocab, delta_codec.vocab.special
    codes = np.zeros((3, H, W), np.int64)
    codes[1, 0, 1], codes[1, 2, 3] = 7, 9  # two cells change, then nothing does
    codes[2] = codes[1]
    ids = delta_codec.encode([Video(codes=codes, actions=["up", "stay"])]).ids.tolist()
    first = [*([v.code_id(0)] * W + [sp("<|eol|>")]) * H, sp("<|eof|>")]
    changes = [v.cell_ids[1], v.code_id(7), v.cell_ids[2 * W + 3], v.code_id(9), sp("<|eof|>")]
    acts = [v.action_id("up"), v.action_id("stay")]
    want = [sp("<|bos|>"), sp("<|video|>"), *first, acts[0], *changes, acts[1], sp("<|eof|>"), sp("<|/video|>")]
    assert ids == [*want, sp("<|eos|>")]
    assert delta_codec.delta_frames and delta_codec.longest_frame == 2 * H * W  # a change at every cell
    with pytest.raises(ValueError, match="a 3x4 grid has 12"):
        Codec(delta_codec.text, Vocab(v.text_size, NUM_CODES, num_cells=5), GRID)


def test_a_note_sits_after_the_action_and_before_the_frame(delta_codec):
    v, sp = delta_codec.vocab, delta_codec.vocab.special
    codes = np.zeros((3, H, W), np.int64)
    codes[2, 0, 0] = 5
    video = Video(codes=codes, actions=["up", "left"], notes=["", "the blue circle bounces off the wall"])
    ids = delta_codec.encode([video]).ids.tolist()
    said = list(delta_codec.text.encode("the blue circle bounces off the wall"))
    second = ids.index(v.action_id("left"))
    assert ids[second + 1 : second + 1 + len(said)] == said and ids[second + 1 + len(said)] == v.cell_ids[0]
    assert ids[ids.index(v.action_id("up")) + 1] == sp("<|eof|>")  # frame 1: nothing said, nothing changed
    with pytest.raises(MalformedTokens, match="text after its last frame"):
        delta_codec.decode(ids[:-2] + said + ids[-2:])
    with pytest.raises(ValueError, match="takes 2 notes"):
        Video(codes=codes, notes=["a"])


@SETTINGS
@given(doc=documents)
def test_round_trip_with_frames_as_changes(delta_codec, doc):
    enc = delta_codec.encode(doc)
    assert delta_codec.decode(enc.ids).problems == []
    assert_same(delta_codec.decode(enc.ids).segments, doc)
    assert_same(Parser(delta_codec, enc.ids, lenient=False, fast=False).document(), doc)
    assert (enc.modality[delta_codec.vocab.is_cell(enc.ids)] == 1).all()  # cells are vision


def test_malformed_changes_name_the_fault(delta_codec):
    v = delta_codec.vocab
    codes = np.zeros((2, H, W), np.int64)
    codes[1, 0, 0], codes[1, 1, 1] = 3, 4
    ids = delta_codec.encode([Video(codes=codes)]).ids.tolist()
    at = ids.index(v.cell_ids[0])
    swapped = ids[:at] + ids[at + 2 : at + 4] + ids[at : at + 2] + ids[at + 4 :]  # cell 5 before cell 0
    with pytest.raises(MalformedTokens, match="changes cell 0 after cell 5; cells come in raster order"):
        delta_codec.decode(swapped)
    repaired = delta_codec.decode(swapped, lenient=True)
    np.testing.assert_array_equal(repaired.segments[0].codes, codes)  # applied anyway
    lone = ids[: at + 1] + ids[at + 2 :]  # cell 0 without its code
    with pytest.raises(MalformedTokens, match="lists its changes: a cell, then its visual code"):
        delta_codec.decode(lone)


@SETTINGS
@given(data=st.data())
def test_random_ids_never_break_decoding_with_frames_as_changes(delta_codec, data):
    check_decoders(delta_codec, data.draw(any_ids(delta_codec.vocab)))


@SETTINGS
@given(doc=documents, edits=st.lists(edits, min_size=1, max_size=4))
def test_edited_documents_never_break_decoding_with_frames_as_changes(delta_codec, doc, edits):
    test_edited_documents_never_break_decoding.hypothesis.inner_test(delta_codec, doc, edits)


def test_encoding_a_batch_is_encoding_each_document(delta_codec):
    """One vision call for many documents gives every document's ids, loss mask and modality."""
    from ringworld.jobs.demo import DEMO_WORLD
    from ringworld.world.tasks import TaskConfig, sample_task
    from tests.world_models import demo_codec

    world = demo_codec()
    rng = np.random.default_rng(0)
    cfg = TaskConfig(world=DEMO_WORLD, video_frames=4)
    docs = [sample_task(t, rng, cfg).document for t in ("predict", "act", "text_to_image", "qa", "image_to_text")] * 2
    for one, batched in zip(map(world.encode, docs), world.encode_batch(docs), strict=True):
        for field in ("ids", "loss_mask", "modality"):
            np.testing.assert_array_equal(getattr(one, field), getattr(batched, field))
    assert world.encode_batch([[Text("no pixels")]])[0].ids.tolist() == world.encode([Text("no pixels")]).ids.tolist()
