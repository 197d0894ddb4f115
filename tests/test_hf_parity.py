"""The ringworld decoder against Hugging Face transformers, an independent implementation of the same
architecture: Llama without QK-norm, Qwen3 with it. Logits, gradients, explicit positions, packing."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers", reason="HF transformers is the independent reference (pip install transformers)")

from ringworld.model.hf import from_hf, hf_config, model_config, to_hf, weight_names  # noqa: E402
from ringworld.model.transformer import ModelConfig, Transformer  # noqa: E402
from ringworld.train.config import TrainConfig  # noqa: E402
from ringworld.train.optim import make_optimizer  # noqa: E402

TOL = 1e-5


def tiny(qk_norm: bool, tie: bool, **overrides) -> ModelConfig:
    shape = dict(vocab_size=300, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=64)
    return ModelConfig(**{**shape, "qk_norm": qk_norm, "tie_embeddings": tie, **overrides})


def pair(cfg: ModelConfig, seed: int = 0) -> tuple[Transformer, torch.nn.Module]:
    torch.manual_seed(seed)
    model = Transformer(cfg)
    with torch.no_grad():  # norm weights away from 1 so a swapped or dropped norm shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model, to_hf(model)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


ARCHS = pytest.mark.parametrize(
    "qk_norm,tie",
    [(False, False), (False, True), (True, False), (True, True)],
    ids=["llama", "llama-tied", "qwen3", "qwen3-tied"],
)


@ARCHS
def test_config_maps_both_ways(qk_norm: bool, tie: bool) -> None:
    cfg = tiny(qk_norm, tie, rope_theta=500_000.0)
    hf_cfg = hf_config(cfg)
    assert type(hf_cfg).__name__ == ("Qwen3Config" if qk_norm else "LlamaConfig")
    assert hf_cfg.rope_parameters == {"rope_type": "default", "rope_theta": 500_000.0}
    assert hf_cfg._attn_implementation == "sdpa"
    assert model_config(hf_cfg) == cfg


@ARCHS
@pytest.mark.parametrize("theta", [10_000.0, 500_000.0])
def test_logits_match(qk_norm: bool, tie: bool, theta: float) -> None:
    model, hf = pair(tiny(qk_norm, tie, rope_theta=theta))
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert ours.shape == theirs.shape == (2, 24, 300)
    assert max_diff(ours, theirs) < TOL


@ARCHS
def test_logits_match_with_explicit_positions(qk_norm: bool, tie: bool) -> None:
    model, hf = pair(tiny(qk_norm, tie, rope_theta=500_000.0))
    ids = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(2))
    pos = torch.cat([torch.arange(12), torch.arange(8)]).repeat(2, 1) + torch.tensor([[0], [30]])  # restart, offset
    with torch.no_grad():
        ours, theirs = model(ids, positions=pos), hf(ids, position_ids=pos).logits
    assert max_diff(ours, theirs) < TOL
    with torch.no_grad():  # the positions really are used
        assert max_diff(model(ids), theirs) > 1e-3


@ARCHS
def test_gradients_match(qk_norm: bool, tie: bool) -> None:
    model, hf = pair(tiny(qk_norm, tie))
    gen = torch.Generator().manual_seed(3)
    ids, targets = torch.randint(0, 300, (2, 16), generator=gen), torch.randint(0, 300, (2, 16), generator=gen)
    F.cross_entropy(model(ids).flatten(0, 1), targets.flatten()).backward()
    F.cross_entropy(hf(ids).logits.flatten(0, 1), targets.flatten()).backward()
    theirs = dict(hf.named_parameters())
    if tie:
        theirs["lm_head.weight"] = hf.lm_head.weight
    for ours, hf_name in weight_names(model.cfg).items():
        grad = model.get_parameter(ours).grad
        assert grad.abs().max() > 0, ours
        assert max_diff(grad, theirs[hf_name].grad) < TOL, ours


@ARCHS
def test_round_trip_is_exact(qk_norm: bool, tie: bool) -> None:
    model, hf = pair(tiny(qk_norm, tie, rope_theta=500_000.0))
    back = from_hf(hf)
    assert back.cfg == model.cfg
    assert back.training == model.training
    if tie:
        assert back.head.weight is back.embed.weight
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k


def test_to_hf_keeps_eval_mode() -> None:
    model = Transformer(tiny(True, False)).eval()
    assert not to_hf(model).training
    assert not from_hf(to_hf(model)).training


@pytest.mark.parametrize("qk_norm", [False, True], ids=["llama", "qwen3"])
def test_packed_row_matches_documents_run_apart(qk_norm: bool) -> None:
    model, hf = pair(tiny(qk_norm, False))
    gen = torch.Generator().manual_seed(4)
    docs = [torch.randint(0, 300, (1, n), generator=gen) for n in (13, 9)]
    ids = torch.cat(docs, dim=1)  # (1, 22): two documents in one row
    segment_ids = torch.cat([torch.full((1, d.size(1)), i) for i, d in enumerate(docs)], dim=1)
    positions = torch.cat([torch.arange(d.size(1)) for d in docs])[None]  # restart at each document
    with torch.no_grad():
        packed = model(ids, segment_ids=segment_ids, positions=positions)
        apart = torch.cat([hf(d).logits for d in docs], dim=1)
    assert max_diff(packed, apart) < TOL
    with torch.no_grad():  # without segments the second document would see the first
        assert max_diff(model(ids, positions=positions), apart) > 1e-3


def test_muon_takes_the_same_matrices_in_either_layout() -> None:
    """The throughput bench gives both frameworks one optimizer: Muon must find HF's block matrices."""
    ours, theirs = pair(tiny(qk_norm=False, tie=False))
    cfg = TrainConfig(out="", optimizer="muon")

    def muon_shapes(model: torch.nn.Module) -> list[tuple[int, ...]]:
        muon = make_optimizer(model, cfg, torch.device("cpu"))[1]
        return sorted(tuple(p.shape) for group in muon.param_groups for p in group["params"])

    assert muon_shapes(ours) == muon_shapes(theirs)
    assert len(muon_shapes(ours)) == 7 * ours.cfg.n_layers  # q, k, v, o, gate, up and down of each block
