"""Byte-level BPE for text, trained and run by Hugging Face ``tokenizers``.

The HF tokenizer holds no special tokens: ringworld's specials live in its own id range
(see ``vocab.py``), so a user string such as ``"<|eos|>"`` encodes as plain bytes and can
never forge a structure token. Text ids are ``0 .. vocab_size - 1``, contiguous.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

FILENAME = "tokenizer.json"
NUM_BYTES = 256


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to the printable character byte-level BPE writes for it."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    chars = {b: b for b in keep}
    extra = 0
    for b in range(NUM_BYTES):
        if b not in chars:
            chars[b] = NUM_BYTES + extra
            extra += 1
    return {b: chr(c) for b, c in chars.items()}


def train_text_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> TextTokenizer:
    """Train byte-level BPE on ``texts``; every byte is in the vocabulary, so any string encodes."""
    if vocab_size < NUM_BYTES:
        raise ValueError(f"vocab_size is {vocab_size}; byte-level BPE needs at least {NUM_BYTES} (one per byte)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return TextTokenizer(tok)


class TextTokenizer:
    """A byte-level BPE ``tokenizers.Tokenizer`` with exact round trips: ``decode(encode(s)) == s``."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], *, errors: str = "replace") -> str:
        """Text of ``ids``; ``errors`` is as in ``bytes.decode`` ("strict" raises UnicodeDecodeError
        on ids whose bytes are not UTF-8, which a model can produce; "replace" writes U+FFFD)."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        table = self._id_bytes
        ids = [int(i) for i in ids]
        if ids and (min(ids) < 0 or max(ids) >= len(table)):
            bad = [i for i in ids if not 0 <= i < len(table)]
            raise ValueError(f"text ids {bad[:5]} are outside this tokenizer's range 0..{len(table) - 1}")
        return b"".join([table[i] for i in ids])

    @cached_property
    def _id_bytes(self) -> list[bytes]:
        # Decoding by table rather than through the HF decoder lets the caller see invalid UTF-8.
        to_byte = {c: b for b, c in _bytes_to_unicode().items()}
        vocab = self.tokenizer.get_vocab()
        table = [b""] * self.vocab_size
        for token, i in vocab.items():
            table[i] = bytes(to_byte[c] for c in token)
        return table

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(path))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> TextTokenizer:
        path = Path(directory) / FILENAME
        if not path.is_file():
            raise FileNotFoundError(
                f"no text tokenizer at {path}; train one with `ringworld tokenizer train` "
                f"or pass the directory that holds {FILENAME}"
            )
        return cls(Tokenizer.from_file(str(path)))
