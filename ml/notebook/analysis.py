"""What a SiamMAE has learned, measured on fixed frame pairs: does the decoder use the past frame, and where
does it look in it.

- `f1_ablation`: the masked-patch loss of f2 when the decoder is given, as f1, the true past frame, a
  frame of another video, a grey frame, or f2 itself; the same pairs and the same masks in every row.
  A decoder that ignores f1 scores the same in every row; one that reads f1 does worse with another
  video's frame; one that has learnt to copy from f1 does best when f1 is f2 itself.
- `cross_attention`: the attention weights of the decoder's cross-attention (queries: f2's patches,
  keys: f1's patches), read from the model's own layer (`CrossAttention.keep_attention`).
- `attention_locality`: how often a masked patch's attention peaks near its own position in f1.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from dataset_loader.dataset import KineticsFramePairs
from dataset_loader.random_temporal_subsample import MAX_GAP, MIN_GAP
from dataset_loader.transforms import IMAGENET_MEAN, IMAGENET_STD
from ml.model import fixed_masks

F1_CONDITIONS = ("the true past frame", "a frame of another video", "a grey frame", "f2 itself")
MASK_SEED = 0  # the masks every measurement here uses


@dataclass(frozen=True)
class FixedPairs:
    """Frame pairs of one split, without augmentation, the same every time: f1, f2 (N, 3, S, S) normalised."""

    split: str
    f1: torch.Tensor
    f2: torch.Tensor
    videos: tuple[str, ...]  # the video of each pair
    indices: tuple[tuple[int, int], ...]  # the frames of each pair

    def __len__(self) -> int:
        return len(self.videos)


def fixed_pairs(data: str, split: str, img_size: int, pairs_per_video: int = 4, seed: int = 0,
                min_gap: int = MIN_GAP, max_gap: int = MAX_GAP) -> FixedPairs:
    """`pairs_per_video` fixed pairs (centre crop, no flip) from every video of `split` of the folder `data`."""
    if pairs_per_video < 1:
        raise ValueError(f"pairs_per_video must be at least 1, got {pairs_per_video}")
    dataset = KineticsFramePairs(data, split=split, img_size=img_size, augment=False, fixed_pairs=True,
                                 repeated_sampling=pairs_per_video, seed=seed, min_gap=min_gap, max_gap=max_gap)
    f1s, f2s, videos, indices = [], [], [], []
    for i in range(len(dataset)):
        info = dataset.describe(i)
        pairs = info["indices"] if pairs_per_video > 1 else [info["indices"]]
        f1, f2 = (info["f1"], info["f2"]) if pairs_per_video > 1 else (info["f1"][None], info["f2"][None])
        f1s.append(f1)
        f2s.append(f2)
        videos += [info["video"]] * len(pairs)
        indices += [tuple(int(k) for k in p) for p in pairs]
    return FixedPairs(split, torch.cat(f1s), torch.cat(f2s), tuple(videos), tuple(indices))


def grey_frames(like: torch.Tensor) -> torch.Tensor:
    """Mid-grey frames (0.5 in every channel) in the normalised space of `like` (N, 3, H, W)."""
    grey = (0.5 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    return grey.view(1, 3, 1, 1).to(like).expand_as(like).clone()


def other_video_frames(pairs: FixedPairs) -> torch.Tensor:
    """For each pair, the f1 of a pair from another video (deterministic: spread over the other videos)."""
    chosen = []
    for i, video in enumerate(pairs.videos):
        others = [j for j, v in enumerate(pairs.videos) if v != video]
        if not others:
            raise ValueError(f"split {pairs.split!r} has pairs of one video only: no other video's frame to give")
        chosen.append(others[(i * 7919) % len(others)])  # a large prime spreads the picks over the others
    return pairs.f1[chosen]


def f1_substitutes(pairs: FixedPairs) -> dict[str, torch.Tensor]:
    """What the decoder is given as f1 in each row of the ablation, by condition name (F1_CONDITIONS)."""
    return dict(zip(F1_CONDITIONS, (pairs.f1, other_video_frames(pairs), grey_frames(pairs.f1), pairs.f2)))


@torch.no_grad()
def masked_patch_loss(model: torch.nn.Module, f1: torch.Tensor, f2: torch.Tensor, mask_seed: int = MASK_SEED,
                      batch_size: int = 64) -> float:
    """The model's loss on f2's masked patches, over all pairs, with the masks of `mask_seed` (the same masks for
    the same number of pairs, whatever f1 is)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with fixed_masks(model, mask_seed):
        for start in range(0, len(f2), batch_size):
            a, b = f1[start:start + batch_size].to(device), f2[start:start + batch_size].to(device)
            loss, _, _ = model(a, b)
            total += float(loss) * len(b)  # every pair has as many masked patches: the mean of means
            count += len(b)
    return total / count


def f1_ablation(model: torch.nn.Module, pairs: Mapping[str, FixedPairs] | FixedPairs,
                mask_seed: int = MASK_SEED) -> dict[str, dict[str, float]]:
    """{condition: {split: masked-patch loss}} for each f1 of F1_CONDITIONS, on each set of pairs."""
    sets = {pairs.split: pairs} if isinstance(pairs, FixedPairs) else dict(pairs)
    table: dict[str, dict[str, float]] = {c: {} for c in F1_CONDITIONS}
    for split, fixed in sets.items():
        for condition, f1 in f1_substitutes(fixed).items():
            table[condition][split] = masked_patch_loss(model, f1, fixed.f2, mask_seed)
    return table


def format_f1_ablation(table: Mapping[str, Mapping[str, float]], pairs: Mapping[str, FixedPairs] | None = None) -> str:
    """A markdown table of `f1_ablation`'s losses, with each row's difference to the true past frame."""
    splits = list(next(iter(table.values())))
    head = [f"{s} ({len(pairs[s])} pairs)" if pairs and s in pairs else s for s in splits]
    lines = ["| f1 given to the decoder | " + " | ".join(head) + " |", "|---" + "|---" * len(splits) + "|"]
    true = table[F1_CONDITIONS[0]]
    for condition, row in table.items():
        cells = [f"{row[s]:.3f}" + ("" if condition == F1_CONDITIONS[0] else f" ({row[s] - true[s]:+.3f})")
                 for s in splits]
        lines.append(f"| {condition} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- cross-attention
@contextmanager
def kept_cross_attention(model: torch.nn.Module, block: int = -1) -> Iterator[torch.nn.Module]:
    """Within the block, the cross-attention layer of decoder block `block` keeps its weights (`.attention`)."""
    decoder = model.decoder
    if getattr(decoder, "decoder_type", None) == "joint":
        raise ValueError("a joint decoder has no cross-attention layer (its blocks attend over both frames at once)")
    layer = decoder.blocks[block].cross_attn
    layer.keep_attention = True
    try:
        yield layer
    finally:
        layer.keep_attention = False
        layer.attention = None


@torch.no_grad()
def cross_attention(model: torch.nn.Module, f1: torch.Tensor, f2: torch.Tensor, block: int = -1,
                    mask_seed: int = MASK_SEED) -> dict:
    """The decoder's cross-attention over f1 for every patch of f2, for one pair f1, f2 (3, S, S).

    -> {"attention": (heads, L, L) weights, row = f2's patch (query), column = f1's patch (key), the cls
    tokens left out and each row renormalised over f1's patches; "mask": (L,) 1 = masked patch of f2;
    "grid": (h, w); "loss": the pair's masked-patch loss}. The masks are those of `mask_seed`.
    """
    if getattr(model, "f1_mask_ratio", 0) > 0:
        raise ValueError("cross-attention maps need a model that sees f1 whole (f1_mask_ratio 0)")
    device = next(model.parameters()).device
    with kept_cross_attention(model, block) as layer, fixed_masks(model, mask_seed):
        loss, _, mask = model(f1[None].to(device), f2[None].to(device))
        weights = layer.attention[0, :, 1:, 1:].float().cpu()  # (heads, L, L): f2's patches over f1's
    p = model.patch_size
    grid = (f2.shape[-2] // p, f2.shape[-1] // p)
    return {"attention": weights / weights.sum(-1, keepdim=True), "mask": mask[0].cpu(), "grid": grid,
            "loss": float(loss)}


def textured_masked_patches(f2: torch.Tensor, mask: torch.Tensor, patch_size: int, count: int = 3) -> list[int]:
    """`count` masked patches of f2 (3, H, W) with the most texture (pixel spread), not touching each other."""
    w = f2.shape[-1] // patch_size
    patches = f2.unfold(1, patch_size, patch_size).unfold(2, patch_size, patch_size)  # (3, h, w, p, p)
    spread = patches.permute(1, 2, 0, 3, 4).flatten(2).std(-1).flatten()  # (L,)
    chosen: list[int] = []
    for i in spread.argsort(descending=True).tolist():
        if mask[i] > 0 and all(max(abs(i // w - j // w), abs(i % w - j % w)) > 1 for j in chosen):
            chosen.append(i)
        if len(chosen) == count:
            break
    return chosen


@torch.no_grad()
def attention_locality(model: torch.nn.Module, pairs: FixedPairs, radius: int = 1, block: int = -1) -> dict:
    """Over every masked patch of every pair: how often the cross-attention (mean over heads) peaks within
    `radius` patches (Chebyshev distance) of the patch's own position in f1, and the mean attention mass
    there; with what a uniform attention would give. In a short gap most content moves less than a
    patch, so a decoder that copies from f1 looks near there."""
    hits, mass, total, uniform = 0, 0.0, 0, 0.0
    for k in range(len(pairs)):
        result = cross_attention(model, pairs.f1[k], pairs.f2[k], block)
        h, w = result["grid"]
        attention = result["attention"].mean(0)  # (L, L)
        rows = torch.arange(h * w) // w
        cols = torch.arange(h * w) % w
        near = ((rows[:, None] - rows[None]).abs() <= radius) & ((cols[:, None] - cols[None]).abs() <= radius)
        for q in torch.nonzero(result["mask"] > 0).flatten().tolist():
            peak = int(attention[q].argmax())
            hits += bool(near[q, peak])
            mass += float(attention[q][near[q]].sum())
            uniform += float(near[q].sum()) / (h * w)
            total += 1
    return {"peak_near": hits / total, "mass_near": mass / total, "uniform": uniform / total, "patches": total}
