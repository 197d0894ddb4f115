from pathlib import Path

import pytest
import torch

from ringworld.tokens.bundle import save_tokenizers
from ringworld.tokens.text import train_text_tokenizer
from ringworld.tokens.vision import VisionConfig, VisionTokenizer
from ringworld.world.tasks import caption_corpus


@pytest.fixture(scope="session")
def world_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tokenizer directory for the default 32 px world: real BPE, an untrained (random) small
    vision autoencoder. Fast to build; training code only needs its ids to be well formed."""
    torch.manual_seed(0)
    text = train_text_tokenizer(caption_corpus(300, seed=0), vocab_size=400)
    vision = VisionTokenizer(VisionConfig(channels=8, blocks=0)).eval()
    directory = tmp_path_factory.mktemp("world_tokenizer")
    save_tokenizers(directory, text, vision)
    return directory
