"""`ringworld import hf` and `ringworld export hf`: public checkpoints as ringworld runs, and back.

An imported folder becomes a run of one checkpoint, step 0, that every ``load_model`` reads::

    RUN/checkpoints/step_0000000/
        model.safetensors       the decoder under ringworld's names, in the folder's dtype
        config.json             {"format", "model": ModelConfig, "hf": {"family", "architecture"}}
        tokenizer/hf/           the folder's files but its weights: config.json (for Emu3 and
                                Chameleon with the VQ tokenizer's config and the vocabulary map),
                                tokenizer.json, tokenizer_config.json, ...
        tokenizer/hf/vision.safetensors   the VQ tokenizer's weights (Emu3, Chameleon), HF's names

Export maps the weights back to the family's names and writes the HF folder again: import, export,
import gives the same weights bit for bit. The weights are mapped by name, never through a model
built in memory, so an 8B checkpoint costs its file size once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from ringworld.extras import transformers_module
from ringworld.families import Family, family_named
from ringworld.io import atomic_directory
from ringworld.model.hf import from_hf, hf_weights, model_config
from ringworld.model.transformer import ModelConfig, full_weights
from ringworld.tokens.family import HF_DIR
from ringworld.tokens.hf_vision import VISION_WEIGHTS
from ringworld.train.checkpoint import WEIGHTS, read_config, resolve_checkpoint, save_model_checkpoint

WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json", "*.pt", "*.pth", "*.gguf")


def read_family(folder: Path) -> Family:
    """The family of an HF model folder, from its config.json, before anything is loaded."""
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(f"{folder} is not a Hugging Face model folder: it has no config.json")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON ({e}); is the download complete?") from None
    return family_named(str(config.get("model_type")))


def import_hf(folder: str | Path, out: str | Path) -> Path:
    """Write the HF model folder ``folder`` as a ringworld run ``out``; returns its checkpoint."""
    folder, out = Path(folder), Path(out)
    family = read_family(folder)
    hf = getattr(transformers_module(), family.architecture).from_pretrained(folder, dtype="auto")
    model = from_hf(hf.eval())
    prefix = family.vision_prefix
    vision = {k[len(prefix) :]: v for k, v in hf.state_dict().items() if prefix and k.startswith(prefix)}

    def write_tokenizer(directory: Path) -> None:
        hf_dir = directory / HF_DIR
        shutil.copytree(folder, hf_dir, ignore=shutil.ignore_patterns(*WEIGHT_FILES, ".*"))
        if vision:
            save_file({k: v.contiguous() for k, v in vision.items()}, hf_dir / VISION_WEIGHTS)

    config = {"model": model.cfg.to_dict(), "hf": {"family": family.name, "architecture": family.architecture}}
    return save_model_checkpoint(out, 0, model, config, write_tokenizer)


def export_hf(run: str | Path, out: str | Path) -> Path:
    """Write the checkpoint of ``run`` (a run imported from an HF folder) as an HF model folder ``out``."""
    checkpoint = resolve_checkpoint(run)
    config = read_config(checkpoint)
    hf_dir = checkpoint / "tokenizer" / HF_DIR
    if "hf" not in config or not hf_dir.is_dir():
        raise ValueError(
            f"{checkpoint} was not imported from a Hugging Face folder, so there is no HF family to write it as; "
            "`ringworld export hf` writes runs made by `ringworld import hf` (and trained from them)"
        )
    family = family_named(config["hf"]["family"])
    cfg = ModelConfig.from_dict(config["model"])
    hf_config = _hf_config(hf_dir, cfg)
    weights = hf_weights(full_weights(cfg, load_file(checkpoint / WEIGHTS)), cfg, family)
    if cfg.tie_embeddings:  # HF stores a tied head once, as the embedding
        del weights["lm_head.weight"]
    if (hf_dir / VISION_WEIGHTS).is_file():
        weights |= {family.vision_prefix + k: v for k, v in load_file(hf_dir / VISION_WEIGHTS).items()}
    out = Path(out)
    with atomic_directory(out) as tmp:  # a crash mid-write leaves the folder that was there, if any
        shutil.copytree(hf_dir, tmp, ignore=shutil.ignore_patterns(VISION_WEIGHTS, "config.json"), dirs_exist_ok=True)
        save_file({k: v.contiguous() for k, v in weights.items()}, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(hf_config)
    return out


def _hf_config(hf_dir: Path, cfg: ModelConfig) -> str:
    """The imported config.json as it was, unless training changed what it says (context growth changes
    RoPE theta and the context length); then with those two updated."""
    text = (hf_dir / "config.json").read_text()
    transformers = transformers_module()
    imported = model_config(transformers.AutoConfig.from_pretrained(hf_dir))
    if imported == cfg:
        return text
    grown = {"rope_theta": cfg.rope_theta, "max_seq_len": cfg.max_seq_len}
    if {**imported.to_dict(), **grown} != cfg.to_dict():
        raise ValueError(
            "the run's model has another architecture than the folder it was imported from; "
            "only RoPE theta and the context length may change on the way"
        )
    raw = json.loads(text)
    decoder = raw["text_config"] if "text_config" in raw else raw
    decoder["max_position_embeddings"] = cfg.max_seq_len
    decoder.setdefault("rope_parameters", {"rope_type": "default"})["rope_theta"] = cfg.rope_theta
    decoder.pop("rope_theta", None)  # the legacy key would shadow rope_parameters
    return json.dumps(raw, indent=2) + "\n"
