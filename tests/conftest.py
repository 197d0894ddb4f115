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


@pytest.fixture(scope="session")
def tiny_run(world_tokenizer_dir, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of a one-layer model trained for 3 steps: untrained in effect, but a real run directory
    (checkpoint, config, tokenizer) that every inference path loads."""
    from ringworld.train.config import TrainConfig
    from ringworld.train.loop import train

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    cfg = TrainConfig(
        out=str(out),
        tokenizer=str(world_tokenizer_dir),
        depth=1,
        seq_len=512,  # the context must hold a caption and a 3-frame video of 32 px frames
        video_frames=3,
        batch_size=2,
        steps=3,
        warmup=1,
        tensorboard=False,
        compile=False,
    )
    train(cfg, progress=False)
    return out
