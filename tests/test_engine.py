"""The inference engine against full forward passes: cache, greedy decoding, guidance, constraints."""

import numpy as np
import pytest
import torch

from ringworld.documents import Image, Text, Video
from ringworld.infer.engine import Engine
from ringworld.infer.sampling import GREEDY, Sampling, draw, guide, sample, sample_rows
from ringworld.model.transformer import ModelConfig, Transformer
from ringworld.tokens.bundle import load_codec
from ringworld.tokens.parse import MalformedTokens


@pytest.fixture(scope="module")
def codec(world_tokenizer_dir):
    return load_codec(world_tokenizer_dir)


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "qk_norm"])
def engine(codec, request):
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=codec.vocab.size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, qk_norm=request.param
    )
    return Engine(Transformer(cfg), codec)


def prompts(codec, n: int = 3) -> list[np.ndarray]:
    """Prompts of different lengths, so rows are left-padded."""
    texts = ["a red circle in the top left", "a blue square", "we see a green triangle near the center moving up"]
    return [codec.encode([Text(texts[i % 3])]).ids[:-1] for i in range(n)]


def full_logits(model: Transformer, ids: np.ndarray) -> torch.Tensor:
    """(T, V) logits of one sequence by a plain forward pass, no cache."""
    with torch.no_grad():
        return model(torch.as_tensor(ids)[None])[0].float()


def test_cached_decoding_gives_the_logits_of_a_full_forward(engine, codec):
    rows = prompts(codec)
    gen = engine.generate(rows, max_new_tokens=12, sampling=Sampling(seed=3), constrained=False, return_logits=True)
    for r, (prompt, new) in enumerate(zip(rows, gen.tokens, strict=True)):
        whole = np.r_[prompt, new]
        reference = full_logits(engine.model, whole)[len(prompt) - 1 : len(whole) - 1]  # predicts each new token
        torch.testing.assert_close(gen.logits[r, : len(new)], reference, atol=1e-5, rtol=1e-5)


def test_greedy_equals_step_by_step_argmax_of_full_forwards(engine, codec):
    rows = prompts(codec)
    gen = engine.generate(rows, max_new_tokens=10, sampling=GREEDY, constrained=False, stop=[])
    for prompt, new in zip(rows, gen.tokens, strict=True):
        ids = list(prompt)
        for _ in range(10):
            ids.append(int(full_logits(engine.model, np.array(ids))[-1].argmax()))
        assert new.tolist() == ids[len(prompt) :]


def test_constrained_images_always_decode(engine, codec):
    opener = codec.vocab.special("<|image|>")
    rows = [np.r_[p, opener] for p in prompts(codec, 4)]
    h, w = codec.grid
    close, eos = codec.vocab.special("<|/image|>"), codec.vocab.special("<|eos|>")
    # hot sampling: a random model left alone writes anything
    gen = engine.generate(
        rows, max_new_tokens=h * (w + 1) + 1, sampling=Sampling(temperature=1.5, seed=1), stop=[close]
    )
    for prompt, new in zip(rows, gen.tokens, strict=True):
        assert new[-1] == close
        segments = codec.decode(np.r_[prompt, new, eos]).segments  # strict: raises on any fault
        assert isinstance(segments[-1], Image) and segments[-1].codes.shape == (h, w)


def test_constrained_videos_take_their_length_and_forced_actions(engine, codec):
    vocab = codec.vocab
    frame = np.zeros((1, *codec.grid), dtype=np.int64)
    start = codec.encode([Video(codes=frame)]).ids[:-2]  # <|bos|> <|video|> frame <|eof|>
    plays = [["right", "up", "stay"], ["left", "left", "down"]]
    h, w = codec.grid
    gen = engine.generate(
        [start, start],
        max_new_tokens=3 * (codec.longest_frame + 2) + 1,  # three frames at their longest, each with an action
        sampling=Sampling(temperature=1.5, seed=2),
        video_frames=4,
        video_actions=[[vocab.action_id(a) for a in p] for p in plays],
        stop=[vocab.special("<|/video|>")],
    )
    for new, played in zip(gen.tokens, plays, strict=True):
        video = codec.decode(np.r_[start, new, vocab.special("<|eos|>")]).segments[0]
        assert isinstance(video, Video) and video.codes.shape == (4, h, w)
        assert video.actions == played


def test_rows_asked_to_say_a_note_say_one_before_each_frame(engine, codec):
    vocab = codec.vocab
    start = codec.encode([Video(codes=np.zeros((2, *codec.grid), dtype=np.int64))]).ids[:-2]
    gen = engine.generate(
        [start, start],
        max_new_tokens=3 * (codec.longest_frame + 40),
        sampling=Sampling(temperature=1.0, seed=4),
        video_frames=5,
        video_notes=[True, False],
        stop=[vocab.special("<|/video|>")],
    )
    # random bytes may be bad UTF-8 (lenient reading replaces them); the layout is whole
    decoded = [codec.decode(np.r_[start, new, vocab.special("<|eos|>")], lenient=True) for new in gen.tokens]
    assert all("UTF-8" in p for d in decoded for p in d.problems)
    said, free = (d.segments[0] for d in decoded)
    assert said.num_frames == free.num_frames == 5
    assert said.notes[0] == "" and all(said.notes[1:])  # the prompt's gap is given; every drawn frame has one
    assert free.notes is None  # rows not asked say nothing


def test_an_open_video_ends_when_the_model_closes_it_and_still_decodes(engine, codec):
    rows = [np.r_[p, codec.vocab.special("<|video|>")] for p in prompts(codec, 2)]
    h, w = codec.grid
    gen = engine.generate(rows, max_new_tokens=3 * (h * (w + 1) + 1), sampling=Sampling(temperature=1.0, seed=5))
    for prompt, new in zip(rows, gen.tokens, strict=True):
        decoded = codec.decode(np.r_[prompt, new], lenient=True)
        assert isinstance(decoded.segments[-1], Video)
        # only the end may be missing (the token budget ran out): no repair inside any frame
        assert all("unclosed" in p or "missing <|eos|>" in p for p in decoded.problems), decoded.problems


def test_unconstrained_sampling_can_break_the_layout(engine, codec):
    """The grammar is what keeps spans whole: without it a random model writes malformed images."""
    rows = [np.r_[p, codec.vocab.special("<|image|>")] for p in prompts(codec, 4)]
    gen = engine.generate(rows, max_new_tokens=40, sampling=Sampling(temperature=1.5, seed=1), constrained=False)
    with pytest.raises(MalformedTokens):
        for prompt, new in zip(rows, gen.tokens, strict=True):
            codec.decode(np.r_[prompt, new])


def test_guidance_mixes_the_conditional_and_unconditional_logits(engine, codec):
    vocab = codec.vocab
    opener = vocab.special("<|image|>")
    cond = [np.r_[p, opener] for p in prompts(codec, 2)]
    uncond = [np.array([vocab.special("<|bos|>"), opener])] * 2
    scale = 2.5
    gen = engine.generate(
        cond, uncond_prompts=uncond, guidance=scale, max_new_tokens=6, constrained=False, return_logits=True
    )
    for r, new in enumerate(gen.tokens):
        c = full_logits(engine.model, np.r_[cond[r], new])[len(cond[r]) - 1 : -1]
        u = full_logits(engine.model, np.r_[uncond[r], new])[len(uncond[r]) - 1 : -1]
        torch.testing.assert_close(gen.logits[r, : len(new)], u + scale * (c - u), atol=1e-4, rtol=1e-5)


def test_guide_arithmetic_and_masks():
    cond = torch.tensor([[2.0, 0.0, float("-inf")]])
    uncond = torch.tensor([[1.0, 1.0, float("-inf")]])
    assert guide(cond, uncond, 1.0).tolist() == [[2.0, 0.0, float("-inf")]]
    assert guide(cond, uncond, 3.0).tolist() == [[4.0, -2.0, float("-inf")]]
    assert guide(cond, uncond, 0.0).tolist() == [[1.0, 1.0, float("-inf")]]


def test_sampling_respects_top_k_top_p_and_seed():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    top2 = sample(logits, Sampling(top_k=2), g)
    assert set(top2.tolist()) == {0, 1}
    nucleus = sample(logits, Sampling(top_p=0.8), g)  # 0.5 + 0.3 reach 0.8: ids 0 and 1 only
    assert set(nucleus.tolist()) == {0, 1}
    freq = torch.bincount(sample(logits, Sampling(), g), minlength=4) / 4000
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03, rtol=0)
    again = [sample(logits[:8], Sampling(), torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(*again)
    assert sample(logits[:3], GREEDY).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="top_p"):
        Sampling(top_p=0)


def test_rows_sampled_together_draw_what_each_draws_alone():
    """``sample_rows`` (the batcher's pick) gives every row the id ``sample`` gives it alone, with
    its own settings and generator; an id of probability 0 is never drawn."""
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(12, 50, generator=gen)
    logits[:, :10] = float("-inf")  # masked, as the grammar masks
    settings = [Sampling(temperature=1.0), Sampling(temperature=0.7, top_p=0.9), Sampling(temperature=1.3, top_k=5)]
    samplings = [settings[i % 3] for i in range(12)]
    together = [torch.Generator().manual_seed(i) for i in range(12)]
    alone = [torch.Generator().manual_seed(i) for i in range(12)]
    for _ in range(30):
        ids = sample_rows(logits, samplings, together)
        assert torch.equal(ids, torch.cat([sample(logits[i : i + 1], samplings[i], alone[i]) for i in range(12)]))
        assert (ids >= 10).all()
    zero_first = torch.log(torch.tensor([[0.0, 0.0, 1.0, 0.0]]))  # a uniform draw of 0 still picks id 2
    assert sample(zero_first.repeat(100, 1), Sampling(), gen).tolist() == [2] * 100
    # u * total rounded up to the total: the last id with mass, not the masked one after it
    assert draw(torch.tensor([[0.3, 0.7, 0.0]]), torch.tensor([1.0])).tolist() == [1]


def test_same_seed_same_samples_and_bad_prompts_are_refused(engine, codec):
    rows = prompts(codec, 2)
    a, b = (engine.generate(rows, max_new_tokens=8, sampling=Sampling(seed=11)) for _ in range(2))
    assert all(np.array_equal(x, y) for x, y in zip(a.tokens, b.tokens, strict=True))
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[]], max_new_tokens=2)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.generate([[10**6]], max_new_tokens=2)
    with pytest.raises(ValueError, match="context"):
        engine.generate(rows, max_new_tokens=engine.model.cfg.max_seq_len)


def test_a_video_cut_short_goes_on_with_its_last_frame(codec):
    """A video the context cut short decodes to the frames asked for: the missing ones unchanged."""
    from types import SimpleNamespace

    from ringworld.infer.tasks import decoded_media

    frames = np.stack([np.zeros(codec.grid, np.int64), np.ones(codec.grid, np.int64)])
    ids = codec.encode([Video(codes=frames)]).ids[:-2]  # open after frame 1's <|eof|>: two of four frames
    pixels = decoded_media(SimpleNamespace(codec=codec), ids, Video, frames=4)
    assert pixels.shape[0] == 4 and (pixels[2] == pixels[1]).all() and (pixels[3] == pixels[1]).all()
    assert not (pixels[0] == pixels[1]).all()
