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

# source file -> (split, class name, output stem)
SAMPLE_CLIPS: dict[str, tuple[str, str, str]] = {
    "cockatoo.mp4": ("train", "bird", "cockatoo"),
    "bikes.mp4": ("train", "street", "bikes"),
    "carphone_pristine.mp4": ("train", "talking_on_phone", "carphone"),
    "cup.mp4": ("train", "moving_object", "cup"),
    "box.mp4": ("train", "moving_object", "box"),
    "motion.mov": ("val", "moving_object", "coin_and_pen"),
    "realshort.mp4": ("val", "office", "office"),
}


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


def reencode(src: Path, dst: Path, short_side: int = 256, crf: int = 26) -> int:
    """Re-encode `src` to H.264 with short side <= `short_side`; return the number of frames."""
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
            for frame in inp.decode(in_stream):
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
    for name, (split, label, stem) in SAMPLE_CLIPS.items():
        dst = args.output / split / label / f"{stem}.mp4"
        n = reencode(args.source / name, dst, args.short_side)
        print(f"{name} -> {dst} ({n} frames, {dst.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
