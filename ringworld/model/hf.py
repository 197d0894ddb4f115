"""Interop with Hugging Face transformers: the ringworld decoder as a Llama (or, with QK-norm, a Qwen3) model.

What it is for: the architecture parity tests (ringworld's logits and gradients against an independent
implementation), the benchmarks that compare ringworld with transformers, and loading or saving
checkpoints in HF format: ``to_hf(model).save_pretrained(path)``,
``from_hf(AutoModelForCausalLM.from_pretrained(path))``.

Without QK-norm the decoder is exactly ``LlamaForCausalLM``; with it, exactly ``Qwen3ForCausalLM``
(RMSNorm over each head's q and k, before RoPE). Only the weight names differ.

transformers is an optional dependency, imported only when these functions are called.

    hf = to_hf(model)            # same weights, same logits: hf(ids).logits == model(ids)
    model = from_hf(hf)          # and back, state_dict for state_dict
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

import torch

from ringworld.model.transformer import ModelConfig, Transformer

if TYPE_CHECKING:
    from transformers import PreTrainedConfig, PreTrainedModel


def _transformers() -> ModuleType:
    try:
        import transformers
    except ImportError as e:
        raise ImportError("ringworld.model.hf needs Hugging Face transformers: pip install transformers") from e
    return transformers


CONFIG_NAMES = {  # ringworld ModelConfig field -> HF config field, the same value on both sides
    "vocab_size": "vocab_size",
    "dim": "hidden_size",
    "ffn_dim": "intermediate_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "n_kv_heads": "num_key_value_heads",
    "max_seq_len": "max_position_embeddings",
    "norm_eps": "rms_norm_eps",
    "tie_embeddings": "tie_word_embeddings",
    "init_std": "initializer_range",
}


def hf_config(cfg: ModelConfig) -> PreTrainedConfig:
    """The HF config of the same architecture: a ``LlamaConfig``, or a ``Qwen3Config`` when ``cfg.qk_norm``."""
    transformers = _transformers()
    shape = {theirs: getattr(cfg, ours) for ours, theirs in CONFIG_NAMES.items()}
    shape |= dict(
        head_dim=cfg.head_dim,
        hidden_act="silu",
        # transformers 5 reads theta from rope_parameters (a bare rope_theta= is a legacy alias)
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        attention_bias=False,
        # ringworld's special tokens live in its own vocabulary, not in Llama's defaults (bos 1, eos 2)
        bos_token_id=None,
        eos_token_id=None,
        attn_implementation="sdpa",
    )
    if cfg.qk_norm:
        return transformers.Qwen3Config(**shape, use_sliding_window=False)
    return transformers.LlamaConfig(**shape, mlp_bias=False)


def model_config(hf_cfg: PreTrainedConfig) -> ModelConfig:
    """The ringworld config of an HF Llama or Qwen3 config; raises if it uses what ringworld does not have."""
    if hf_cfg.model_type not in ("llama", "qwen3"):
        raise ValueError(f"HF model type {hf_cfg.model_type!r} is not supported; ringworld maps llama and qwen3 only")
    rope = hf_cfg.rope_parameters  # transformers standardizes it to hold rope_type and rope_theta
    problems = []
    if rope["rope_type"] != "default":
        problems.append(f"rope_type {rope['rope_type']!r} (ringworld has plain RoPE only)")
    if hf_cfg.hidden_act != "silu":
        problems.append(f"hidden_act {hf_cfg.hidden_act!r} (ringworld's MLP is SwiGLU)")
    if hf_cfg.attention_bias or getattr(hf_cfg, "mlp_bias", False):
        problems.append("attention or mlp biases (ringworld's projections have none)")
    if getattr(hf_cfg, "sliding_window", None) is not None:
        problems.append(f"a sliding window of {hf_cfg.sliding_window} (ringworld attends to the whole context)")
    if hf_cfg.head_dim * hf_cfg.num_attention_heads != hf_cfg.hidden_size:
        problems.append(
            f"head_dim {hf_cfg.head_dim} x {hf_cfg.num_attention_heads} heads != hidden_size {hf_cfg.hidden_size} "
            "(ringworld's head_dim is dim / n_heads)"
        )
    if problems:
        raise ValueError(f"HF {hf_cfg.model_type} config has no ringworld equivalent: " + "; ".join(problems))
    shape = {ours: getattr(hf_cfg, theirs) for ours, theirs in CONFIG_NAMES.items()}
    return ModelConfig(**shape, rope_theta=rope["rope_theta"], qk_norm=hf_cfg.model_type == "qwen3")


def to_hf(model: Transformer) -> PreTrainedModel:
    """A fp32 ``LlamaForCausalLM`` (``Qwen3ForCausalLM`` with QK-norm) holding a copy of ``model``'s weights,
    on its device and in its train/eval mode."""
    transformers = _transformers()
    cfg = model.cfg
    cls = transformers.Qwen3ForCausalLM if cfg.qk_norm else transformers.LlamaForCausalLM
    hf = cls(hf_config(cfg))
    hf.load_state_dict(_to_hf_state_dict(model.state_dict(), cfg))
    return hf.to(model.embed.weight.device).train(model.training)


def from_hf(hf_model: PreTrainedModel) -> Transformer:
    """A ringworld ``Transformer`` holding a copy of an HF Llama/Qwen3 causal LM's weights, on its device and
    in its train/eval mode."""
    cfg = model_config(hf_model.config)
    model = Transformer(cfg)
    model.load_state_dict(_from_hf_state_dict(hf_model.state_dict(), cfg))
    return model.to(hf_model.device).train(hf_model.training)


# weight names ---------------------------------------------------------------------------------
LAYER_NAMES = {  # ringworld block weight -> HF decoder layer weight
    "attn_norm.weight": "input_layernorm.weight",
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wk.weight": "self_attn.k_proj.weight",
    "attn.wv.weight": "self_attn.v_proj.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.w_gate.weight": "mlp.gate_proj.weight",
    "mlp.w_up.weight": "mlp.up_proj.weight",
    "mlp.w_down.weight": "mlp.down_proj.weight",
}
QK_NORM_NAMES = {"attn.q_norm.weight": "self_attn.q_norm.weight", "attn.k_norm.weight": "self_attn.k_norm.weight"}
TOP_NAMES = {
    "embed.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "head.weight": "lm_head.weight",
}


def weight_names(cfg: ModelConfig) -> dict[str, str]:
    """Every ringworld weight name and its HF name (the head is the embedding when tied, in both)."""
    names = dict(TOP_NAMES)
    layer = LAYER_NAMES | (QK_NORM_NAMES if cfg.qk_norm else {})
    for i in range(cfg.n_layers):
        names |= {f"layers.{i}.{ours}": f"model.layers.{i}.{theirs}" for ours, theirs in layer.items()}
    return names


def _to_hf_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    return {theirs: sd[ours] for ours, theirs in weight_names(cfg).items()}


def _from_hf_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    return {ours: sd[theirs] for ours, theirs in weight_names(cfg).items()}
