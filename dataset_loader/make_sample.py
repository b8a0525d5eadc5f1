"""Rebuild `dataset/sample/`: the small real training set the demo, tests and benchmarks use.

The clips come from `../shared/data/videos` (permissive licences, see dataset/sample/ATTRIBUTION.md).
Each is re-encoded with PyAV to H.264 at short side <= 256, a keyframe every second, and placed
in the Kinetics-400 tree layout `sample/{train,val}/<class>/<video>.mp4`.

    python -m dataset_loader.make_sample --source ../shared/data/videos --output dataset/sample
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import av

# (source file, split, class name, output stem, first frame, end frame or None for the whole clip)
SAMPLE_CLIPS: list[tuple[str, str, str, str, int, int | None]] = [
    ("cockatoo.mp4", "train", "bird", "cockatoo", 0, None),
    ("bikes.mp4", "train", "street", "bikes", 0, None),
    ("carphone_pristine.mp4", "train", "talking_on_phone", "carphone", 0, None),
    ("cup.mp4", "train", "moving_object", "cup", 0, None),
    ("box.mp4", "train", "moving_object", "box", 0, None),
    ("motion.mov", "val", "moving_object", "coin_and_pen", 0, None),
    ("realshort.mp4", "val", "office", "office", 0, None),
    # a 79 s fixed-camera scene at 10 fps, cut into 20 s clips: three to train on, the last one held out
    ("vtest.mp4", "train", "walking", "square_0", 0, 200),
    ("vtest.mp4", "train", "walking", "square_1", 200, 400),
    ("vtest.mp4", "train", "walking", "square_2", 400, 600),
    ("vtest.mp4", "val", "walking", "square_3", 600, None),
]


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


def reencode(src: Path, dst: Path, short_side: int = 256, crf: int = 26, start: int = 0, end: int | None = None) -> int:
    """Re-encode frames [start, end) of `src` (in decode order) to H.264 with short side <= `short_side`; return
    the number of frames written."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".tmp.mp4")
    n = 0
    with av.open(str(src)) as inp:
        in_stream = inp.streams.video[0]
        w, h = in_stream.codec_context.width, in_stream.codec_context.height
        scale = min(1.0, short_side / min(w, h))
        out_w, out_h = _even(w * scale), _even(h * scale)
        rate = in_stream.average_rate or Fraction(30)
        with av.open(str(tmp), mode="w") as out:
            stream = out.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = out_w, out_h, "yuv420p"
            gop = max(1, int(round(float(rate))))
            stream.options = {"crf": str(crf), "g": str(gop), "keyint_min": str(gop), "preset": "medium"}
            for i, frame in enumerate(inp.decode(in_stream)):
                if i < start:
                    continue
                if end is not None and i >= end:
                    break
                img = frame.reformat(width=out_w, height=out_h, format="yuv420p")
                img.pts = n
                img.time_base = Fraction(1) / rate
                for packet in stream.encode(img):
                    out.mux(packet)
                n += 1
            for packet in stream.encode():
                out.mux(packet)
    tmp.replace(dst)
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=Path("../shared/data/videos"), help="folder of source clips")
    parser.add_argument("--output", type=Path, default=Path("dataset/sample"), help="where to write the tree")
    parser.add_argument("--short-side", type=int, default=256, help="short side of the output frames")
    args = parser.parse_args()
    if not args.source.is_dir():
        raise SystemExit(f"source folder {args.source} does not exist")
    for name, split, label, stem, start, end in SAMPLE_CLIPS:
        dst = args.output / split / label / f"{stem}.mp4"
        n = reencode(args.source / name, dst, args.short_side, start=start, end=end)
        print(f"{name} -> {dst} ({n} frames, {dst.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
