"""A public family's folder as a codec: its token layout (``ringworld.tokens.layout``), read from its
config's vocabulary map and its tokenizer, and ``FamilyCodec``, documents <-> ids in that layout.

    layout = family_layout(checkpoint / "tokenizer" / HF_DIR, grid=(64, 64))

transformers' own vocabulary mappings (``Emu3ImageVocabularyMapping``, ``ChameleonImageVocabularyMapping``)
say which id stands for which code; Emu3's processor says how an image is written (its start token, the
size as text, ``<|image token|>``, rows ended by ``<|extra_200|>``, then ``<|extra_201|>`` and its end);
Chameleon's writes ``<racm3:break>``, the codes, ``<eoss>``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ringworld.documents import Document, Image, Text
from ringworld.extras import transformers_module
from ringworld.families import TEXT_ONLY, Family, family_named
from ringworld.tokens.codec import Encoded
from ringworld.tokens.family_vocab import FamilyVocab
from ringworld.tokens.hf_vision import HFVision
from ringworld.tokens.layout import TokenLayout

HF_DIR = "hf"  # in the tokenizer directory of a run made by `ringworld import hf`: the HF folder's own files


def family_layout(hf_dir: str | Path, grid: tuple[int, int] = (0, 0)) -> TokenLayout:
    """The layout of the family whose folder (config.json, tokenizer files) is ``hf_dir``, for images of
    ``grid`` = (h, w) codes (a family without a VQ tokenizer has no images, and needs no grid)."""
    transformers = transformers_module()
    config = transformers.AutoConfig.from_pretrained(hf_dir)
    family = family_named(config.model_type)
    text = config.get_text_config()
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    # the id that pads a batch's rows: its own, else the tokenizer's, else its unknown-word id (Llama has no pad)
    pad = next((i for i in (text.pad_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id) if i is not None), None)
    if pad is None or pad == text.eos_token_id:
        raise ValueError(f"{hf_dir} names no padding id of its own (pad_token_id); set one in its config.json")
    ids = dict(vocab_size=text.vocab_size, bos=text.bos_token_id, eos=text.eos_token_id, pad=pad)
    ids["hidden"] = (text.bos_token_id,)
    if family.vision is None:
        empty = np.zeros(0, dtype=np.int64)
        return TokenLayout(**ids, grid=(0, 0), code_ids=empty, image_open=(), row_end=None, image_close=())
    vocab = config.vocabulary_map
    h, w = grid
    if family.name == "emu3":
        from transformers.models.emu3.modeling_emu3 import Emu3ImageVocabularyMapping as Mapping

        size = tokenizer.encode(f"{h}*{w}", add_special_tokens=False)
        image_open = (vocab["<|image start|>"], *size, vocab["<|image token|>"])
        row_end, image_close = vocab["<|extra_200|>"], (vocab["<|extra_201|>"], vocab["<|image end|>"])
    else:
        from transformers.models.chameleon.modeling_chameleon import ChameleonImageVocabularyMapping as Mapping

        image_open, row_end, image_close = (vocab["<racm3:break>"],), None, (vocab["<eoss>"],)
    img2bpe = Mapping(vocab).img2bpe  # code -> id
    code_ids = np.array([img2bpe[code] for code in range(len(img2bpe))], dtype=np.int64)
    return TokenLayout(
        **ids, grid=(h, w), code_ids=code_ids, image_open=image_open, row_end=row_end, image_close=image_close
    )


class FamilyCodec:
    """Documents of text and images <-> ids in a public family's layout: text through the folder's own
    tokenizer, images through its VQ tokenizer (``HFVision``) written as ``layout`` says. The families
    write no videos or actions. ``vocab`` is what training reads of its ids (``FamilyVocab``).

        codec = FamilyCodec.load(checkpoint / "tokenizer" / HF_DIR)
        ids = codec.prompt([Text("describe this"), Image(pixels=frame)])   # <bos> text, image ids
    """

    def __init__(self, family: Family, tokenizer, vision: HFVision | None, layout: TokenLayout) -> None:
        self.family, self.tokenizer, self.vision, self.layout = family, tokenizer, vision, layout
        self.vocab = FamilyVocab.of_layout(layout)

    @classmethod
    def load(cls, hf_dir: str | Path, *, frame_size: int | None = None, device="cpu") -> FamilyCodec:
        transformers = transformers_module()
        tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
        family = family_named(transformers.AutoConfig.from_pretrained(hf_dir).model_type)
        if family.vision is None:
            return cls(family, tokenizer, None, family_layout(hf_dir))
        vision = HFVision.load(hf_dir, frame_size=frame_size, device=device)
        return cls(family, tokenizer, vision, family_layout(hf_dir, vision.grid))

    def encode(self, doc: Document) -> Encoded:
        """A whole document, for training: the family's begin id, each segment (text as the tokenizer splits
        it), its end id; the loss on every segment whose ``loss`` flag is set, and on the end id."""
        parts, loss = [np.array([self.layout.bos])], [False]
        for i, seg in enumerate(doc):
            if isinstance(seg, Text):
                parts.append(np.asarray(self.tokenizer.encode(seg.text, add_special_tokens=False), dtype=np.int64))
            elif isinstance(seg, Image):
                codes = seg.codes if seg.codes is not None else self._vision().encode(seg.pixels[None])[0]
                parts.append(self.layout.image_ids(np.asarray(codes)))
            else:
                raise ValueError(f"segment {i} is a {type(seg).__name__}; a public family writes text and images only")
            loss.append(seg.loss)
        parts.append(np.array([self.layout.eos]))
        loss.append(True)
        ids = np.concatenate(parts).astype(np.int64)
        mask = np.repeat(loss, [len(p) for p in parts])
        return Encoded(ids, mask, self.vocab.modality(ids))

    def prompt(self, doc: Document) -> np.ndarray:
        """(L,) the ids of ``doc`` without its end id: a prompt the model goes on from."""
        return self.encode(doc).ids[:-1]

    def decode(self, ids: np.ndarray) -> Document:
        """The text and images of ``ids`` (images as codes). Lenient, for model samples: an id in an image's
        rows that is no code reads as code 0, and an unfinished image ends the document."""
        ids = [int(i) for i in ids]
        layout = self.layout
        segments: Document = []
        text: list[int] = []
        i = 0
        while i < len(ids):
            if layout.image_open and ids[i : i + len(layout.image_open)] == list(layout.image_open):
                image = self._read_image(ids, i + len(layout.image_open))
                if text:
                    segments.append(Text(self.tokenizer.decode(text, skip_special_tokens=True)))
                    text = []
                if image is None:
                    return segments
                segments.append(Image(codes=image))
                i += len(layout.image_open) + layout.body_length + len(layout.image_close)
            else:
                text.append(ids[i])
                i += 1
        if text and (words := self.tokenizer.decode(text, skip_special_tokens=True)):
            segments.append(Text(words))
        return segments

    def _read_image(self, ids: list[int], start: int) -> np.ndarray | None:
        layout = self.layout
        h, w = layout.grid
        body = np.asarray(ids[start : start + layout.body_length]).reshape(-1, layout.row_length)[:, :w]
        if body.shape != (h, w):
            return None
        code_of = {int(id_): code for code, id_ in enumerate(layout.code_ids)}
        return np.vectorize(lambda id_: code_of.get(int(id_), 0))(body).astype(np.int64)

    def _vision(self) -> HFVision:
        if self.vision is None:
            raise ValueError(TEXT_ONLY.format(family=self.family.name))
        return self.vision
