import socket
import threading
import time
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """``ringworld serve``'s app for ``wm`` (a world model or an imported one) on a free local port, in a
    thread of this process; the model runs in a thread too, unless ``worker`` says otherwise."""

    def __init__(self, wm, *, max_requests: int = 64, limits=None, worker=None) -> None:
        import uvicorn

        from ringworld.infer.batcher import Batcher
        from ringworld.serve.app import Limits, make_app
        from ringworld.serve.fronts import front_of
        from ringworld.serve.worker import ThreadWorker

        self.wm = wm
        self.worker = worker or ThreadWorker(Batcher(wm.engine, rows=8), max_requests=max_requests)
        app = make_app(front_of(wm), self.worker, name="tiny", limits=limits or Limits())
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.worker.close()


@pytest.fixture(scope="module")
def server(tiny_run):
    """A live server of the tiny run, for the tests of one module."""
    from ringworld.infer.tasks import load_world_model

    live = LiveServer(load_world_model(tiny_run))
    yield live
    live.close()
