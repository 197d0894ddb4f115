"""Media files in and out: exact GIF round trips (still frames included), MP4, cropping, errors."""

import numpy as np
import pytest

from ringworld.media import MediaError, fit_square, read_image, read_video, write_gif, write_image, write_mp4
from ringworld.world.sim import random_state, render, rollout


def test_gif_round_trip_is_exact_even_with_repeated_frames(tmp_path):
    states = rollout(random_state(np.random.default_rng(0)), 5)
    frames = render([states[0], *states, states[-1]])  # 8 frames, two pairs identical
    write_gif(tmp_path / "a.gif", frames, scale=2)
    back = read_video(tmp_path / "a.gif")
    assert back.shape == (8, 64, 64, 3)
    assert np.array_equal(back[:, ::2, ::2], frames)
    still = np.repeat(frames[:1], 4, axis=0)  # a video where nothing moves
    write_gif(tmp_path / "still.gif", still)
    assert read_video(tmp_path / "still.gif").shape == (4, 32, 32, 3)


def test_png_round_trip_and_video_options(tmp_path):
    frame = render(random_state(np.random.default_rng(1)))
    write_image(tmp_path / "a.png", frame)
    assert np.array_equal(read_image(tmp_path / "a.png"), frame)
    frames = render(rollout(random_state(np.random.default_rng(2)), 9))
    write_mp4(tmp_path / "a.mp4", frames.repeat(2, 1).repeat(2, 2))
    video = read_video(tmp_path / "a.mp4", max_frames=3, stride=2)
    assert video.shape == (3, 64, 64, 3)
    # H.264 is lossy, but a crisp sprite frame survives closely
    assert np.abs(video[0].astype(int)[::2, ::2] - frames[0]).mean() < 12


def test_fit_square_crops_the_centre():
    frame = np.zeros((20, 40, 3), np.uint8)
    frame[:, 10:30] = 255  # the centre square is white, the sides black
    out = fit_square(frame, 10)
    assert out.shape == (10, 10, 3) and out.min() == 255


def test_unreadable_files_raise_media_error(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(MediaError, match="bad.png"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(MediaError, match="bad.mp4"):
        read_video(tmp_path / "bad.mp4")
