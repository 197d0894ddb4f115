"""Tiny random models of the public families, built locally with transformers (nothing is downloaded):
the same classes and layouts as Emu3, Chameleon and Llama checkpoints, a few thousand weights each."""

import torch

# plain text ids 0..99 in every tiny vocabulary: pad, bos, eos, unk, then one id a printable character
TEXT_NAMES = ["<pad>", "<s>", "</s>", "<unk>", *map(chr, range(32, 127)), "<unused>"]
TEXT = len(TEXT_NAMES)
CODES = 64  # VQ codebook size
SHAPE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
IDS = dict(max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2)
# a VQ tokenizer of one downsampling (2 pixels a code each way); Emu3's middle attention is as wide as
# its last level (hidden_size 64 = base_channels x the last multiplier)
VQ = dict(
    embed_dim=4, latent_channels=4, base_channels=32, channel_multiplier=[1, 2], num_res_blocks=1, attn_resolutions=[]
)
FRAME = 32  # the tiny VQ tokenizers halve each side: 16 x 16 codes a frame


def _perturb_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Norm gains away from 1 and biases away from 0, so a norm that is dropped or misplaced shows."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and "vqmodel" not in name:
                low, high = (0.5, 1.5) if name.endswith("weight") else (-0.3, 0.3)
                p.copy_(torch.rand(p.shape, generator=gen) * (high - low) + low)
    return model.eval()


def emu3_vocabulary() -> dict[str, int]:
    names = list(TEXT_NAMES)
    names += ["<image>", "<|extra_200|>", "<|image start|>", "<|image end|>", "<|image token|>", "<|extra_201|>"]
    names += [f"<|visual token{i:06d}|>" for i in range(CODES)]
    return {name: i for i, name in enumerate(names)}


def chameleon_code_name(code: int) -> str:
    """Chameleon's name for VQ code ``code``: IMGIMG, its digits as the letters A..J, then Z."""
    return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(code)) + "Z"


def chameleon_vocabulary() -> dict[str, int]:
    names = [*TEXT_NAMES, "<image>", "<racm3:break>", "<eoss>"]
    names += [chameleon_code_name(i) for i in range(CODES)]
    return {name: i for i, name in enumerate(names)}


def emu3(*, tie: bool = False, seed: int = 0):
    import transformers

    vocab = emu3_vocabulary()
    vq = dict(**VQ, codebook_size=CODES, temporal_downsample_factor=2, hidden_size=64, num_attention_heads=1)
    text = dict(vocab_size=len(vocab), **SHAPE, **IDS, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    config = transformers.Emu3Config(vq_config=vq, text_config=text, vocabulary_map=vocab, tie_word_embeddings=tie)
    torch.manual_seed(seed)
    return _perturb_norms(transformers.Emu3ForConditionalGeneration(config))


def chameleon(*, swin_norm: bool = False, seed: int = 0):
    import transformers

    vocab = chameleon_vocabulary()
    vq = dict(**VQ, num_embeddings=CODES, resolution=FRAME)
    config = transformers.ChameleonConfig(
        vocab_size=len(vocab),
        **SHAPE,
        **IDS,
        swin_norm=swin_norm,
        vq_config=vq,
        vocabulary_map=vocab,
    )
    torch.manual_seed(seed)
    return _perturb_norms(transformers.ChameleonForConditionalGeneration(config))


def llama(*, theta: float = 10_000.0, seed: int = 0):
    """A Llama-layout model such as LWM-Text (whose long-context versions raise RoPE theta to 10^7 and more)."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=TEXT,
        **SHAPE,
        **IDS,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
    )
    torch.manual_seed(seed)
    return _perturb_norms(transformers.LlamaForCausalLM(config))


def processor(family: str):
    """The family's image processor, set for tiny frames (the real ones take 512 px and more)."""
    import transformers

    if family == "emu3":
        return transformers.Emu3ImageProcessor(min_pixels=FRAME * FRAME, max_pixels=4 * FRAME * FRAME, spatial_factor=2)
    size = {"height": FRAME, "width": FRAME}
    return transformers.ChameleonImageProcessorPil(size={"shortest_edge": FRAME}, crop_size=size)


def tokenizer(vocabulary: dict[str, int]):
    """A character-level fast tokenizer over a tiny vocabulary; its named tokens (<...>, IMGIMG...) are
    special, matched whole."""
    import transformers
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([name for name in vocabulary if len(name) > 1])
    if "<racm3:break>" in vocabulary:  # Chameleon's tokenizer begins every text with <s>; Emu3's processor adds it
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    named = {  # what the families' processors ask of their tokenizers
        "image_token": "<image>",
        "boi_token": "<|image start|>" if "<|image start|>" in vocabulary else "<racm3:break>",
        "eoi_token": "<|image end|>" if "<|image end|>" in vocabulary else "<eoss>",
        "image_wrapper_token": "<|image token|>",
        "eof_token": "<|extra_201|>",
    }
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={k: v for k, v in named.items() if v in vocabulary},
    )


def vocabulary_of(hf) -> dict[str, int]:
    return getattr(hf.config, "vocabulary_map", None) or {name: i for i, name in enumerate(TEXT_NAMES)}


def family_processor(family: str, tok):
    """The family's processor (text and images into the ids transformers' model takes), for tiny frames."""
    import transformers

    if family == "emu3":
        made = transformers.Emu3Processor(image_processor=processor(family), tokenizer=tok)
        made.downsample_ratio = 2  # the tiny VQ tokenizer's pixels per code (the real one's is 8)
        return made
    return transformers.ChameleonProcessor(image_processor=processor(family), tokenizer=tok, image_seq_length=256)


def save(hf, folder, *, chat_template: str | None = None):
    """An HF model folder as `save_pretrained` writes it, with its tokenizer (and its ``chat_template``, if
    given) and, for the families that read images, its image processor."""
    hf.save_pretrained(folder)
    tok = tokenizer(vocabulary_of(hf))
    tok.chat_template = chat_template
    tok.save_pretrained(folder)
    if hf.config.model_type in ("emu3", "chameleon"):
        processor(hf.config.model_type).save_pretrained(folder)
    return folder


def emu3_image_ids(codes: torch.Tensor) -> list[int]:
    """Emu3's layout of an image of VQ codes (h, w): start, the size as text, rows each ended by
    <|extra_200|>, then <|extra_201|> and the end (the size here is tiny-vocabulary text ids)."""
    vocab = emu3_vocabulary()
    h, w = codes.shape
    rows = [[vocab[f"<|visual token{int(c):06d}|>"] for c in row] + [vocab["<|extra_200|>"]] for row in codes]
    return [
        vocab["<|image start|>"],
        10 + h,
        20 + w,
        vocab["<|image token|>"],
        *sum(rows, []),
        vocab["<|extra_201|>"],
        vocab["<|image end|>"],
    ]


def chameleon_image_ids(codes: torch.Tensor) -> list[int]:
    """Chameleon's layout of an image: <racm3:break>, every code in raster order, <eoss>."""
    vocab = chameleon_vocabulary()
    return [vocab["<racm3:break>"], *(vocab[chameleon_code_name(int(c))] for c in codes.flatten()), vocab["<eoss>"]]
