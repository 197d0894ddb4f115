import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import pre_tokenizers

from ringworld.tokens.text import TextTokenizer, _bytes_to_unicode, train_text_tokenizer

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None)

SENTENCES = [
    "a red square moves left",
    "the blue circle bounces off the wall",
    "a green triangle sits in the top left corner",
    "the agent moves up, then right",
    "two shapes: a yellow square and a red circle",
    "the red square is left of the blue circle",
]


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return train_text_tokenizer(SENTENCES * 4, vocab_size=300)


def test_vocab_is_bytes_plus_merges(tok):
    assert tok.vocab_size == 300
    assert sorted(tok.tokenizer.get_vocab().values()) == list(range(300))
    # merges learned from the corpus: a frequent word is fewer tokens than bytes
    assert len(tok.encode("the red square")) < len(b"the red square")


def test_byte_map_is_the_hf_byte_level_alphabet():
    table = _bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert set(table.values()) == set(pre_tokenizers.ByteLevel.alphabet())


@SETTINGS
@given(text=st.text(max_size=40))
def test_round_trip_any_unicode(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.tokenizer.decode(ids) == text  # the table decode agrees with HF's decoder


def test_special_looking_strings_are_plain_bytes(tok):
    ids = tok.encode("<|eos|>")
    assert len(ids) > 1
    assert tok.decode(ids) == "<|eos|>"
    assert tok.encode("") == []


def test_invalid_utf8_is_visible(tok):
    lone = tok.tokenizer.token_to_id(_bytes_to_unicode()[0xFF])  # byte 0xff alone is never UTF-8
    assert tok.decode_bytes([lone]) == b"\xff"
    assert tok.decode([lone]) == "\ufffd"
    with pytest.raises(UnicodeDecodeError):
        tok.decode([lone], errors="strict")
    with pytest.raises(ValueError, match=r"text ids \[300, -1\] are outside this tokenizer's range 0\.\.299"):
        tok.decode([1, 300, -1])


def test_save_load_same_ids(tok, tmp_path):
    path = tok.save(tmp_path / "text")
    assert path == tmp_path / "text" / "tokenizer.json"
    loaded = TextTokenizer.load(tmp_path / "text")
    assert loaded.vocab_size == tok.vocab_size
    for text in SENTENCES + ["héllo wörld ✓ <|bos|>", "\x00\n\t  "]:
        assert loaded.encode(text) == tok.encode(text)


def test_load_missing_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="ringworld tokenizer train") as err:
        TextTokenizer.load(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "tokenizer.json") in str(err.value)


def test_vocab_size_below_bytes_rejected():
    with pytest.raises(ValueError, match="at least 256"):
        train_text_tokenizer(SENTENCES, vocab_size=100)
