"""The model at work: `ringworld generate image | video`, `caption`, `predict` and `ask`. A run imported
from a public family (`ringworld import hf`) draws (Emu3), captions and answers in its own layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from ringworld.cli.common import load, model_args, positive_int, sampling, warn


def _actions(text: str) -> list[str]:
    from ringworld.documents import ACTIONS

    names = [a.strip() for a in text.split(",") if a.strip()]
    bad = [a for a in names if a not in ACTIONS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"actions are a comma-separated list of {', '.join(ACTIONS)}; got {text!r}")
    return names


def _media_out(p: argparse.ArgumentParser, *, video: bool) -> None:
    p.add_argument("--out", type=Path, required=True, help="file to write (.png for images; .gif or .mp4 for videos)")
    p.add_argument("--scale", type=positive_int, default=4, help="upscale for viewing (default: 4)")
    if video:
        p.add_argument("--fps", type=float, default=4.0, help="frames per second of the file (default: 4)")


def add_parsers(commands) -> None:
    generate = commands.add_parser("generate", help="draw an image or a video from a caption").add_subparsers(
        dest="action", metavar="KIND", required=True
    )
    image = generate.add_parser(
        "image",
        help="text -> image",
        description="Generate one image from a caption with the world model (constrained decoding: the image "
        "always decodes), guided by classifier-free guidance.",
    )
    image.add_argument("prompt", help='a caption, e.g. "a red circle in the top left"')
    _media_out(image, video=False)
    model_args(image, guidance=True)
    image.set_defaults(run=_image)
    video = generate.add_parser(
        "video",
        help="text -> video",
        description="Generate a video from a caption. Past the length of the videos the model was trained on, "
        "it goes on as a rollout from its last frames.",
    )
    video.add_argument("prompt", help='a caption with motion, e.g. "a blue square moving right"')
    video.add_argument("--frames", type=positive_int, default=8, help="frames (default: 8)")
    _media_out(video, video=True)
    model_args(video, guidance=True)
    video.set_defaults(run=_video)

    caption = commands.add_parser(
        "caption", help="image -> text", description="Describe an image (any size: it is fitted to the model's)."
    )
    caption.add_argument("image", type=Path, help="PNG, JPEG, ... (a video: its first frame)")
    model_args(caption, guidance=False)
    caption.set_defaults(run=_caption)

    predict = commands.add_parser(
        "predict",
        help="frames (+ actions) -> the frames that follow",
        description="Roll the world forward from a clip. With --actions, the agent takes them one per frame, "
        "starting from the clip's last frame; without, the clip's last frames are the context and --steps "
        "frames follow. Writes the context and the prediction as one video.",
    )
    predict.add_argument("clip", type=Path, help="a GIF/MP4 (or an image: one frame)")
    predict.add_argument("--actions", type=_actions, help="e.g. right,right,up (one frame per action)")
    predict.add_argument("--steps", type=positive_int, default=4, help="frames to predict without actions (default: 4)")
    _media_out(predict, video=True)
    model_args(predict, guidance=False)
    predict.set_defaults(run=_predict)

    ask = commands.add_parser(
        "ask", help="image or video + question -> answer", description="Answer a question about an image or a video."
    )
    ask.add_argument("media", type=Path, help="an image or a video")
    ask.add_argument("question", help='e.g. "what colour is the square?"')
    model_args(ask, guidance=False)
    ask.set_defaults(run=_ask)


def _imported(args: argparse.Namespace):
    """The imported model the --checkpoint holds, or None for a ringworld world model."""
    from ringworld.infer.imported import is_imported, load_imported

    return load_imported(args.checkpoint, args.device) if is_imported(args.checkpoint) else None


def _no_video(im) -> None:
    raise ValueError(f"{im.family.name} models write no video: the public families draw images at most")


def _read(path: Path, wm, max_frames: int | None = None):
    from ringworld.media import read_media

    frames, notice = read_media(path, wm.frame_size, max_frames=max_frames)
    if notice:
        warn(notice)
    return frames


def _image(args: argparse.Namespace) -> None:
    from ringworld.infer.tasks import generate_images
    from ringworld.media import write_image

    drawn = sampling(args, drawn=True)
    if (im := _imported(args)) is not None:
        from ringworld.infer.imported import draw

        image = draw(im, [args.prompt], guidance=args.guidance, sampling=drawn)[0]
    else:
        image = generate_images(load(args), [args.prompt], guidance=args.guidance, sampling=drawn)[0]
    write_image(args.out, image, scale=args.scale)
    print(f"wrote {args.out}")


def _video(args: argparse.Namespace) -> None:
    from ringworld.infer.tasks import generate_videos
    from ringworld.media import write_video

    if (im := _imported(args)) is not None:
        _no_video(im)
    wm = load(args)
    drawn = sampling(args, drawn=True)
    video = generate_videos(wm, [args.prompt], args.frames, guidance=args.guidance, sampling=drawn)[0]
    write_video(args.out, video, scale=args.scale, fps=args.fps)
    print(f"wrote {args.out} ({args.frames} frames)")


def _caption(args: argparse.Namespace) -> None:
    from ringworld.infer.tasks import caption_images

    if (im := _imported(args)) is not None:
        from ringworld.infer.imported import CAPTION_QUESTION, reply

        frames = _read(args.image, im, max_frames=1)
        print(reply(im, [frames if frames.ndim == 3 else frames[0]], [CAPTION_QUESTION])[0])
        return
    wm = load(args)
    frames = _read(args.image, wm, max_frames=1)
    print(caption_images(wm, (frames if frames.ndim == 3 else frames[0])[None])[0])


def _predict(args: argparse.Namespace) -> None:
    import numpy as np

    from ringworld.infer.tasks import predict, rollout
    from ringworld.media import write_video

    if (im := _imported(args)) is not None:
        _no_video(im)
    wm = load(args)
    clip = _read(args.clip, wm)
    clip = clip[None] if clip.ndim == 3 else clip  # (T, H, W, 3)
    if args.actions:
        made = rollout(wm, clip[-1:], [args.actions], sampling=sampling(args, drawn=False))
        what = f"{len(args.actions)} frames after {','.join(args.actions)}"
    else:
        made = predict(wm, clip[None], args.steps, sampling=sampling(args, drawn=False))
        what = f"{args.steps} predicted frames after {len(clip)} of the clip"
    write_video(args.out, np.concatenate([clip, made.frames[0]]), scale=args.scale, fps=args.fps)
    print(f"wrote {args.out}: {what}")
    for k, note in enumerate(made.said[0]):
        if note:
            print(f"  before frame {len(clip) + k}: {note}")


def _ask(args: argparse.Namespace) -> None:
    from ringworld.infer.tasks import answer

    if (im := _imported(args)) is not None:
        from ringworld.infer.imported import reply

        frames = _read(args.media, im, max_frames=1)  # a video: its first frame (the families read images)
        print(reply(im, [frames if frames.ndim == 3 else frames[0]], [args.question])[0])
        return
    wm = load(args)
    media = _read(args.media, wm, max_frames=wm.video_frames)
    print(answer(wm, [media], [args.question])[0])
