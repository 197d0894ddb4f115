import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ringworld.data.packing import IGNORE, PAD_SEGMENT, pack, split_long
from ringworld.data.shards import ShardDataset, ShardWriter
from ringworld.data.sources import ShardSource, WorldSource, drop_caption
from ringworld.documents import Image, Text
from ringworld.model import attention as attention_module
from ringworld.model.transformer import ModelConfig, Transformer
from ringworld.tokens.bundle import load_codec
from ringworld.tokens.codec import Encoded
from ringworld.tokens.vocab import Vocab
from ringworld.train.loss import LossWeights, balanced_loss, check_has_targets, modality_counts, modality_sums
from ringworld.world.tasks import DEFAULT_WEIGHTS

VOCAB = 97
PAD = 0


def random_docs(rng: np.random.Generator, lengths: list[int]) -> list[Encoded]:
    docs = []
    for n in lengths:
        ids = rng.integers(1, VOCAB, size=n)
        loss = rng.random(n) < 0.7
        modality = (rng.random(n) < 0.5).astype(np.uint8)
        docs.append(Encoded(ids, loss, modality))
    return docs


def test_rows_restart_positions_and_never_predict_across_documents():
    docs = random_docs(np.random.default_rng(0), [5, 3, 7, 4])
    batch = pack(docs, seq_len=10, pad_id=PAD)
    assert batch.shape == (3, 10)  # first fit: [5, 3] [7] [4]; [5, 3, 2 pad] has no room for 4
    seen = {}
    for r in range(3):
        for t in range(10):
            s = int(batch.segment_ids[r, t])
            if s == PAD_SEGMENT:
                assert batch.ids[r, t] == PAD and batch.weights[r, t] == 0 and batch.targets[r, t] == IGNORE
                continue
            seen.setdefault((r, s), []).append(t)
    rebuilt = sorted(tuple(batch.ids[r, ts].tolist()) for (r, _), ts in seen.items())
    assert rebuilt == sorted(tuple(d.ids.tolist()) for d in docs)
    for (r, _), ts in seen.items():
        assert batch.positions[r, ts].tolist() == list(range(len(ts)))
        last = ts[-1]
        assert batch.targets[r, last] == IGNORE and batch.weights[r, last] == 0
        assert batch.targets[r, ts[:-1]].tolist() == batch.ids[r, ts[1:]].tolist()


def test_weights_and_modality_belong_to_the_target_token():
    doc = random_docs(np.random.default_rng(1), [9])[0]
    batch = pack([doc], seq_len=12, pad_id=PAD)
    assert batch.weights[0, :8].tolist() == doc.loss_mask[1:].astype(np.float32).tolist()
    assert batch.modality[0, :8].tolist() == doc.modality[1:].tolist()


def test_long_documents_split_so_every_target_is_predicted_once():
    doc = random_docs(np.random.default_rng(2), [23])[0]
    pieces = split_long(doc, 8)
    assert all(len(p) <= 8 for p in pieces)
    predicted = []  # (input id, target id) pairs of all pieces
    for p in pieces:
        predicted += list(zip(p.ids[:-1].tolist(), p.ids[1:].tolist(), strict=True))
    assert predicted == list(zip(doc.ids[:-1].tolist(), doc.ids[1:].tolist(), strict=True))


def one_by_one_loss(model, docs, weights):
    """The reference: each document through plain causal attention on its own, losses balanced
    over all of them."""
    sums = torch.zeros(2)
    counts = torch.zeros(2, dtype=torch.float64)
    for d in docs:
        ids = torch.from_numpy(d.ids)[None]
        logits = model(ids)[0, :-1]
        ce = F.cross_entropy(logits, torch.from_numpy(d.ids[1:]), reduction="none")
        w = torch.from_numpy(d.loss_mask[1:]).float()
        m = torch.from_numpy(d.modality[1:]).long()
        sums = sums.index_add(0, m, ce * w)
        counts = counts.index_add(0, m, w.double())
    return balanced_loss(sums, counts, weights)


@pytest.mark.parametrize("kernel", ["mask", "documents"])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_packed_loss_and_gradients_equal_documents_one_by_one(qk_norm, kernel, monkeypatch):
    monkeypatch.setattr(attention_module, "DOCUMENTS_MIN_LEN_CPU", 0 if kernel == "documents" else 10**9)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, qk_norm=qk_norm)
    model = Transformer(cfg)
    docs = random_docs(np.random.default_rng(3), [17, 5, 30, 9, 12, 2, 21, 14])
    weights = LossWeights(text=0.3, vision=0.7)
    batch = pack(docs, seq_len=40, pad_id=PAD)
    assert batch.shape[0] >= 3 and (batch.segment_ids[0].unique() >= 0).sum() >= 2  # really packed

    assert_packed_is_one_by_one(model, docs, batch, weights)


def assert_packed_is_one_by_one(model, docs, batch, weights) -> None:
    """The balanced loss of the packed ``batch`` of ``docs``, and its gradients, equal the documents' run
    one by one (1e-5, fp32)."""
    logits = model(batch.ids, segment_ids=batch.segment_ids, positions=batch.positions)
    packed = balanced_loss(modality_sums(logits, batch), modality_counts(batch), weights)
    packed.backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    reference = one_by_one_loss(model, docs, weights)
    reference.backward()
    assert abs(packed.item() - reference.item()) <= 1e-5
    for name, p in model.named_parameters():
        torch.testing.assert_close(packed_grads[name], p.grad, atol=1e-5, rtol=0, msg=name)


def test_balanced_loss_renormalises_over_present_modalities():
    sums = torch.tensor([6.0, 0.0])
    counts = torch.tensor([3.0, 0.0], dtype=torch.float64)
    assert balanced_loss(sums, counts, LossWeights()).item() == pytest.approx(2.0)
    both = balanced_loss(
        torch.tensor([6.0, 10.0]), torch.tensor([3.0, 5.0], dtype=torch.float64), LossWeights(0.25, 0.75)
    )
    assert both.item() == pytest.approx(0.25 * 2 + 0.75 * 2)
    check_has_targets(counts, LossWeights())
    with pytest.raises(ValueError, match="loss masks"):
        check_has_targets(torch.zeros(2, dtype=torch.float64), LossWeights())
    with pytest.raises(ValueError, match="loss masks"):  # only vision targets, but vision weighs nothing
        check_has_targets(torch.tensor([0.0, 5.0], dtype=torch.float64), LossWeights(text=1.0, vision=0.0))


def attention_and_grads(kernel, q, k, v, seg):
    out = attention_module.attention(q, k, v, attention_module.document_mask(seg, kernel=kernel))
    return (out, *torch.autograd.grad(out.pow(2).sum(), (q, k, v)))


def random_qkv_and_segments(T: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(T)
    B, H, D = 3, 4, 16
    q, k, v = (torch.randn(B, h, T, D, generator=g, dtype=dtype, requires_grad=True) for h in (H, 2, 2))
    seg = torch.sort(torch.randint(0, 6, (B, T), generator=g), dim=1).values
    seg[0, T - T // 5 :] = PAD_SEGMENT  # a padded row
    seg[2] = 0  # a row that is one document
    return q, k, v, seg


@pytest.mark.parametrize("T", [50, 300])
def test_documents_kernel_equals_the_boolean_mask_with_gradients(T):
    q, k, v, seg = random_qkv_and_segments(T)
    documents, mask = attention_and_grads("documents", q, k, v, seg), attention_and_grads("mask", q, k, v, seg)
    for got, expected in zip(documents, mask, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_rows_of_one_document_take_plain_causal_attention():
    assert attention_module.document_mask(torch.zeros(2, 8, dtype=torch.long)) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention's backward runs on accelerators only")
def test_flex_kernel_matches_the_boolean_mask_with_gradients_on_cuda():
    q, k, v, seg = random_qkv_and_segments(256, torch.float32)
    q, k, v = (t.detach().cuda().requires_grad_() for t in (q, k, v))
    flex, mask = attention_and_grads("flex", q, k, v, seg.cuda()), attention_and_grads("mask", q, k, v, seg.cuda())
    for got, expected in zip(flex, mask, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_flex_kernel_matches_the_boolean_mask():
    """The compiled FlexAttention path (chosen on accelerators) gives what SDPA with a boolean mask
    gives; checked here on the CPU, forward only (compiles once: ~10 s on 2 cores)."""
    q, k, v, seg = random_qkv_and_segments(256, dtype=torch.float32)
    q, k, v = q.detach(), k.detach(), v.detach()
    with torch.no_grad():
        expected = attention_module.attention(q, k, v, attention_module.document_mask(seg, kernel="mask"))
        flex = attention_module.document_mask(seg, kernel="flex")
        torch.testing.assert_close(attention_module.attention(q, k, v, flex), expected, atol=1e-5, rtol=1e-5)


# world source ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def codec(world_tokenizer_dir):
    return load_codec(world_tokenizer_dir)


def test_world_batches_are_a_function_of_seed_step_and_row(codec):
    source = WorldSource(codec, seq_len=512, rows=4, seed=7)
    whole = source.batch(3)
    assert whole.shape == (4, 512)
    part = source.batch(3, slice(2, 4))
    torch.testing.assert_close(part.ids, whole.ids[2:4])
    assert not torch.equal(source.batch(4).ids, whole.ids)
    fill = whole.num_real_tokens() / whole.ids.numel()
    assert fill > 0.8, f"rows are only {fill:.0%} full"
    again = WorldSource(codec, seq_len=512, rows=4, seed=7)
    again.load_state_dict({"kind": "world", "step": 3, "seed": 7})
    assert torch.equal(again.next_batch().ids, whole.ids)
    with pytest.raises(ValueError, match="seed"):
        again.load_state_dict({"kind": "world", "step": 3, "seed": 8})


def test_world_task_weights_move_with_the_state_and_past_a_batch_made_ahead(codec):
    from ringworld.train.loop import _Prefetcher

    only_qa = {"qa": 1.0}
    source = WorldSource(codec, seq_len=256, rows=2, seed=3)
    assert source.mixture() == DEFAULT_WEIGHTS
    with _Prefetcher(source, slice(None), background=True) as batches:  # as on an accelerator
        batches.next()  # step 0 handed out; step 1 made ahead with the default mixture
        batches.set_task_weights(only_qa)
        got = batches.next()
        state = json.loads(json.dumps(batches.state))
    fresh = WorldSource(codec, seq_len=256, rows=2, seed=3, task_weights=only_qa)
    fresh.step = 1
    assert torch.equal(got.ids, fresh.next_batch().ids)  # the batch made ahead was made again
    assert state == {"kind": "world", "step": 2, "seed": 3, "task_weights": only_qa}
    resumed = WorldSource(codec, seq_len=256, rows=2, seed=3)
    resumed.load_state_dict(state)
    assert resumed.mixture() == only_qa and torch.equal(resumed.next_batch().ids, fresh.next_batch().ids)
    resumed.load_state_dict({"kind": "world", "step": 0, "seed": 3})  # a checkpoint from before: weights stay
    assert resumed.mixture() == only_qa


def test_caption_dropout_leaves_the_unconditional_image(codec):
    from ringworld.world.tasks import sample_task

    rng = np.random.default_rng(0)
    for task in ("text_to_image", "text_to_video"):
        doc = codec.encode(sample_task(task, rng).document)
        dropped = drop_caption(doc, codec.vocab)
        opener = codec.vocab.special("<|image|>" if task == "text_to_image" else "<|video|>")
        assert dropped.ids[0] == codec.vocab.special("<|bos|>") and dropped.ids[1] == opener
        assert np.array_equal(dropped.ids[2:], doc.ids[doc.ids.tolist().index(opener) + 1 :])
    for task in ("image_to_text", "qa", "predict"):
        doc = codec.encode(sample_task(task, rng).document)
        assert drop_caption(doc, codec.vocab) is doc
    ingested = codec.encode([Text("a red circle"), Image(codes=np.zeros(codec.grid, dtype=np.int64))])  # loss on all
    dropped = drop_caption(ingested, codec.vocab)
    assert dropped.ids[1] == codec.vocab.special("<|image|>") and len(dropped) < len(ingested)


# shard source ------------------------------------------------------------------------------
def write_shards(directory, lengths, vocab):
    """Documents whose ids are all distinct, so each (input, target) pair names one place."""
    rng = np.random.default_rng(5)
    ids = rng.permutation(vocab.text_size)[: sum(lengths)]
    docs, at = [], 0
    with ShardWriter(directory, vocab) as writer:
        for n in lengths:
            doc_ids = ids[at : at + n]
            at += n
            docs.append(Encoded(doc_ids, rng.random(n) < 0.8, vocab.modality(doc_ids)))
            writer.add(docs[-1], f"doc{len(docs)}")
    return docs


def test_shard_source_packs_every_target_once_per_epoch_and_resumes_exactly(tmp_path):
    vocab = Vocab(text_size=1000, num_codes=16)
    lengths = [30, 70, 5, 140, 64, 12, 33, 90, 8, 61]  # 70, 90 and 140 > 64: split into overlapping pieces
    docs = write_shards(tmp_path, lengths, vocab)
    expected = {(int(a), int(b)) for d in docs for a, b in zip(d.ids[:-1], d.ids[1:], strict=True)}
    source = ShardSource(ShardDataset(tmp_path), seq_len=64, rows=3, seed=1, lookahead=4)
    seen, real, total = [], 0, 0
    for _ in range(50):  # an epoch takes a handful of batches; a bug must fail, not hang
        if expected <= set(seen):
            break
        batch = source.next_batch()
        has_target = batch.targets != IGNORE
        seen += list(zip(batch.ids[has_target].tolist(), batch.targets[has_target].tolist(), strict=True))
        real, total = real + batch.num_real_tokens(), total + batch.ids.numel()
    assert expected <= set(seen), "some targets never came out"
    first_epoch = seen[: len(expected)]
    assert set(first_epoch) == expected  # each target exactly once before any repeats
    assert real / total > 0.8, f"rows are only {real / total:.0%} full"

    source = ShardSource(ShardDataset(tmp_path), seq_len=64, rows=3, seed=1, lookahead=4)
    source.next_batch()
    state = json.loads(json.dumps(source.state_dict()))  # survives a JSON round trip
    expected_next = [source.next_batch() for _ in range(3)]
    resumed = ShardSource(ShardDataset(tmp_path), seq_len=64, rows=3, seed=1, lookahead=4)
    resumed.load_state_dict(state)
    for want in expected_next:
        got = resumed.next_batch(slice(1, 3))
        assert torch.equal(got.ids, want.ids[1:3]) and torch.equal(got.weights, want.weights[1:3])


def test_caption_dropout_rate(codec):
    bos, image, video = (codec.vocab.special(t) for t in ("<|bos|>", "<|image|>", "<|video|>"))
    weights = {"text_to_image": 1.0, "text_to_video": 1.0}

    def dropped_share(p: float) -> float:
        source = WorldSource(codec, seq_len=1024, rows=8, seed=3, task_weights=weights, caption_dropout=p)
        docs = [d for r in range(8) for d in source.row_documents(0, r)]
        return sum(int(d.ids[1]) in (image, video) and d.ids[0] == bos for d in docs) / len(docs)

    assert dropped_share(0.0) == 0.0
    assert 0.25 < dropped_share(0.4) < 0.55  # about 50 documents drawn
