"""Interop with Hugging Face transformers: the ringworld decoder in the layouts of public model families
(``ringworld.families``). Llama (LWM-Text) is ringworld without QK-norm, Qwen3 with its shared RMSNorm
QK-norm; Emu3's decoder is a Llama; Chameleon's has a LayerNorm QK-norm per head and, with
``swin_norm``, its norms on the branches' outputs. The families' VQ tokenizers stay HF's
(``ringworld.tokens.hf_vision``).

What it is for: the architecture parity tests (ringworld's logits and gradients against an independent
implementation), the benchmarks that compare ringworld with transformers, and importing and exporting
public checkpoints (``ringworld.jobs.hf``).

    hf = to_hf(model)            # a ringworld model as Llama/Qwen3: same weights, same logits
    model = from_hf(hf)          # any family -> ringworld, state_dict for state_dict

transformers is an optional dependency (``pip install ringworld[hf]``), imported only when these
functions are called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ringworld.extras import transformers_module
from ringworld.families import FAMILIES, Family, family_named
from ringworld.model.transformer import ModelConfig, Transformer

if TYPE_CHECKING:
    from transformers import PreTrainedConfig, PreTrainedModel


def family_of(hf_cfg: PreTrainedConfig) -> Family:
    """The family of an HF config; a ValueError naming the known ones for any other."""
    return family_named(hf_cfg.model_type)


CONFIG_NAMES = {  # ringworld ModelConfig field -> HF config field, the same value on both sides
    "vocab_size": "vocab_size",
    "dim": "hidden_size",
    "ffn_dim": "intermediate_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "n_kv_heads": "num_key_value_heads",
    "max_seq_len": "max_position_embeddings",
    "norm_eps": "rms_norm_eps",
    "init_std": "initializer_range",
}
CHAMELEON_QK_EPS = 1e-5  # transformers' Chameleon fixes its QK LayerNorm's eps; ringworld's is norm_eps


def hf_config(cfg: ModelConfig) -> PreTrainedConfig:
    """The HF config of the same architecture: a ``LlamaConfig``, or a ``Qwen3Config`` when ``cfg.qk_norm``.
    (Chameleon's options belong to imported models, whose HF config comes with them.)"""
    transformers = transformers_module()
    if cfg.qk_norm_per_head or cfg.post_norm:
        raise ValueError(
            "a model with Chameleon's QK-norm or norm placement has no Llama/Qwen3 form; "
            "export it with `ringworld export hf`, which writes the Chameleon model it was imported from"
        )
    shape = {theirs: getattr(cfg, ours) for ours, theirs in CONFIG_NAMES.items()}
    shape |= dict(
        head_dim=cfg.head_dim,
        hidden_act="silu",
        # transformers 5 reads theta from rope_parameters (a bare rope_theta= is a legacy alias)
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        attention_bias=False,
        tie_word_embeddings=cfg.tie_embeddings,
        # ringworld's special tokens live in its own vocabulary, not in Llama's defaults (bos 1, eos 2)
        bos_token_id=None,
        eos_token_id=None,
        attn_implementation="sdpa",
    )
    if cfg.qk_norm:
        return transformers.Qwen3Config(**shape, use_sliding_window=False)
    return transformers.LlamaConfig(**shape, mlp_bias=False)


def model_config(hf_cfg: PreTrainedConfig) -> ModelConfig:
    """The ringworld config of an HF config of a known family; raises if it uses what ringworld does not have."""
    family = family_of(hf_cfg)
    text = hf_cfg.get_text_config()  # the decoder's part (Emu3 keeps it in text_config)
    rope = text.rope_parameters  # transformers standardizes it to hold rope_type and rope_theta
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    problems = []
    if rope["rope_type"] != "default":
        problems.append(f"rope_type {rope['rope_type']!r} (ringworld has plain RoPE only)")
    if text.hidden_act != "silu":
        problems.append(f"hidden_act {text.hidden_act!r} (ringworld's MLP is SwiGLU)")
    if text.attention_bias or getattr(text, "mlp_bias", False):
        problems.append("attention or mlp biases (ringworld's projections have none)")
    if getattr(text, "sliding_window", None) is not None:
        problems.append(f"a sliding window of {text.sliding_window} (ringworld attends to the whole context)")
    if head_dim * text.num_attention_heads != text.hidden_size:
        problems.append(
            f"head_dim {head_dim} x {text.num_attention_heads} heads != hidden_size {text.hidden_size} "
            "(ringworld's head_dim is dim / n_heads)"
        )
    if family.name == "chameleon" and text.rms_norm_eps != CHAMELEON_QK_EPS:
        problems.append(
            f"rms_norm_eps {text.rms_norm_eps} (its QK LayerNorm's eps is {CHAMELEON_QK_EPS}; ringworld uses one eps)"
        )
    if problems:
        raise ValueError(f"HF {hf_cfg.model_type} config has no ringworld equivalent: " + "; ".join(problems))
    shape = {ours: getattr(text, theirs) for ours, theirs in CONFIG_NAMES.items()}
    return ModelConfig(
        **shape,
        rope_theta=rope["rope_theta"],
        tie_embeddings=bool(hf_cfg.tie_word_embeddings),
        qk_norm=family.name in ("qwen3", "chameleon"),
        qk_norm_per_head=family.name == "chameleon",
        post_norm=family.name == "chameleon" and bool(text.swin_norm),
    )


def to_hf(model: Transformer) -> PreTrainedModel:
    """A fp32 ``LlamaForCausalLM`` (``Qwen3ForCausalLM`` with QK-norm) holding a copy of ``model``'s weights,
    on its device and in its train/eval mode."""
    transformers = transformers_module()
    cfg = model.cfg
    cls = transformers.Qwen3ForCausalLM if cfg.qk_norm else transformers.LlamaForCausalLM
    hf = cls(hf_config(cfg))
    hf.load_state_dict(hf_weights(model.state_dict(), cfg, FAMILIES[hf.config.model_type]))
    return hf.to(model.embed.weight.device).train(model.training)


def from_hf(hf_model: PreTrainedModel) -> Transformer:
    """A ringworld ``Transformer`` holding a copy of an HF model's decoder weights (any family above), on its
    device, in its dtype and in its train/eval mode."""
    cfg = model_config(hf_model.config)
    with torch.device("meta"):  # no memory and no init for weights about to be overwritten (an 8B model)
        model = Transformer(cfg).to(hf_model.dtype)
    model.to_empty(device=hf_model.device)
    if cfg.tie_embeddings:  # to_empty gives every parameter storage of its own
        model.head.weight = model.embed.weight
    model.load_state_dict(ringworld_weights(hf_model.state_dict(), cfg, family_of(hf_model.config)))
    return model.train(hf_model.training)


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
QK_NORM_BIAS_NAMES = {"attn.q_norm.bias": "self_attn.q_norm.bias", "attn.k_norm.bias": "self_attn.k_norm.bias"}


def weight_names(cfg: ModelConfig, family: Family = FAMILIES["llama"]) -> dict[str, str]:
    """Every ringworld weight name and its name in ``family``'s HF state dict (the head is the embedding
    when tied, in both)."""
    p = family.prefix
    names = {"embed.weight": f"{p}embed_tokens.weight", "norm.weight": f"{p}norm.weight"}
    names["head.weight"] = "lm_head.weight"
    layer = dict(LAYER_NAMES)
    if cfg.qk_norm:
        layer |= QK_NORM_NAMES | (QK_NORM_BIAS_NAMES if cfg.qk_norm_per_head else {})
    for i in range(cfg.n_layers):
        names |= {f"layers.{i}.{ours}": f"{p}layers.{i}.{theirs}" for ours, theirs in layer.items()}
    return names


def hf_weights(sd: dict[str, torch.Tensor], cfg: ModelConfig, family: Family) -> dict[str, torch.Tensor]:
    """A ringworld state dict under ``family``'s HF names."""
    return {theirs: sd[ours] for ours, theirs in weight_names(cfg, family).items()}


def ringworld_weights(sd: dict[str, torch.Tensor], cfg: ModelConfig, family: Family) -> dict[str, torch.Tensor]:
    """The decoder's weights of an HF state dict of ``family``, under ringworld's names."""
    return {ours: sd[theirs] for ours, theirs in weight_names(cfg, family).items()}
