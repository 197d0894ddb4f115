"""The vision tokenizer's mechanics: FSQ codes, batched encode/decode, save/load, errors."""

import numpy as np
import pytest
import torch

from ringworld.tokens.vision import FSQ, VisionConfig, VisionTokenizer, psnr, to_model_input, to_pixels


def test_fsq_codes_cover_the_codebook_and_invert():
    levels = (8, 5, 5, 5)
    fsq = FSQ(levels)
    z = torch.randn(4096, 4, 1, 1)
    q, codes = fsq(z)
    assert codes.min() >= 0 and codes.max() < 1000 and q.abs().max() <= 1
    assert torch.equal(fsq.latents(codes), q)  # codes -> latents inverts quantising
    # every one of the 1000 codes is reachable: take each code's digits, undo the bound, quantise
    all_codes = torch.arange(1000).view(1000, 1, 1)
    digits = fsq.latents(all_codes) * (fsq.levels // 2)  # (1000, 4, 1, 1), integers centred on 0
    half = (fsq.levels - 1) * (1 - 1e-3) / 2
    offset = torch.where(fsq.levels % 2 == 0, 0.5, 0.0)
    inside = digits - 0.25 * digits.sign()  # the extreme digits lie at tanh's open ends: aim just inside
    z = torch.atanh((inside + offset) / half) - torch.atanh(offset / half)
    assert torch.equal(fsq(z)[1], all_codes)


def test_fsq_gradient_passes_straight_through():
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    q, _ = FSQ((8, 5, 5, 5))(z)
    q.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_encode_decode_shapes_and_batching():
    torch.manual_seed(0)
    model = VisionTokenizer(VisionConfig(channels=16, blocks=1)).eval()
    frames = np.random.default_rng(0).integers(0, 256, size=(10, 32, 32, 3), dtype=np.uint8)
    codes = model.encode(frames)
    assert codes.shape == (10, 8, 8) and codes.dtype == np.int64
    assert np.array_equal(codes, model.encode(frames, batch_size=3))  # batching changes nothing
    recon = model.decode(codes)
    assert recon.shape == frames.shape and recon.dtype == np.uint8
    assert np.array_equal(recon, model.decode(codes, batch_size=4))


def test_save_load_gives_the_same_codes(tmp_path):
    model = VisionTokenizer(VisionConfig(channels=16, blocks=1, levels=(4, 4, 3))).eval()
    model.save(tmp_path / "v")
    loaded = VisionTokenizer.load(tmp_path / "v")
    assert loaded.config == model.config
    frames = np.random.default_rng(1).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    assert np.array_equal(model.encode(frames), loaded.encode(frames))
    with pytest.raises(FileNotFoundError, match="ringworld tokenizer train"):
        VisionTokenizer.load(tmp_path / "missing")
    (tmp_path / "v" / "config.json").write_text('{"frame_size": 32, "levels": [8, 8], "colour": 1}')
    with pytest.raises(ValueError, match="does not hold a vision tokenizer this ringworld can read"):
        VisionTokenizer.load(tmp_path / "v")


def test_bad_frames_and_codes_get_clear_errors():
    model = VisionTokenizer(VisionConfig(channels=8, blocks=0))
    with pytest.raises(ValueError, match="resize images to 32x32"):
        model.encode(np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 1000\)"):
        model.decode(np.full((1, 8, 8), 1000))
    with pytest.raises(ValueError, match="not a multiple of patch"):
        VisionConfig(frame_size=30, patch=4)


def test_pixel_conversions_and_psnr():
    frames = np.random.default_rng(2).integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    assert np.array_equal(to_pixels(to_model_input(frames)), frames)
    assert psnr(frames, frames) == float("inf")
    noisy = frames.astype(np.int16) + 1
    assert abs(psnr(frames, np.clip(noisy, 0, 255).astype(np.uint8)) - 48.13) < 0.5
