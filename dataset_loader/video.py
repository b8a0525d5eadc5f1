"""Exact frames of a video by index, with PyAV: open once, seek to the keyframe before, decode forward.

Frame `i` is the frame presented at time `start + i / fps`. A decoded frame's index is read from its
presentation timestamp, `round((pts - start_pts) * time_base * fps)`, so streams that do not start
at 0 and non-integer rates (29.97 fps) map exactly; where a stream skips a timestamp (variable frame
rate), an index gets the next frame shown. Only the wanted frames are converted to RGB.

Containers whose timestamps cannot identify a frame (AVI, which stores none and gets them from the
decode order, off by the B-frame delay; MPEG program and transport streams, whose timestamps start
at an offset and whose seeks land imprecisely) are read by decode order instead: from the start
of the stream, frame i is the i-th frame the decoder outputs (presentation order), no seek.

Two shortcuts keep the decode small, both exact: frames that are neither wanted nor referenced by
other frames are not decoded at all (`skip_frame = NONREF`, about half of an H.264 stream with
B-frames), and where the next wanted frame lies past a keyframe, the decode jumps forward to that
keyframe instead of decoding the frames in between (the pass stays one forward pass). Anything
unexpected falls back to a plain decode: a missing timestamp, a seek landing past a wanted frame, or
frames decoded with errors after a seek (a keyframe that is no clean entry point), which sends the
decode back to the start of the stream.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

FRAMES_SUFFIX = ".frames"  # a video prepared by `python -m dataset_loader.prepare` (dataset_loader/frames_file.py)
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".ts", FRAMES_SUFFIX)
MIN_JUMP = 4  # frames a forward jump must save to be worth a seek
REORDER_WINDOW = 16  # frames a wanted index waits for its own frame before taking the next one shown
# containers read by decode order: their timestamps do not identify frames (see the module's description)
BY_ORDER_FORMATS = frozenset({"avi", "mpeg", "mpegts", "vob", "mpegvideo", "h264", "hevc", "m4v"})
MAX_INDEX_ENTRIES = 20_000  # longer demuxer indexes are not read (long videos): no forward jumps there


class VideoError(RuntimeError):
    """A video that cannot be opened or decoded, or holds no usable video stream."""


class VideoTooShortError(VideoError):
    """The stream ended before a wanted frame: it holds fewer frames than its header says."""

    def __init__(self, message: str, num_frames: int) -> None:
        super().__init__(message)
        self.num_frames = num_frames  # frames actually decodable


# what reading a broken file can raise (corrupt, truncated, empty, unreadable, too short, a bad JPEG)
READ_ERRORS = (VideoError, av.FFmpegError, OSError, ValueError)


class _DecodeFromStartError(Exception):
    """A seek led to frames decoded with errors (a keyframe that is no clean entry point)."""


class VideoReader:
    """One open video: its frame count, rate and size, and `read(indices)` for exact frames.

        with VideoReader("clip.mp4") as video:
            f1, f2 = video.read([12, 40])   # (H, W, 3) uint8 RGB each

    `threads=1` (the default, one thread per data-loader worker) enables the shortcuts above;
    with more threads frames are decoded plainly.
    """

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        self.path = Path(path)
        try:
            self.container = av.open(str(self.path), metadata_errors="ignore")
        except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
            raise VideoError(f"cannot open {self.path}: {err}") from err
        try:
            self._init_stream(threads)
        except BaseException:
            self.container.close()
            raise

    def _init_stream(self, threads: int) -> None:
        if not self.container.streams.video:
            raise VideoError(f"{self.path} has no video stream")
        stream = self.stream = self.container.streams.video[0]
        stream.thread_type = "AUTO" if threads != 1 else "SLICE"
        stream.codec_context.thread_count = threads
        self.fast = threads == 1
        self.by_order = bool(set(self.container.format.name.split(",")) & BY_ORDER_FORMATS)
        self.fps = self._frame_rate()
        self.time_base = stream.time_base or Fraction(1, 1_000_000)
        self.start_pts = stream.start_time if stream.start_time is not None else 0
        self._pts_to_index = float(self.time_base * self.fps)  # frames per pts tick
        self.num_frames = self._count_frames()
        self.width, self.height = stream.codec_context.width, stream.codec_context.height
        self._at_start = True
        self._keyframes: list[int] | None = None

    def _frame_rate(self) -> Fraction:
        """The rate of the index grid: the average rate, or the base rate where frames are missing from a
        regular grid (variable frame rate: fewer frames than the base rate would show)."""
        average, guessed = self.stream.average_rate, self.stream.guessed_rate or self.stream.base_rate
        if guessed and 0 < guessed <= 240 and (not average or abs(average - guessed) > 0.01 * guessed):
            return Fraction(guessed)
        if average and average > 0:
            return Fraction(average)
        raise VideoError(f"{self.path} has no frame rate")

    def _count_frames(self) -> int:
        """Frames in the stream from its header, else from its duration (0 when neither is known).

        Containers differ on whether their duration counts a start offset; the offset is taken off
        (an undercount loses a few end frames, an overcount is found and corrected by `read`).
        """
        if self.stream.frames > 0:
            return int(self.stream.frames)
        if self.stream.duration:
            return int(round(self.stream.duration * self._pts_to_index))
        if self.container.duration:
            seconds = (self.container.duration - max(0, self.container.start_time or 0)) / av.time_base
            return max(0, int(round(seconds * self.fps)))
        return 0

    @property
    def duration(self) -> float:
        """Seconds spanned by the frames."""
        return self.num_frames / float(self.fps)

    def index_of(self, pts: int) -> int:
        """The frame index of a presentation timestamp."""
        return int(math.floor((pts - self.start_pts) * self._pts_to_index + 0.5))

    def pts_of(self, index: int) -> int:
        """The presentation timestamp of frame `index` (the inverse of `index_of`)."""
        return self.start_pts + int(round(index / self._pts_to_index))

    def read(self, indices: list[int]) -> list[np.ndarray]:
        """Frames `indices` (any order, repeats allowed) as (H, W, 3) uint8 RGB arrays, from one forward decode."""
        if not indices:
            return []
        wanted = sorted(set(int(i) for i in indices))
        if wanted[0] < 0:
            raise ValueError(f"frame indices must be >= 0, got {wanted[0]}")
        if self.by_order:
            try:
                frames = self._decode_in_order(wanted)
            except av.FFmpegError as err:
                raise VideoError(f"cannot decode {self.path}: {err}") from err
            return [frames[i] for i in indices]
        try:
            try:
                frames = self._decode(wanted, fast=True) if self.fast else None
                if frames is None:
                    frames = self._decode(wanted, fast=False)
            except _DecodeFromStartError:
                frames = None
            if frames is None:  # a seek went wrong: decode everything from the start
                frames = self._decode(wanted, fast=False, from_start=True)
        except av.FFmpegError as err:
            raise VideoError(f"cannot decode {self.path}: {err}") from err
        finally:
            self.stream.codec_context.skip_frame = "DEFAULT"
        return [frames[i] for i in indices]

    def frames_in_order(self) -> Iterator[tuple[int, np.ndarray]]:
        """Every frame from the start, as (index, (H, W, 3) uint8 RGB), indices 0, 1, 2, ... numbered as `read`
        numbers them (an index with no frame of its own gets the next frame shown), to the stream's real end
        whatever the header says; one decode pass, a few frames held at a time."""
        try:
            if self.by_order:
                for count, frame in enumerate(self._from_start()):
                    yield count, frame.to_ndarray(format="rgb24")
                return
            pending: dict[int, av.VideoFrame] = {}  # shown frames not yet handed out, by index
            following = 0  # the next index to hand out
            for frame in itertools.chain(self._from_start(), [None]):  # None: the end, hand out what is held
                if frame is not None:
                    if frame.pts is None or (index := self.index_of(frame.pts)) < following:
                        continue  # no time, pre-roll, or a late duplicate of a frame handed out
                    pending.setdefault(index, frame)
                while pending and (frame is None or max(pending) >= following + REORDER_WINDOW):
                    shown = min(pending)  # `following` itself, or the next frame shown after it
                    yield following, pending[shown].to_ndarray(format="rgb24")
                    if shown == following:
                        del pending[shown]
                    following += 1
        except av.FFmpegError as err:
            raise VideoError(f"cannot decode {self.path}: {err}") from err

    def _from_start(self) -> Iterator[av.VideoFrame]:
        """Every decoded frame from the start of the stream, in the decoder's output (presentation) order."""
        if not self._at_start:
            start = 0 if self.by_order else self.start_pts
            self.container.seek(start, stream=self.stream, backward=True, any_frame=False)
        self._at_start = False
        for packet in self.container.demux(self.stream):
            yield from packet.decode()

    def _decode_in_order(self, wanted: list[int]) -> dict[int, np.ndarray]:
        """The wanted frames, counted in the decoder's output (presentation) order from the start of the stream."""
        frames: dict[int, np.ndarray] = {}
        todo, last = set(wanted), wanted[-1]
        index = -1
        for index, frame in enumerate(self._from_start()):
            if index in todo:
                frames[index] = frame.to_ndarray(format="rgb24")
                todo.discard(index)
            if index >= last:
                return frames
        raise VideoTooShortError(f"{self.path} ends at frame {index}, before frame {min(todo)}", num_frames=index + 1)

    def _keyframe_indices(self) -> list[int]:
        """Lower bounds of the keyframes' indices, from the demuxer's index (empty where there is none).

        Index timestamps are decode times in some containers (MP4), which never exceed presentation
        times; `_reorder` is how many frames the first keyframe's decode time lags its presentation.
        """
        if self._keyframes is None:
            entries = self.stream.index_entries
            if 0 < len(entries) <= MAX_INDEX_ENTRIES:
                self._keyframes = [self.index_of(e.timestamp) for e in entries if e.is_keyframe and not e.is_discard]
            else:
                self._keyframes = []
            self._reorder = max(0, -self._keyframes[0]) if self._keyframes else 0
        return self._keyframes

    def _jump_target(self, current: int, target: int) -> bool:
        """Whether a keyframe lies between frame `current` and frame `target` (far enough to skip frames)."""
        keyframes = self._keyframe_indices()
        i = bisect.bisect_right(keyframes, target - self._reorder) - 1
        return i >= 0 and keyframes[i] > current + MIN_JUMP

    def _seek(self, index: int) -> None:
        """Go to the keyframe at or before frame `index`."""
        self.container.seek(self.pts_of(index), stream=self.stream, backward=True, any_frame=False)

    def _frames(self, wanted: set[int], fast: bool) -> Iterator[av.VideoFrame]:
        """Decoded frames from the current position; when `fast`, unwanted non-reference frames are dropped."""
        codec = self.stream.codec_context
        codec.skip_frame = "DEFAULT"
        for packet in self.container.demux(self.stream):
            if fast:
                needed = packet.pts is None or self.index_of(packet.pts) in wanted
                codec.skip_frame = "DEFAULT" if needed else "NONREF"
            yield from packet.decode()

    def _decode(self, wanted: list[int], fast: bool, from_start: bool = False) -> dict[int, np.ndarray] | None:
        """The wanted frames; None when a seek went past a wanted frame or (fast) a wanted timestamp is missing.

        Frames are matched by timestamp, whatever order the decoder gives them in (a stream with a wrong
        reorder depth shows some frames early). A wanted index with no frame of its own gets the next
        frame shown, once frames `REORDER_WINDOW` past it have come without it.
        """
        frames: dict[int, np.ndarray] = {}
        todo = list(wanted)  # sorted, not yet found
        stand_ins: dict[int, tuple[int, av.VideoFrame]] = {}  # wanted index -> the next frame shown after it
        last_index = -1
        if from_start:
            self.container.seek(self.start_pts, stream=self.stream, backward=True, any_frame=False)
        elif not self._at_start or wanted[0] > 0:
            self._seek(wanted[0])
        self._at_start = False
        while True:
            first_after_seek, corrupt = True, False
            for frame in self._frames(set(wanted), fast):
                corrupt = corrupt or (frame.is_corrupt and not from_start)
                if frame.pts is None:
                    continue
                index = self.index_of(frame.pts)
                if index < 0:  # shown before the stream's start time (pre-roll)
                    continue
                if first_after_seek and index > todo[0] and not from_start:
                    return None
                first_after_seek = False
                last_index = max(last_index, index)
                for w in todo:  # the earlier wanted indices still without a frame: this one may stand in
                    if w >= index:
                        break
                    if w not in stand_ins or index < stand_ins[w][0]:
                        stand_ins[w] = (index, frame)
                took = False
                if index in todo:
                    if corrupt:  # decoding after this seek went wrong, so this frame may be wrong too
                        raise _DecodeFromStartError
                    frames[index] = frame.to_ndarray(format="rgb24")
                    todo.remove(index)
                    stand_ins.pop(index, None)
                    took = True
                while todo and todo[0] in stand_ins and last_index >= todo[0] + REORDER_WINDOW:
                    if fast:  # the stand-in may have been skipped: decode again without skipping
                        return None
                    if corrupt:
                        raise _DecodeFromStartError
                    missing = todo.pop(0)
                    frames[missing] = stand_ins.pop(missing)[1].to_ndarray(format="rgb24")
                    took = True
                if not todo:
                    return frames
                if took and fast and not stand_ins and self._jump_target(last_index, todo[0]):
                    self._seek(todo[0])
                    break
            else:
                return self._at_end_of_stream(frames, todo, stand_ins, last_index, fast, corrupt)

    def _at_end_of_stream(self, frames: dict[int, np.ndarray], todo: list[int],
                          stand_ins: dict[int, tuple[int, av.VideoFrame]], last_index: int, fast: bool,
                          corrupt: bool) -> dict[int, np.ndarray] | None:
        """The stream ended with `todo` still wanted: their stand-ins, None (decode again without skipping), or
        the error that says why not."""
        if fast:  # skipped frames may have been the last ones: count them in a plain decode
            return None
        if corrupt:
            raise _DecodeFromStartError
        if all(w in stand_ins for w in todo):
            for w in todo:
                frames[w] = stand_ins[w][1].to_ndarray(format="rgb24")
            return frames
        raise VideoTooShortError(f"{self.path} ends at frame {last_index}, before frame {todo[0]}",
                                 num_frames=last_index + 1)

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
