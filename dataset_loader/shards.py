"""Preparing one tree on N machines: which videos a shard owns, its manifest, and the merge that checks them all.

    python -m dataset_loader.prepare SRC DST --shard 3/16     # on machine 3 of 16 (indices 1..N)
    python -m dataset_loader.prepare --merge DST              # once all 16 are done: checks them, writes the report

A video belongs to shard `1 + (first 8 bytes of SHA-1 of its path relative to SRC) mod N`. A hash of the path,
not the position in the sorted list: a video's owner then depends on its own path only, so a machine that
sees a video more or less than the others (a download still running, a missing file) moves no other video to
another shard, and a rerun after more files arrived leaves finished work where it is. The parts are equal
within a few percent for thousands of videos.

Each shard keeps `DST/.manifests/shard-I-of-N.json` (written whole, every 30 s and at the end): the videos it
owns with their state (todo, done, failed), bytes and frames, and a digest of the whole source listing, by which
the merge finds shards that saw different trees.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

from ml.files import atomic_file

from .video import FRAMES_SUFFIX

MANIFEST_DIR = ".manifests"
SPLIT_RULE = "1 + SHA-1(path relative to SRC, as POSIX) mod N, first 8 bytes big-endian"
_NAME = re.compile(r"shard-(\d+)-of-(\d+)\.json")


class ShardError(ValueError):
    """A bad --shard value, shards that do not fit together, or a merge that cannot be done yet."""


def parse_shard(text: str) -> tuple[int, int]:
    """"I/N" -> (I, N) with 1 <= I <= N; ShardError with one line otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if match is None:
        raise ShardError(f"--shard takes I/N (this machine's index from 1 to N, e.g. 3/16), got {text!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 1 <= index <= count:
        raise ShardError(f"--shard {text}: the index must be 1 to N and N at least 1 (e.g. 1/{max(count, 1)} to "
                         f"{max(count, 1)}/{max(count, 1)})")
    return index, count


def shard_of(relative: str, count: int) -> int:
    """The shard (1..count) that owns the video at `relative` (its path relative to SRC, POSIX)."""
    digest = hashlib.sha1(relative.encode("utf-8")).digest()
    return 1 + int.from_bytes(digest[:8], "big") % count


def listing_digest(relatives: list[str]) -> str:
    """SHA-1 of the sorted source listing: shards that saw the same tree agree on it."""
    return hashlib.sha1("\n".join(sorted(relatives)).encode("utf-8")).hexdigest()


def manifest_path(dst: Path, index: int, count: int) -> Path:
    return dst / MANIFEST_DIR / f"shard-{index}-of-{count}.json"


def lock_path(dst: Path, index: int, count: int) -> Path:
    """One lock per shard: shards of one tree run side by side, a shard runs once at a time."""
    return dst / MANIFEST_DIR / f"shard-{index}-of-{count}.lock"


def existing_manifests(dst: Path) -> dict[tuple[int, int], Path]:
    """{(I, N): path} of the shard manifests in DST."""
    folder = dst / MANIFEST_DIR
    found = {}
    if folder.is_dir():
        for path in folder.iterdir():
            match = _NAME.fullmatch(path.name)
            if match:
                found[int(match.group(1)), int(match.group(2))] = path
    return found


def check_shard_count(dst: Path, count: int) -> None:
    """Refuse shards of another N in DST: their parts would overlap this split's."""
    others = sorted({n for _, n in existing_manifests(dst)} - {count})
    if others:
        raise ShardError(f"{dst} already holds shards of {others[0]} ({dst / MANIFEST_DIR}/shard-*-of-{others[0]}"
                         f".json): continue with --shard I/{others[0]}, or choose another DST")


class Manifest:
    """One shard's record: the videos it owns and their state, written whole (atomically) as it goes."""

    def __init__(self, dst: Path, index: int, count: int, source: Path, relatives: list[str], settings: dict,
                 owned: dict[str, int]) -> None:
        self.path = manifest_path(dst, index, count)
        self.data = {"shard": index, "of": count, "split": SPLIT_RULE, "source": str(source), "settings": settings,
                     "source_videos": len(relatives), "source_digest": listing_digest(relatives), "complete": False,
                     "lists": [], "videos": {rel: {"status": "todo", "source_bytes": size}
                                             for rel, size in sorted(owned.items())}}
        self._written = 0.0

    def record(self, relative: str, result: dict) -> None:
        """A video's outcome (`prepare`'s per-video result: status kept/done/unreadable, frames, bytes, reason)."""
        entry = self.data["videos"][relative]
        entry.pop("reason", None)
        if result["status"] == "unreadable":
            entry.update(status="failed", reason=result["reason"], bytes=0, frames=0)
        else:
            entry.update(status="done", bytes=result["bytes"], frames=result["frames"])

    def totals(self) -> dict:
        states = [v["status"] for v in self.data["videos"].values()]
        done = [v for v in self.data["videos"].values() if v["status"] == "done"]
        return {"owned": len(states), "done": states.count("done"), "failed": states.count("failed"),
                "todo": states.count("todo"), "bytes": sum(v["bytes"] for v in done),
                "frames": sum(v["frames"] for v in done),
                "source_bytes": sum(v["source_bytes"] for v in self.data["videos"].values())}

    def write(self, every: float = 0.0) -> None:
        """Write it whole, at most once per `every` seconds (0: now)."""
        if every and time.monotonic() - self._written < every:
            return
        totals = self.totals()
        self.data.update(totals, complete=totals["todo"] == 0,
                         updated=time.strftime("%Y-%m-%d %H:%M:%S %Z"), host=os.uname().nodename)
        with atomic_file(self.path, "w") as f:
            f.write(json.dumps(self.data, indent=1))
        self._written = time.monotonic()


def _read(path: Path, index: int, count: int) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ShardError(f"shard {index}/{count}'s manifest {path} cannot be read ({err}): run that shard again"
                         ) from None


def merge_shards(dst: str | os.PathLike) -> tuple[dict, dict]:
    """Check that every shard of DST is present, finished and agrees with the others; -> (settings, report) of the
    whole tree, as an un-sharded `prepare` writes them. ShardError (one line) on the first problem; reads only
    the manifests and the sizes of the prepared files."""
    dst = Path(dst)
    found = existing_manifests(dst)
    if not found:
        raise ShardError(f"no shard manifests in {dst / MANIFEST_DIR}: run `python -m dataset_loader.prepare SRC DST "
                         f"--shard I/N` for I = 1..N first")
    counts = sorted({n for _, n in found})
    if len(counts) > 1:
        raise ShardError(f"{dst / MANIFEST_DIR} holds shards of {' and '.join(map(str, counts))}: one tree takes one N")
    count = counts[0]
    missing = [i for i in range(1, count + 1) if (i, count) not in found]
    if missing:
        raise ShardError(f"shard(s) {', '.join(map(str, missing))} of {count} missing (no manifest): run `python -m "
                         f"dataset_loader.prepare SRC DST --shard I/{count}` for each")
    shards = [_read(found[i, count], i, count) for i in range(1, count + 1)]
    for shard in shards:
        if not shard.get("complete"):
            raise ShardError(f"shard {shard['shard']}/{count} is not finished ({shard.get('todo', '?')} of "
                             f"{len(shard['videos'])} videos to do): run it again")
    _check_agreement(shards, count)
    _check_files(dst, shards, count)
    return shards[0]["settings"], _merged_report(dst, shards)


def _check_agreement(shards: list[dict], count: int) -> None:
    first = shards[0]
    for shard in shards[1:]:
        if shard["settings"] != first["settings"]:
            raise ShardError(f"shards 1/{count} and {shard['shard']}/{count} were prepared with different settings "
                             f"({first['settings']} and {shard['settings']}): run one again with the other's")
        if shard["source_digest"] != first["source_digest"]:
            raise ShardError(f"shards 1/{count} and {shard['shard']}/{count} saw different source trees "
                             f"({first['source_videos']} and {shard['source_videos']} videos): give every shard the "
                             f"same SRC and run the ones that differ again")
    owned = sum(len(s["videos"]) for s in shards)
    if owned != first["source_videos"] or len({r for s in shards for r in s["videos"]}) != owned:
        raise ShardError(f"the shards own {owned} videos of a tree of {first['source_videos']}: not one split")


def _check_files(dst: Path, shards: list[dict], count: int) -> None:
    """Every file a manifest lists as done is there with its size (a stat each; `--verify DST` reads them)."""
    wrong = [(s["shard"], rel) for s in shards for rel, v in s["videos"].items() if v["status"] == "done" and
             _size((dst / rel).with_suffix(FRAMES_SUFFIX)) != v["bytes"]]
    if wrong:
        shard, rel = wrong[0]
        raise ShardError(f"{len(wrong)} prepared file(s) listed as done are missing or changed, e.g. "
                         f"{(dst / rel).with_suffix(FRAMES_SUFFIX)} (shard {shard}/{count}): run that shard again")
    lists = [dst / rel for s in shards for rel in s.get("lists", []) if not (dst / rel).is_file()]
    if lists:
        raise ShardError(f"{lists[0]} (an annotation or list file shard 1/{count} copied) is missing: run shard "
                         f"1/{count} again")


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _merged_report(dst: Path, shards: list[dict]) -> dict:
    """The report an un-sharded `prepare` writes (DST/prepare_report.json), summed over the shards."""
    settings, source = shards[0]["settings"], Path(shards[0]["source"])
    failed = [{"path": str(source / rel), "reason": v["reason"]} for s in shards for rel, v in s["videos"].items()
              if v["status"] == "failed"]
    return {"source": str(source), "prepared": str(dst), **settings, "shards": len(shards),
            "videos": sum(len(s["videos"]) for s in shards),
            "prepared_files": sum(s["done"] for s in shards), "unreadable": sorted(failed, key=lambda r: r["path"]),
            "frames": sum(s["frames"] for s in shards), "bytes_before": sum(s["source_bytes"] for s in shards),
            "bytes_after": sum(s["bytes"] for s in shards)}
