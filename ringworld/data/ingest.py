"""Your folders -> token shards: images and videos (with captions from a JSONL file) and text files as
documents.

    SOURCE/captions.jsonl    {"file": "cats/a.jpg", "caption": "a cat on a mat"}  (one per line, optional)
    SOURCE/**/*.png|jpg|...  an image: [Text(caption), Image]  or [Image] without a caption
    SOURCE/**/*.mp4|gif|...  a video:  [Text(caption), Video]  or [Video]; at most max_frames frames,
                             one every ``stride``
    SOURCE/**/*.txt          a text: [Text(the file's UTF-8 text)]

Every frame is centre-cropped and resized to the vision tokenizer's square. A file that cannot be
read is skipped and reported with the reason; one bad file never stops the run. Hidden files and
folders (names starting with ".") are not looked at. The shards replace ``out_dir`` atomically.

A public family's codec (a run made by `ringworld import hf`) writes no videos: with it, videos are
skipped, each reported, and images and texts give the same documents in the family's ids. A family
without a VQ tokenizer (LWM-Text, Qwen3) writes text only, and skips images too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm import tqdm

from ringworld import media
from ringworld.data.shards import INDEX, ShardWriter
from ringworld.documents import Document, Image, Text, Video
from ringworld.families import TEXT_ONLY
from ringworld.io import atomic_directory
from ringworld.tokens.codec import Codec
from ringworld.tokens.family import FamilyCodec

CAPTIONS = "captions.jsonl"
TEXT_SUFFIXES = {".txt"}
SOURCE_SUFFIXES = media.IMAGE_SUFFIXES | media.VIDEO_SUFFIXES | TEXT_SUFFIXES
NO_VIDEOS = "a video: this tokenizer (a public family's) writes no videos; save the frames you want as images"


@dataclass
class IngestReport:
    images: int
    videos: int
    texts: int
    skipped: list[tuple[str, str]]  # (file relative to the source, why)
    documents: int
    tokens: int
    caption_problems: list[str] = field(default_factory=list)  # malformed lines, unknown files
    out_dir: str = ""

    def summary(self) -> str:
        lines = [
            f"{self.documents} documents ({self.images} images, {self.videos} videos, {self.texts} texts), "
            f"{self.tokens:,} tokens -> {self.out_dir}"
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} file(s):")
            lines += [f"  {name}: {why}" for name, why in self.skipped]
        if self.caption_problems:
            lines.append(f"{CAPTIONS}: {len(self.caption_problems)} problem(s):")
            lines += [f"  {p}" for p in self.caption_problems]
        return "\n".join(lines)


def find_sources(source_dir: Path) -> list[str]:
    """Image, video and text files under ``source_dir`` as sorted POSIX paths relative to it."""
    found = []
    for p in source_dir.rglob("*"):
        rel = p.relative_to(source_dir)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.suffix.lower() in SOURCE_SUFFIXES and p.is_file():
            found.append(rel.as_posix())
    return sorted(found)


def read_captions(path: Path, files: set[str]) -> tuple[dict[str, str], list[str]]:
    """{file: caption} from a JSONL file, and one line per problem (bad lines are skipped)."""
    captions: dict[str, str] = {}
    problems: list[str] = []
    for n, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8-sig"))  # a BOM on the first line is fine
        except UnicodeDecodeError:
            problems.append(f"line {n}: not UTF-8 text; skipped")
            continue
        except json.JSONDecodeError as e:
            problems.append(f"line {n}: not JSON ({e.msg}); skipped")
            continue
        name = row.get("file") if isinstance(row, dict) else None
        caption = row.get("caption") if isinstance(row, dict) else None
        if not isinstance(name, str) or not isinstance(caption, str):
            problems.append(f'line {n}: expected {{"file": "<path>", "caption": "<text>"}} (strings); skipped')
            continue
        if not caption.strip():
            problems.append(f"line {n}: empty caption for {name}; skipped")
            continue
        rel = PurePosixPath(name).as_posix()  # "./a/b.png" -> "a/b.png"
        if rel not in files:
            problems.append(f"line {n}: {name} is not an image or video in the source folder; skipped")
        elif rel in captions:
            problems.append(f"line {n}: a second caption for {name}; kept the first")
        else:
            captions[rel] = caption
    return captions, problems


def kind_of(rel: str) -> str:
    """ "image", "video" or "text", by the file's suffix."""
    suffix = PurePosixPath(rel).suffix.lower()
    return "video" if suffix in media.VIDEO_SUFFIXES else "text" if suffix in TEXT_SUFFIXES else "image"


def load_document(path: Path, caption: str | None, frame_size: int | None, *, max_frames: int, stride: int) -> Document:
    """The document of one file. Raises on a file that cannot be read."""
    kind = kind_of(path.name)
    if kind == "text":
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            raise media.MediaError("the file holds no text")
        return [Text(text)]
    if kind == "video":
        frames = media.read_video(path, max_frames=max_frames, stride=stride)  # (T, H, W, 3)
        seg: Image | Video = Video(pixels=np.stack([media.fit_square(f, frame_size) for f in frames]))
    else:
        seg = Image(pixels=media.fit_square(media.read_image(path), frame_size))
    return ([Text(caption)] if caption is not None else []) + [seg]


def _reason(e: Exception, path: Path, rel: str) -> str:
    """Why a file was skipped, without the absolute path the reader's message repeats."""
    why = str(e) if isinstance(e, media.MediaError) else f"{type(e).__name__}: {e}"
    for kind in ("image", "video"):
        why = why.removeprefix(f"cannot read {kind} {path}: ")
    return why.replace(str(path), rel)


def ingest(
    source_dir: str | Path,
    codec: Codec | FamilyCodec,
    out_dir: str | Path,
    *,
    captions: str | Path | None = None,
    max_frames: int = 8,
    stride: int = 1,
    progress: bool = True,
    shard_tokens: int = 2**24,
) -> IngestReport:
    """Tokenize every image, video and text file under ``source_dir`` into shards in ``out_dir``."""
    source, out = Path(source_dir), Path(out_dir)
    if max_frames < 1 or stride < 1:
        raise ValueError(f"max_frames and stride must be >= 1, got {max_frames} and {stride}")
    if not source.is_dir():
        raise ValueError(f"source folder {source} does not exist; pass a folder of images and videos")
    if source.resolve() == out.resolve() or out.resolve() in source.resolve().parents:
        raise ValueError(
            f"the output folder {out} would replace the source folder {source}; write the shards elsewhere"
        )
    if out.exists() and any(out.iterdir()) and not (out / INDEX).exists():
        raise ValueError(
            f"{out} exists and is not a shard directory (no {INDEX}); ingest would replace it — "
            f"pick a new folder or remove it first"
        )
    files = find_sources(source)
    if not files:
        raise ValueError(
            f"no image, video or text files under {source} (looked for {', '.join(sorted(SOURCE_SUFFIXES))}); "
            f"put your data there or point at the folder that holds it"
        )
    caption_path = Path(captions) if captions is not None else source / CAPTIONS
    if captions is not None and not caption_path.is_file():
        raise ValueError(f"captions file {caption_path} does not exist; pass a JSONL file or leave it out")
    media_files = {rel for rel in files if kind_of(rel) != "text"}  # what captions may name
    texts, problems = read_captions(caption_path, media_files) if caption_path.is_file() else ({}, [])

    frame_size = None if codec.vision is None else codec.vision.frame_size
    unwritten = {}  # what the codec cannot write: kind -> why
    if isinstance(codec, FamilyCodec) and codec.vision is None:
        text_only = TEXT_ONLY.format(family=codec.family.name)
        unwritten = {"image": text_only, "video": text_only}
    elif isinstance(codec, FamilyCodec):
        unwritten = {"video": NO_VIDEOS}
    readable = [rel for rel in files if kind_of(rel) not in unwritten]
    skipped = [(rel, unwritten[kind_of(rel)]) for rel in files if kind_of(rel) in unwritten]  # (file, why)
    made = {"image": 0, "video": 0, "text": 0}
    with atomic_directory(out) as tmp, ShardWriter(tmp, codec.vocab, shard_tokens=shard_tokens) as writer:
        bar = tqdm(readable, desc="ingest", unit="file", disable=not progress)
        for rel in bar:
            try:
                doc = load_document(source / rel, texts.get(rel), frame_size, max_frames=max_frames, stride=stride)
            except Exception as e:  # Pillow and PyAV raise many kinds; one bad file must not stop the run
                why = _reason(e, source / rel, rel)
                skipped.append((rel, why))
                if progress:
                    tqdm.write(f"skipped {rel}: {why}")
                    bar.set_postfix(skipped=len(skipped), refresh=False)
                continue
            writer.add(codec.encode(doc), rel)
            made[kind_of(rel)] += 1
        if not writer.documents:
            reasons = "; ".join(f"{name}: {why}" for name, why in skipped[:3])
            raise ValueError(f"none of the {len(files)} files under {source} could be read ({reasons})")
        writer.close(
            {
                "images": made["image"],
                "videos": made["video"],
                "texts": made["text"],
                "skipped": len(skipped),
                "skipped_files": [list(s) for s in skipped],
                "caption_problems": problems,
                "source": str(source),
                "frame_size": frame_size,
                "max_frames": max_frames,
                "stride": stride,
            }
        )
        documents, tokens = len(writer.documents), writer.num_tokens
    return IngestReport(made["image"], made["video"], made["text"], skipped, documents, tokens, problems, str(out))
