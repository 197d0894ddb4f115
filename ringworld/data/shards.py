"""Token shards on disk: documents' ids and loss masks in flat files, memory-mapped to read.

    DIR/index.json                 format, dtype, vocab, shards, documents, sources (+ extra fields)
    DIR/shard-00000.bin            ids of the documents in shard 0, back to back (uint16 or uint32)
    DIR/shard-00000.loss.bin       their loss masks, one uint8 per id
    DIR/shard-00001.bin ...

A document never straddles two shards: ``documents[i] = [shard, offset, length]``. Modality labels
are not stored; ``vocab.modality(ids)`` reads them off the ids. The vocabulary is ringworld's own
(``ringworld.tokens.vocab``) or a public family's (``ringworld.tokens.family_vocab``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ringworld.io import atomic_write_text
from ringworld.tokens.codec import Encoded
from ringworld.tokens.family_vocab import FamilyVocab, read_vocab
from ringworld.tokens.vocab import Vocab

FORMAT = "ringworld-shards/1"
INDEX = "index.json"
_RESERVED = ("format", "dtype", "vocab", "shards", "documents", "sources")


def shard_dtype(vocab: Vocab | FamilyVocab) -> np.dtype:
    """The smallest unsigned dtype that holds every id of ``vocab``."""
    return np.dtype(np.uint16 if vocab.size <= 65535 else np.uint32)


def _shard_files(shard: int) -> tuple[str, str]:
    return f"shard-{shard:05d}.bin", f"shard-{shard:05d}.loss.bin"


class ShardWriter:
    """Appends encoded documents to shard files in ``directory``; ``close`` writes ``index.json``.

    A new shard starts when the current one would grow past ``shard_tokens``; a document longer
    than that gets a shard of its own. As a context manager it closes on success and, on an
    exception, leaves no ``index.json``, so the half-written directory never reads as a dataset.
    """

    def __init__(self, directory: str | Path, vocab: Vocab | FamilyVocab, *, shard_tokens: int = 2**24) -> None:
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be >= 1, got {shard_tokens}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.vocab, self.shard_tokens = vocab, shard_tokens
        self.dtype = shard_dtype(vocab)
        self.shards: list[dict[str, Any]] = []  # {"file", "tokens"}
        self.documents: list[list[int]] = []  # [shard, offset, length]
        self.sources: list[str] = []
        self._files: tuple[BinaryIO, BinaryIO] | None = None
        self._closed = False

    @property
    def num_tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards)

    def add(self, encoded: Encoded, source: str) -> None:
        """Append one document's ids and loss mask; ``source`` says where it came from."""
        if self._closed:
            raise ValueError(f"this ShardWriter for {self.directory} is closed; open a new one to add more")
        ids, mask = np.asarray(encoded.ids), np.asarray(encoded.loss_mask)
        if ids.ndim != 1 or mask.shape != ids.shape:
            raise ValueError(f"ids {ids.shape} and loss_mask {mask.shape} must be one 1-D sequence each")
        if len(ids) == 0:
            raise ValueError(f"document from {source} has no tokens; every encoded document has <|bos|>")
        if ids.min() < 0 or ids.max() >= self.vocab.size:
            bad = ids[(ids < 0) | (ids >= self.vocab.size)][0]
            raise ValueError(
                f"document from {source}: {self.vocab.describe(bad)}; encode it with the codec of "
                f"this vocabulary ({self.vocab})"
            )
        current = self.shards[-1]["tokens"] if self.shards else 0
        if self._files is None or (current and current + len(ids) > self.shard_tokens):
            self._start_shard()
        shard = self.shards[-1]
        id_file, loss_file = self._files  # type: ignore[misc]
        id_file.write(ids.astype(self.dtype).tobytes())
        loss_file.write(mask.astype(np.uint8).tobytes())
        self.documents.append([len(self.shards) - 1, shard["tokens"], len(ids)])
        self.sources.append(str(source))
        shard["tokens"] += len(ids)

    def _start_shard(self) -> None:
        self._close_files()
        id_name, loss_name = _shard_files(len(self.shards))
        self._files = (open(self.directory / id_name, "wb"), open(self.directory / loss_name, "wb"))
        self.shards.append({"file": id_name, "tokens": 0})

    def _close_files(self) -> None:
        if self._files is not None:
            for f in self._files:
                f.close()
            self._files = None

    def close(self, extra: dict[str, Any] | None = None) -> Path:
        """Flush the shards and write ``index.json`` with ``extra``'s fields added; returns its path."""
        if self._closed:
            raise ValueError(f"this ShardWriter for {self.directory} is already closed")
        extra = dict(extra or {})
        clash = sorted(set(extra) & set(_RESERVED))
        if clash:
            raise ValueError(f"extra fields {clash} would overwrite the index's own; rename them")
        self._close_files()
        self._closed = True
        index = {
            "format": FORMAT,
            "dtype": self.dtype.name,
            "vocab": self.vocab.to_json(),
            "shards": self.shards,
            "documents": self.documents,
            "sources": self.sources,
            **extra,
        }
        path = self.directory / INDEX
        atomic_write_text(path, json.dumps(index) + "\n")
        return path

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None and not self._closed:
            self.close()
        else:
            self._close_files()
            self._closed = True


class ShardDataset:
    """Documents of a shard directory: ``ds[i] -> (ids int64 (L,), loss_mask bool (L,))``.

    Shards are memory-mapped read-only and opened lazily, so a dataset pickles cheaply into
    DataLoader workers (each reopens its own maps).
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        path = self.directory / INDEX
        if not path.is_file():
            raise FileNotFoundError(
                f"{self.directory} is not a token shard directory (no {INDEX}); make one from a folder "
                f"of images and videos with `ringworld data ingest SOURCE --out {self.directory}`"
            )
        index = json.loads(path.read_text())
        if index.get("format") != FORMAT:
            raise ValueError(
                f"{path} has format {index.get('format')!r}; this ringworld reads {FORMAT!r} — "
                f"ingest the data again with `ringworld data ingest`"
            )
        self.index: dict[str, Any] = index
        self.vocab = read_vocab(index["vocab"])
        self.dtype = np.dtype(index["dtype"])
        self.sources: list[str] = list(index["sources"])
        docs = np.asarray(index["documents"], dtype=np.int64).reshape(-1, 3)  # (N, [shard, offset, length])
        self._docs = docs
        self._shards: list[dict[str, Any]] = index["shards"]
        for shard in self._shards:
            self._check_size(shard)
        self._maps: list[tuple[np.memmap, np.memmap]] | None = None

    def _check_size(self, shard: dict[str, Any]) -> None:
        id_name = shard["file"]
        loss_name = id_name.removesuffix(".bin") + ".loss.bin"
        for name, itemsize in ((id_name, self.dtype.itemsize), (loss_name, 1)):
            p = self.directory / name
            want = shard["tokens"] * itemsize
            got = p.stat().st_size if p.is_file() else None
            if got != want:
                found = "is missing" if got is None else f"has {got} bytes"
                raise ValueError(
                    f"{p} {found}, but {INDEX} says {want}; the directory is incomplete or was "
                    f"edited — ingest the data again with `ringworld data ingest`"
                )

    def _open(self) -> list[tuple[np.memmap, np.memmap]]:
        if self._maps is None:
            maps = []
            for shard in self._shards:
                n, id_name = shard["tokens"], shard["file"]
                loss_name = id_name.removesuffix(".bin") + ".loss.bin"
                ids = np.memmap(self.directory / id_name, dtype=self.dtype, mode="r", shape=(n,))
                loss = np.memmap(self.directory / loss_name, dtype=np.uint8, mode="r", shape=(n,))
                maps.append((ids, loss))
            self._maps = maps
        return self._maps

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": None}

    def __len__(self) -> int:
        return len(self._docs)

    @property
    def lengths(self) -> np.ndarray:
        """(N,) int64: tokens in each document."""
        return self._docs[:, 2].copy()

    @property
    def num_tokens(self) -> int:
        return int(sum(s["tokens"] for s in self._shards))

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self._docs)
        if not -n <= i < n:
            raise IndexError(f"document {i} out of range; this dataset has {n}")
        shard, offset, length = (int(x) for x in self._docs[i])
        ids, loss = self._open()[shard]
        span = slice(offset, offset + length)
        return ids[span].astype(np.int64), loss[span].astype(bool)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"ShardDataset({str(self.directory)!r}: {len(self)} documents, {self.num_tokens} tokens)"
