"""Label propagation through a video: the context of past frames, affinities, top-k, weighted labels.

The labels of a target frame are a weighted sum of the labels of context cells: the first frame
(its given labels) and a queue of the last `queue_length` frames (their predicted soft labels).
For each target cell the affinity to a context cell is the dot product of their unit features over
the temperature; cells outside the neighbourhood (on the frames the protocol restricts) are left
out; the `topk` largest affinities over the whole context are kept, softmax-normalised, and their
labels averaged with those weights.

With the CRW protocol the queue starts full of copies of the first frame. Copies are kept once,
with a count: the top-k over the context is the top-k over the multiset, computed from the top-k
of the distinct cells (each value taken as many times as its frame is in the queue), so early
frames cost what later ones do instead of `queue_length` times more.

Affinities are computed for chunks of target cells so that at most `max_affinity_elements` floats
exist at once, whatever the frame size (whole blocks of 100 cells); the neighbourhood is computed per
chunk from cell coordinates (no cells x cells matrix). Memory does not grow with the length of the video.
The softmax and the weighted sum follow the CRW code's operations, so that they give its bits (equal
values decide JHMDB's joints; dataset/EVALUATION.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from ml.eval.protocols import Protocol

DEFAULT_MAX_AFFINITY_ELEMENTS = 1 << 25  # 128 MiB of float32 affinities at once
CRW_QUERY_BLOCK = 100  # query cells per softmax block in the CRW code (mem_efficient_batched_affinity's pbsize)


@dataclass
class _ContextFrame:
    keys: torch.Tensor  # (h*w, D) unit features
    labels: torch.Tensor  # (h*w, C)
    count: int  # how many times this frame is in the context (copies of the first frame)
    restricted: bool  # whether the neighbourhood applies to it


class LabelPropagator:
    """Propagates labels through a sequence, one frame at a time (the first frame given)."""

    def __init__(self, first_features: torch.Tensor, first_labels: torch.Tensor, protocol: Protocol,
                 max_affinity_elements: int = DEFAULT_MAX_AFFINITY_ELEMENTS) -> None:
        """first_features (h, w, D) unit vectors; first_labels (C, h, w) on the same grid."""
        h, w, D = first_features.shape
        if tuple(first_labels.shape[1:]) != (h, w):
            raise ValueError(f"labels on a {tuple(first_labels.shape[1:])} grid for features on a {(h, w)} grid")
        if max_affinity_elements < 1:
            raise ValueError("max_affinity_elements must be positive")
        self.protocol = protocol
        self.grid = (h, w)
        self.max_affinity_elements = max_affinity_elements
        device = first_features.device
        keys = first_features.reshape(h * w, D)
        labels = first_labels.to(device).flatten(1).T.contiguous()  # (h*w, C)
        queue_restricted = protocol.neighbourhood in ("queue", "all")
        self.first = _ContextFrame(keys, labels, 1, protocol.neighbourhood == "all")
        self.queue: list[_ContextFrame] = []
        if protocol.queue_start == "first_frame_copies" and protocol.queue_length > 0:
            self.queue.append(_ContextFrame(keys, labels, protocol.queue_length, queue_restricted))
        self._queue_restricted = queue_restricted
        yy, xx = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        self.cell_yx = torch.stack([yy.flatten(), xx.flatten()], dim=1)  # (h*w, 2)

    def context(self) -> list[_ContextFrame]:
        return [self.first, *self.queue]

    def step(self, features: torch.Tensor) -> torch.Tensor:
        """Features (h, w, D) of the next frame -> its soft labels (C, h, w); the frame joins the queue."""
        h, w, D = features.shape
        if (h, w) != self.grid:
            raise ValueError(f"frame features on a {(h, w)} grid, the sequence started on {self.grid}")
        query = features.reshape(h * w, D)
        pred = propagate(query, self.context(), self.cell_yx, self.protocol, self.max_affinity_elements)
        self._push(_ContextFrame(query, pred, 1, self._queue_restricted))
        return pred.T.reshape(-1, h, w)

    def _push(self, frame: _ContextFrame) -> None:
        if self.protocol.queue_length == 0:
            return
        self.queue.append(frame)
        while sum(f.count for f in self.queue) > self.protocol.queue_length:  # the oldest copy leaves
            self.queue[0].count -= 1
            if self.queue[0].count == 0:
                self.queue.pop(0)


def propagate(query: torch.Tensor, context: list[_ContextFrame], cell_yx: torch.Tensor, protocol: Protocol,
              max_affinity_elements: int = DEFAULT_MAX_AFFINITY_ELEMENTS) -> torch.Tensor:
    """Labels (Q, C) of query cells (Q, D) from the context frames (see the module's description)."""
    keys = torch.cat([f.keys for f in context])  # (K, D), each distinct frame once
    labels = torch.cat([f.labels for f in context])  # (K, C)
    cells = context[0].keys.shape[0]
    counts = torch.cat([torch.full((cells,), f.count, device=keys.device) for f in context])  # (K,)
    restricted = [f.restricted for f in context]
    repeated = bool((counts > 1).any())
    total = int(counts.sum())
    k = min(protocol.topk, total)
    Q, K = query.shape[0], keys.shape[0]
    chunk = max(1, max_affinity_elements // K)
    if chunk > CRW_QUERY_BLOCK:  # whole blocks, so that each block's softmax is the CRW code's (see _crw_softmax)
        chunk -= chunk % CRW_QUERY_BLOCK
    out = query.new_empty(Q, labels.shape[1])
    for start in range(0, Q, chunk):
        stop = min(Q, start + chunk)
        aff = query[start:stop] @ keys.T  # (q, K)
        aff /= protocol.temperature
        if any(restricted):
            outside = ~neighbourhood(cell_yx[start:stop], cell_yx, protocol)  # (q, cells)
            view = aff.view(stop - start, len(context), cells)
            for i, r in enumerate(restricted):
                if r:
                    view[:, i].masked_fill_(outside, float("-inf"))
        if protocol.topk_ties == "kth_value":
            out[start:stop] = _kth_value_weights(aff, k) @ labels
            continue
        values, index = aff.topk(min(k, K), dim=1)  # (q, k0), largest first
        del aff
        if repeated:  # the top-k of the multiset: each candidate taken `count` times, in order
            ends = counts[index].cumsum(1)  # (q, k0)
            slots = torch.arange(k, device=ends.device).expand(stop - start, k).contiguous()
            pick = torch.searchsorted(ends, slots, right=True)  # (q, k): which candidate fills each slot
            values, index = values.gather(1, pick), index.gather(1, pick)
        weights = _crw_softmax(values)
        # the CRW code's weighted sum, in its layout: (C, k, q) products summed over k (in float32 the order of
        # the additions shows in the last bit, and equal values decide the JHMDB joints' top-k)
        out[start:stop] = (labels.T[:, index.T.contiguous()] * weights.T.contiguous()[None]).sum(1).T
    return out


def _crw_softmax(values: torch.Tensor) -> torch.Tensor:
    """Softmax of each row of (q, k) top-k affinities, as the CRW code computes it (`mem_efficient_batched_affinity`):
    over the k dimension of a (k, 100) block of query cells (100 = its `pbsize`). torch's softmax over a dimension
    that is not the last computes the exp of the vectorised lanes and of the block's tail with different code,
    which differ in the last bit; the same blocks give the same bits."""
    return torch.cat([block.T.contiguous().softmax(dim=0).T for block in values.split(CRW_QUERY_BLOCK)])


def _kth_value_weights(aff: torch.Tensor, k: int) -> torch.Tensor:
    """(q, K) weights as DINO's label_propagation makes them (eval_video_segmentation.py): exp(affinity), every
    value below the k-th largest of its row set to 0 (ties at the k-th value kept), each row divided by its sum."""
    weights = aff.exp()  # DINO: torch.exp(bmm / 0.1); outside the neighbourhood exp(-inf) = 0, its mask product
    kth = weights.topk(min(k, weights.shape[1]), dim=1).values[:, -1:]  # (q, 1)
    weights[weights < kth] = 0
    return weights / weights.sum(dim=1, keepdim=True)


def neighbourhood(query_yx: torch.Tensor, key_yx: torch.Tensor, protocol: Protocol) -> torch.Tensor:
    """(q, K) bool: key cell within the protocol's neighbourhood of each query cell."""
    d = (query_yx[:, None, :] - key_yx[None, :, :]).abs()  # (q, K, 2)
    if protocol.neighbourhood_shape == "square":
        return (d <= protocol.radius).all(-1)
    return (d.float() ** 2).sum(-1) < protocol.radius ** 2


def propagate_sequence(features: Iterable[torch.Tensor], first_labels: torch.Tensor, protocol: Protocol,
                       max_affinity_elements: int = DEFAULT_MAX_AFFINITY_ELEMENTS) -> Iterator[torch.Tensor]:
    """Soft labels (C, h, w) of frames 1, 2, ... from per-frame features (frame 0 first) and frame 0's
    labels on the feature grid (C, h, w)."""
    it = iter(features)
    first = next(it)
    propagator = LabelPropagator(first, first_labels.to(first.device), protocol, max_affinity_elements)
    for feats in it:
        yield propagator.step(feats)
