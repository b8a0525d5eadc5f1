"""Prepared videos: every frame of a video as a JPEG, in one `.frames` file with an index (what `prepare` writes).

Reading two frames of a prepared video costs an open, two seeks and two JPEG decodes, instead of a
video decoder's seek to a keyframe and decode forward: the data path of training then keeps pace
with a GPU (`python -m dataset_loader.prepare`, BENCHMARKS.md section 1). JPEG goes through
simplejpeg (libjpeg-turbo, straight to NumPy): 0.36 ms per 456x256 frame against 0.65 ms through
Pillow, the same pixels.

File layout (little-endian), written front to back so that a long video never sits whole in memory:
    8 bytes   magic b"SIAMFRM1"
    5 x u32   version (2), frame rate numerator, frame rate denominator, width, height
    u32       CRC-32 of the magic and the five header fields (a changed frame rate is found at open)
    the JPEG data of frame 0, 1, ..., count - 1
    u64 x (count + 1)   the byte offsets where each frame's data starts in the file, then where the data ends
    u32 x count         the CRC-32 of each frame's JPEG data, checked on every read of the frame
    u64       count
    u32       CRC-32 of the offsets and the frame checksums
    8 bytes   end marker b"SIAMEND1" (a file without it was cut short and is refused)
A flipped byte anywhere is found: in the header or the index when the file is opened, in a frame when the
frame is read (JPEG decoders would turn most such bytes into other pixels without a word). Version 1 files
(no checksums) are refused with the command that redoes them.
Frame i of the file is frame i of the source as `VideoReader` numbers it (presentation order).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np
import simplejpeg

from .video import FRAMES_SUFFIX, VideoError, VideoReader, VideoTooShortError

MAGIC = b"SIAMFRM1"
END_MARKER = b"SIAMEND1"
VERSION = 2
_HEADER = struct.Struct("<5I")  # version, fps numerator, fps denominator, width, height
_CRC = struct.Struct("<I")
_FOOTER = struct.Struct("<QI8s")  # frame count, CRC-32 of the index, end marker
_HEAD_SIZE = len(MAGIC) + _HEADER.size + _CRC.size


def write_frames(out, frames: Iterable[np.ndarray], fps: Fraction, quality: int = 90) -> int:
    """Write uint8 (H, W, 3) RGB frames to the binary file object `out` in the `.frames` layout; return the count.

    Every frame must have the first frame's size. Frames are encoded and written one at a time.
    """
    fps = Fraction(fps).limit_denominator(1_000_000)
    offsets: list[int] = []
    checksums: list[int] = []
    size = None
    for frame in frames:
        if size is None:
            size = frame.shape[:2]
            head = MAGIC + _HEADER.pack(VERSION, fps.numerator, fps.denominator, size[1], size[0])
            out.write(head + _CRC.pack(zlib.crc32(head)))
            offsets.append(_HEAD_SIZE)
        elif frame.shape[:2] != size:
            raise ValueError(f"frame {len(offsets) - 1} is {frame.shape[:2]}, the first was {size}")
        blob = simplejpeg.encode_jpeg(np.ascontiguousarray(frame), quality=quality, colorspace="RGB",
                                      colorsubsampling="420")
        out.write(blob)
        offsets.append(offsets[-1] + len(blob))
        checksums.append(zlib.crc32(blob))
    if size is None:
        raise ValueError("no frames to write")
    index = np.asarray(offsets, dtype="<u8").tobytes() + np.asarray(checksums, dtype="<u4").tobytes()
    out.write(index)
    out.write(_FOOTER.pack(len(checksums), zlib.crc32(index), END_MARKER))
    return len(checksums)


class FramesReader:
    """A `.frames` file, with `VideoReader`'s interface: `num_frames`, `fps`, `width`, `height`, `read(indices)`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.file = open(self.path, "rb")
        except OSError as err:
            raise VideoError(f"cannot open {self.path}: {err.strerror}") from err
        try:
            num, den = self._read_head()
            self._read_index()
        except BaseException:
            self.file.close()
            raise
        self.fps = Fraction(num, den)
        self.num_frames = len(self.checksums)

    def _read_head(self) -> tuple[int, int]:
        head = self.file.read(_HEAD_SIZE)
        if len(head) < len(MAGIC) + _HEADER.size or head[: len(MAGIC)] != MAGIC:
            raise VideoError(f"{self.path} is not a prepared .frames file (bad header)")
        version, num, den, self.width, self.height = _HEADER.unpack(head[len(MAGIC):len(MAGIC) + _HEADER.size])
        if version == 1:
            raise VideoError(f"{self.path} is a .frames file of version 1, without checksums: run `python -m "
                             f"dataset_loader.prepare SRC DST` again, it prepares such files anew")
        if version != VERSION:
            raise VideoError(f"{self.path}: unsupported .frames version {version} (this code reads {VERSION})")
        if len(head) < _HEAD_SIZE or _CRC.unpack(head[-_CRC.size:])[0] != zlib.crc32(head[:-_CRC.size]) or den == 0:
            raise VideoError(f"{self.path} has a damaged header (its checksum does not match)")
        return num, den

    def _read_index(self) -> None:
        end = self.file.seek(0, 2)
        table_end = end - _FOOTER.size
        self.file.seek(max(0, table_end))
        count, index_crc, marker = _FOOTER.unpack(self.file.read(_FOOTER.size).rjust(_FOOTER.size, b"\0"))
        table_start = table_end - 8 * (count + 1) - 4 * count
        if marker != END_MARKER or count < 1 or table_start < _HEAD_SIZE:
            raise VideoError(f"{self.path} is truncated (no frame index at its end)")
        self.file.seek(table_start)
        index = self.file.read(table_end - table_start)
        if zlib.crc32(index) != index_crc:
            raise VideoError(f"{self.path} has a damaged frame index (its checksum does not match)")
        self.offsets = np.frombuffer(index, dtype="<u8", count=count + 1).astype(np.int64)
        self.checksums = np.frombuffer(index, dtype="<u4", offset=8 * (count + 1)).astype(np.int64)
        if self.offsets[0] != _HEAD_SIZE or self.offsets[-1] != table_start or np.any(np.diff(self.offsets) <= 0):
            raise VideoError(f"{self.path} has a damaged frame index")

    def frame_bytes(self, i: int) -> bytes:
        """Frame i's JPEG data, checked against its checksum."""
        self.file.seek(int(self.offsets[i]))
        blob = self.file.read(int(self.offsets[i + 1] - self.offsets[i]))
        if zlib.crc32(blob) != self.checksums[i]:
            raise VideoError(f"{self.path}: frame {i} is damaged (its checksum does not match)")
        return blob

    def verify(self) -> None:
        """Check every frame's data against its checksum (VideoError naming the first damaged frame)."""
        for i in range(self.num_frames):
            self.frame_bytes(i)

    def read(self, indices: list[int]) -> list[np.ndarray]:
        """Frames `indices` (any order, repeats allowed) as (H, W, 3) uint8 RGB arrays."""
        decoded: dict[int, np.ndarray] = {}
        for i in sorted(set(int(i) for i in indices)):
            if i < 0:
                raise ValueError(f"frame indices must be >= 0, got {i}")
            if i >= self.num_frames:
                raise VideoTooShortError(f"{self.path} has {self.num_frames} frames, not frame {i}",
                                         num_frames=self.num_frames)
            blob = self.frame_bytes(i)
            try:
                decoded[i] = simplejpeg.decode_jpeg(blob, colorspace="RGB")
            except ValueError as err:
                raise VideoError(f"{self.path}: frame {i} is not a readable JPEG ({err})") from err
        return [decoded[i] for i in indices]

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> FramesReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_video(path: str | Path, threads: int = 1) -> VideoReader | FramesReader:
    """The reader of a video file: `FramesReader` for a prepared `.frames` file, `VideoReader` for the rest."""
    return FramesReader(path) if Path(path).suffix == FRAMES_SUFFIX else VideoReader(path, threads)
