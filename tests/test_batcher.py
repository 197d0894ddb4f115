"""Continuous batching against the engine one request at a time: the same tokens, whatever runs beside."""

import numpy as np
import pytest
import torch

from ringworld.documents import Text
from ringworld.infer.batcher import Batcher, Request
from ringworld.infer.engine import Engine
from ringworld.infer.sampling import Sampling
from ringworld.model.transformer import ModelConfig, Transformer
from ringworld.tokens.bundle import load_codec


@pytest.fixture(scope="module")
def codec(world_tokenizer_dir):
    return load_codec(world_tokenizer_dir)


@pytest.fixture(scope="module")
def engine(codec):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=codec.vocab.size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128)
    model = Transformer(cfg)
    with torch.no_grad():  # sharper logits than at init: fewer near-ties for float rounding to flip
        model.head.weight.mul_(8)
    return Engine(model, codec)


def _requests(codec) -> list[Request]:
    v = codec.vocab
    bos, image, video = v.special("<|bos|>"), v.special("<|image|>"), v.special("<|video|>")
    caption = [*codec.encode([Text("a red circle in the top left")]).ids[:-1]]
    other = [*codec.encode([Text("we see a green triangle near the center moving up")]).ids[:-1]]
    stay = v.action_id("stay")
    return [
        Request(caption, max_new_tokens=12, stop=()),  # greedy text
        Request([*caption, image], max_new_tokens=40, sampling=Sampling(temperature=1.0, seed=3)),
        Request([*other, image], max_new_tokens=30, guidance=3.0, uncond_prompt=[bos, image]),  # guided
        Request(other, max_new_tokens=9, sampling=Sampling(temperature=0.8, top_k=20, seed=7), stop=()),
        Request([*caption, video], max_new_tokens=60, video_frames=2, video_actions=[stay]),
        Request([bos], max_new_tokens=5, constrained=False, stop=()),
    ]


def _alone(engine: Engine, r: Request) -> np.ndarray:
    return engine.generate(
        [r.prompt],
        max_new_tokens=r.max_new_tokens,
        sampling=r.sampling,
        stop=r.stop,
        guidance=r.guidance,
        uncond_prompts=None if r.uncond_prompt is None else [r.uncond_prompt],
        constrained=r.constrained,
        video_frames=r.video_frames,
        video_actions=[list(r.video_actions)],
    ).tokens[0]


def test_requests_decoded_together_give_what_each_gives_alone(engine, codec):
    requests = _requests(codec)
    together = Batcher(engine, rows=8, length=256).run(requests)
    for r, tokens in zip(requests, together, strict=True):
        np.testing.assert_array_equal(tokens, _alone(engine, r))


@pytest.mark.parametrize("overlap_prefill", [False, True])
def test_requests_join_and_leave_a_running_batch(engine, codec, overlap_prefill):
    """Too few rows for all at once: later requests wait, then take the rows of finished ones (their
    prompts prefilled on a thread of their own with ``overlap_prefill``); no free row is left below
    the highest one decoding."""
    requests = _requests(codec)
    batcher = Batcher(engine, rows=3, length=256, overlap_prefill=overlap_prefill)
    rids = [batcher.submit(r) for r in requests[:2]]
    made: dict[int, list[int]] = {}
    steps = 0
    while batcher.busy:
        if steps == 4:  # these join mid-run
            rids += [batcher.submit(r) for r in requests[2:]]
        for event in batcher.step():
            made.setdefault(event.request, []).append(event.token)
        rows = [row for run in batcher.running.values() for row in run.rows]
        assert len(rows) <= 3 and not [row for row in batcher.free if rows and row < max(rows)]
        steps += 1
    for rid, r in zip(rids, requests, strict=True):
        np.testing.assert_array_equal(made[rid], _alone(engine, r))
    assert sorted(batcher.free) == [0, 1, 2]


def test_cancel_frees_rows_and_bad_requests_are_refused(engine, codec):
    batcher = Batcher(engine, rows=2, length=64)
    r = _requests(codec)[0]
    rid = batcher.submit(r)
    batcher.step()
    batcher.cancel(rid)
    assert not batcher.busy and sorted(batcher.free) == [0, 1]
    with pytest.raises(ValueError, match="exceeds the 64-token context"):
        batcher.submit(Request(r.prompt, max_new_tokens=60))
    with pytest.raises(ValueError, match="empty"):
        batcher.submit(Request([], max_new_tokens=3))


def test_rows_freed_below_move_the_highest_request_down(engine, codec):
    """A request in a high row moves into a lower free one and decodes on as if it had not."""
    prompts = [r.prompt for r in _requests(codec)[:3]]
    requests = [Request(p, max_new_tokens=n, stop=()) for p, n in zip(prompts, (2, 3, 12), strict=True)]
    batcher = Batcher(engine, rows=4, length=256)
    made = batcher.run(requests)
    assert [len(m) for m in made] == [2, 3, 12] and sorted(batcher.free) == [0, 1, 2, 3]
    np.testing.assert_array_equal(made[2], _alone(engine, requests[2]))
    rid = [batcher.submit(r) for r in requests][2]
    while len(batcher.running) != 1:
        batcher.step()
    assert batcher.running[rid].rows == [0]  # it started in row 2


def test_a_request_cancelled_while_its_prompt_is_prefilled_frees_its_rows(engine, codec):
    import threading

    first, second = _requests(codec)[:2]
    batcher = Batcher(engine, rows=3, length=256, overlap_prefill=True)
    gate, prefill = threading.Event(), batcher._prefill
    batcher._prefill = lambda admitted: gate.wait() and prefill(admitted)
    a = batcher.submit(first)
    gate.set()
    batcher.step()  # nothing runs yet: it waits for the first prompt
    gate.clear()
    b = batcher.submit(second)
    batcher.step()  # the second prompt is on its way; the first one decodes on
    assert b not in batcher.running and batcher.prefilling
    batcher.cancel(b)
    gate.set()
    made = {a: [], b: []}
    while batcher.busy:
        for event in batcher.step():
            made[event.request].append(event.token)
    assert not made[b] and len(made[a]) == first.max_new_tokens - 2
    assert sorted(batcher.free) == [0, 1, 2] and not batcher.cancelled


@pytest.mark.slow
def test_compiled_decoding_gives_the_eager_tokens(engine, codec):
    """The compiled step (``ringworld.infer.compiled``), in the engine alone and in the batcher after
    ``warm_up``, decodes what the eager one does."""
    compiled = Engine(engine.model, codec, compile=True)
    requests = _requests(codec)
    batcher = Batcher(compiled, rows=16, length=256)
    batcher.warm_up()
    together = batcher.run(requests)
    for r, tokens in zip(requests, together, strict=True):
        eager = _alone(engine, r)
        np.testing.assert_array_equal(tokens, eager)
        np.testing.assert_array_equal(_alone(compiled, r), eager)


def test_compiled_decode_step_reads_the_weights_in_its_own_reductions(engine):
    """At a few rows on CPU the compiled step calls no BLAS product, even when a plain compile of
    the same step has filled the compile caches first (they must not hand its graph back)."""
    from torch.profiler import ProfilerActivity, profile

    from ringworld.infer.compiled import decode_compile
    from ringworld.model.transformer import KVCache

    model = engine.model
    cache = KVCache.allocate(model.cfg, 1, 32, device="cpu", dtype=torch.float32)
    slot, pad = torch.arange(32), torch.zeros(1, dtype=torch.long)
    args = (torch.tensor([5]), slot[3:4], slot, torch.ones(1, 32, dtype=torch.bool), pad, cache)

    def products(step) -> int:
        with torch.inference_mode():
            step(*args)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step(*args)
        return sum(e.count for e in prof.key_averages() if e.key in ("aten::mm", "aten::bmm", "aten::addmm"))

    assert products(torch.compile(engine._decode_step)) > 0  # the plain compile multiplies with the BLAS
    torch._dynamo.reset()
    assert products(decode_compile(engine._decode_step)) == 0
