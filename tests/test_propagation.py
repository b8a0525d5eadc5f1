"""Label propagation's parts: the protocols, the propagation core against brute force, label images, and the CRW
algorithm written out."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import mae
from ml.eval import get_protocol, load_encoder, run_evaluation
from ml.eval.data import davis_palette, read_label_png, write_label_png
from ml.eval.features import (
    FeatureExtractor,
    input_size,
    labels_from_grid,
    labels_to_grid,
    load_frame,
    one_hot,
    resize_ids,
)
from ml.eval.plots import overlay_labels
from ml.eval.propagation import LabelPropagator, propagate
from ml.eval.protocols import IMAGENET_STD, TABLE_END, TABLE_START, Protocol, protocol_table
from tests.conftest import REPO, native


# ----------------------------------------------------------------- protocols
def test_protocols_hold_the_published_parameters() -> None:
    crw = {d: get_protocol("crw", d) for d in ("davis", "vip", "jhmdb")}
    assert [crw[d].topk for d in ("davis", "vip", "jhmdb")] == [7, 10, 7]
    assert [crw[d].radius for d in ("davis", "vip", "jhmdb")] == [20.0, 8.0, 20.0]
    assert all(p.queue_length == 20 and p.temperature == 0.7 and p.queue_start == "first_frame_copies"
               for p in crw.values())
    assert crw["davis"].size == (480, 880) and crw["jhmdb"].size == (320, 320)
    assert (crw["vip"].size_rule, crw["vip"].size, crw["vip"].score_first_frame) == ("long_side_64", 880, True)
    dino = get_protocol("dino", "davis")
    assert (dino.temperature, dino.topk, dino.queue_length, dino.radius, dino.neighbourhood_shape, dino.norm_mask) == (
        0.1, 5, 7, 12.0, "square", True)
    causal = get_protocol("causal", "davis")
    assert (causal.queue_start, causal.labels_to_grid, causal.size_rule) == ("empty", "area", "native")
    with pytest.raises(ValueError, match="dino is defined for davis only"):
        get_protocol("dino", "jhmdb")
    for changes, message in (({"temperature": float("nan")}, "--temperature"), ({"radius": 0.0}, "--radius"),
                             ({"radius": float("inf")}, "--radius"), ({"topk": 0}, "--topk"),
                             ({"queue_length": -1}, "--queue-length"), ({"size": (7, -7)}, "--size")):
        with pytest.raises(ValueError, match=message):
            get_protocol("crw", "davis", **changes)
    with pytest.raises(ValueError, match="unknown protocol field"):
        get_protocol("crw", "davis", top_k=3)


def test_input_size_rules() -> None:
    assert input_size((480, 854), 16, get_protocol("crw", "davis")) == (480, 880)
    assert input_size((720, 1280), 16, get_protocol("crw", "vip")) == (448, 880)  # 495 floored to 448
    assert input_size((480, 854), 16, get_protocol("dino", "davis")) == (480, 832)
    assert input_size((480, 854), 16, native("causal")) == (480, 848)
    assert input_size((480, 854), 8, native("causal")) == (480, 856)
    assert input_size((720, 1280), 16, get_protocol("causal", "davis", size_rule="short_side", size=560)) == (560, 992)
    for size in ((7, 7), (20, 40)):  # not whole patches
        with pytest.raises(ValueError, match="--size: frames of 480x854 become"):
            input_size((480, 854), 16, get_protocol("crw", "davis", size=size))


def test_the_protocol_table_of_the_evaluation_doc_is_the_code() -> None:
    """dataset/EVALUATION.md's table of every protocol field equals what the protocol definitions give."""
    text = (REPO / "dataset" / "EVALUATION.md").read_text()
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    assert text[start:end].strip() == protocol_table(), "run: python -m ml.evaluate protocols --write " \
                                                        "dataset/EVALUATION.md"
    rows = {line.split(" | ")[0].strip("| `"): line for line in protocol_table().splitlines()[2:]}
    assert set(rows) == {f.name for f in dataclasses.fields(Protocol)} - {"name", "dataset"}
    assert rows["topk_ties"].endswith("| kth_value |") and rows["resize"].endswith("| opencv_uint8 |")


# ----------------------------------------------------------------- propagation core
def test_softmax_over_the_top_k_by_hand() -> None:
    protocol = native("causal", temperature=0.5, topk=2, neighbourhood="none")
    query = torch.tensor([[1.0, 0.0]])
    prop = LabelPropagator(torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]]),
                           torch.tensor([[[1.0, 0.0, 0.5]], [[0.0, 1.0, 0.5]]]), protocol)
    out = propagate(query, prop.context(), prop.cell_yx[:1], protocol)
    w = math.exp(2) / (math.exp(2) + 1)  # logits 1/0.5 and 0/0.5; the third key is not in the top 2
    assert out[0].tolist() == pytest.approx([w, 1 - w], abs=1e-6)


def test_dino_keeps_every_affinity_tied_at_the_kth_value() -> None:
    """DINO's label_propagation: exp(affinity / T), everything below the k-th largest set to 0 (ties at the k-th
    value stay), rows divided by their sum. Two keys tie for the 2nd place: with top-2, both count."""
    protocol = native("dino", topk=2, neighbourhood="none")
    keys = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.6, -0.8], [-1.0, 0.0]]])  # (1, 4, 2): keys 1 and 2 tie
    labels = torch.eye(4).reshape(4, 1, 4)  # each key its own class
    prop = LabelPropagator(keys, labels, protocol)
    out = propagate(torch.tensor([[1.0, 0.0]]), prop.context(), prop.cell_yx[:1], protocol)
    e0, e1 = math.exp(1.0 / 0.1), math.exp(0.6 / 0.1)
    assert out[0].tolist() == pytest.approx([e0 / (e0 + 2 * e1), e1 / (e0 + 2 * e1), e1 / (e0 + 2 * e1), 0.0])
    exact = propagate(torch.tensor([[1.0, 0.0]]), prop.context(), prop.cell_yx[:1],
                      protocol.replace(topk_ties="exact_k"))
    assert sorted(exact[0].tolist())[1] == 0.0  # exactly two keys: one of the tied pair is dropped


def test_dino_resizes_the_8_bit_frame_with_opencv(tmp_path: Path) -> None:
    """The dino protocol's input is OpenCV's fixed-point INTER_LINEAR of the 8-bit frame (whole grey levels), as
    DINO's read_frame; the crw protocol's is the float formula of the same interpolation."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "f.png")
    size = (32, 64)
    expected = torch.from_numpy(cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)).permute(2, 0, 1)
    dino = load_frame(tmp_path / "f.png", size, get_protocol("dino", "davis").resize)
    assert torch.equal(dino, expected.float() / 255.0)
    crw = load_frame(tmp_path / "f.png", size, get_protocol("crw", "davis").resize)
    assert not torch.equal(crw, dino) and float((crw - dino).abs().max()) <= 1.0 / 255
    # the CRW code's: OpenCV's INTER_LINEAR on the float frame, to the last bit
    floats = cv2.resize(image.astype(np.float32) / 255.0, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    assert torch.equal(crw, torch.from_numpy(floats).permute(2, 0, 1))


def brute_force_step(frames: list[tuple[torch.Tensor, torch.Tensor, bool]], query: torch.Tensor,
                     grid: tuple[int, int], protocol) -> torch.Tensor:
    """Every context frame written out (copies included), full affinity, top-k, softmax: (Q, C)."""
    yy, xx = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    yx = torch.stack([yy.flatten(), xx.flatten()], 1).float()
    near = torch.cdist(yx, yx) < protocol.radius
    affinities = []
    for keys, _, restricted in frames:
        a = query @ keys.T / protocol.temperature
        affinities.append(a.masked_fill(~near, -1e10) if restricted else a)
    a = torch.cat(affinities, 1)
    labels = torch.cat([lab for _, lab, _ in frames])
    w, i = a.topk(protocol.topk, dim=1)
    return torch.einsum("qk,qkc->qc", w.softmax(1), labels[i])


def test_copies_of_the_first_frame_count_as_many_times_as_they_are_in_the_queue() -> None:
    """The multiset top-k over a queue of copies (kept once, with a count) equals the top-k over every copy."""
    g = torch.Generator().manual_seed(0)
    grid, D, C = (4, 6), 8, 3
    protocol = get_protocol("crw", "davis", topk=9, queue_length=5, radius=2.5)
    unit = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    first, first_labels = unit(*grid, D), torch.rand(C, *grid, generator=g)
    prop = LabelPropagator(first, first_labels, protocol)
    keys0, labels0 = first.reshape(-1, D), first_labels.flatten(1).T
    written = [(keys0, labels0, False)] + [(keys0, labels0, True)] * 5
    for step in range(7):
        target = unit(*grid, D)
        ours = prop.step(target).flatten(1).T
        expected = brute_force_step(written, target.reshape(-1, D), grid, protocol)
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5, msg=f"step {step}")
        written = [written[0]] + written[2:] + [(target.reshape(-1, D), expected, True)]
    assert sum(f.count for f in prop.queue) == 5 and len(prop.queue) == 5  # the copies have all left


def crw_code_step(keys: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, grid: tuple[int, int],
                  protocol: Protocol) -> torch.Tensor:
    """One target frame as the CRW code computes it (CropMAE's src/test.py and mem_efficient_batched_affinity),
    in its shapes: keys (F, hw, D) of the context frames (the first unrestricted), labels (F, hw, C), query
    (hw, D) -> (C, hw)."""
    F_, hw, _ = keys.shape
    yy, xx = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    yx = torch.stack([yy.flatten(), xx.flatten()], 1).float()
    mask = torch.where(torch.cdist(yx, yx) < protocol.radius, 0.0, -1e10)[None]  # (1, key cells, query cells)
    k, q = keys.permute(2, 0, 1)[None, :, None], query.T[None, :, None]  # (1, D, 1, F, hw), (1, D, 1, hw)
    Ws, Is = [], []
    for pb in range(0, hw, 100):
        A = torch.einsum("ijklm,ijkn->iklmn", k, q[..., pb:pb + 100])
        A[0, :, 1:] += mask[..., pb:pb + 100]
        A = A.view(1, F_ * hw, -1)
        A /= protocol.temperature
        w, i = torch.topk(A, protocol.topk, dim=-2)
        Ws.append(F.softmax(w, dim=-2))
        Is.append(i)
    W, Ind = torch.cat(Ws, -1)[0], torch.cat(Is, -1)[0]  # (k, hw)
    ctx = labels.flatten(0, 1).transpose(0, 1)  # (C, F*hw)
    return (ctx[:, Ind] * W[None]).sum(1)


def test_crw_weights_and_sums_are_the_crw_codes_to_the_bit() -> None:
    """Equal propagated values decide which cells make a JHMDB joint's top-5, so the crw protocol computes the
    softmax and the weighted sum as the CRW code does (its blocks of 100 query cells, its layout) and gets its
    bits: 250 cells (two blocks and a tail), a queue of copies, three steps."""
    g = torch.Generator().manual_seed(3)
    grid, D, C = (10, 25), 16, 5
    protocol = get_protocol("crw", "jhmdb", radius=4.0)
    unit = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    first, first_labels = unit(*grid, D), torch.rand(C, *grid, generator=g)
    prop = LabelPropagator(first, first_labels, protocol)
    keys, labels = [first.reshape(-1, D)], [first_labels.flatten(1).T]
    for step in range(1, 4):
        target = unit(*grid, D)
        # the CRW code's context of frame `step`: the first frame, then 20 frames of its padded video
        context = [0] + [0] * (20 - step) + list(range(step))
        expected = crw_code_step(torch.stack([keys[i] for i in context]), torch.stack([labels[i] for i in context]),
                                 target.reshape(-1, D), grid, protocol)
        ours = prop.step(target).flatten(1)
        assert torch.equal(ours, expected), f"step {step}: {int((ours != expected).sum())} values differ"
        keys.append(target.reshape(-1, D))
        labels.append(expected.T.contiguous())


def test_chunked_affinity_gives_the_same_labels() -> None:
    g = torch.Generator().manual_seed(1)
    feats = F.normalize(torch.randn(3, 6, 10, 8, generator=g), dim=-1)
    results = []
    for elements in (1 << 25, 500):
        prop = LabelPropagator(feats[0], torch.rand(4, 6, 10, generator=torch.Generator().manual_seed(2)),
                               get_protocol("crw", "davis", radius=3.0), max_affinity_elements=elements)
        results.append([prop.step(f) for f in feats[1:]])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_neighbourhood_rules_restrict_the_right_frames() -> None:
    """A distinctive cell of the first frame, 4 cells from the target: found unless the first frame is restricted."""
    grid, D = (1, 5), 2
    feats = torch.tensor([[0.0, 1.0]]).repeat(5, 1)
    first = feats.clone()
    first[0] = torch.tensor([1.0, 0.0])
    first_labels = torch.zeros(2, 1, 5)
    first_labels[0] = 1
    first_labels[:, 0, 0] = torch.tensor([0.0, 1.0])  # class 1 only at the distinctive cell
    target = feats.clone()
    target[4] = torch.tensor([1.0, 0.0])
    for neighbourhood, shape, expected in (("queue", "disk", 1.0), ("all", "disk", 0.0), ("none", "disk", 1.0),
                                           ("all", "square", 0.0)):
        protocol = native("causal", temperature=0.01, topk=1, radius=2.0, neighbourhood=neighbourhood,
                          neighbourhood_shape=shape)
        out = LabelPropagator(first.reshape(*grid, D), first_labels, protocol).step(target.reshape(*grid, D))
        assert out[1, 0, 4].item() == pytest.approx(expected), (neighbourhood, shape)
    # the square reaches the corner cells the disk leaves out: (2, 2) is 2.83 cells away
    protocol = native("dino", radius=2.0)
    corner = LabelPropagator(torch.zeros(3, 3, 2), torch.zeros(1, 3, 3), protocol)
    from ml.eval.propagation import neighbourhood as within
    assert within(corner.cell_yx[:1], corner.cell_yx, protocol).all()
    assert not within(corner.cell_yx[:1], corner.cell_yx, native("causal", radius=2.0))[0, 8]


def test_label_resizing_rules_match_opencv_and_pil() -> None:
    ids = np.arange(20, dtype=np.uint8).reshape(4, 5)
    floor = resize_ids(ids, (8, 11), "floor").numpy()
    rows, cols = (np.arange(8) * 4 / 8).astype(int), (np.arange(11) * 5 / 11).astype(int)  # OpenCV INTER_NEAREST
    assert (floor == ids[rows][:, cols]).all()
    centre = resize_ids(ids, (3, 7), "centre").numpy()
    assert (centre == np.asarray(Image.fromarray(ids).resize((7, 3), Image.NEAREST))).all()
    void = np.array([[0, 255], [1, 1]], np.uint8)
    assert one_hot(void, 2, "none")[:, 0, 1].tolist() == [0, 0]
    assert one_hot(void, 2, "background")[:, 0, 1].tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"label ids \[1\]"):
        one_hot(void, 1)
    # CRW: ids nearest-resized to the input, one-hot, bilinear (no antialias) to the grid
    crw = get_protocol("crw", "davis")
    grid = labels_to_grid(np.kron(np.eye(2, dtype=np.uint8), np.ones((8, 8), np.uint8)), 2, (16, 16), (4, 4), crw)
    assert grid[1].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    soft = torch.zeros(2, 2, 2)
    soft[1, 0, 0] = 1.0
    soft[0] = 1 - soft[1]
    out = labels_from_grid(soft, (8, 8), (5, 9), crw)  # bilinear to 8x8, argmax, nearest (floor) to 5x9
    assert out.shape == (5, 9) and out[0, 0] == 1 and out[-1, -1] == 0


def test_feature_extractor_gives_unit_patch_tokens_and_names_a_broken_frame(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = mae.MAEEncoder(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2)
    protocol = native("crw")
    extractor = FeatureExtractor(encoder, protocol)
    frames = torch.rand(2, 3, 48, 80)
    feats = extractor(frames)
    assert feats.shape == (2, 3, 5, 32) and encoder.training  # evaluated in eval mode, left as it was
    x = (frames - torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        tokens = encoder.forward_features(x, pos_mode="dino")[:, 1:]  # cls dropped, DINO's position interpolation
    assert torch.allclose(feats.reshape(2, 15, 32), F.normalize(tokens, dim=-1), atol=1e-5)
    with pytest.raises(TypeError, match="forward_features"):
        FeatureExtractor(torch.nn.Linear(2, 2), protocol)
    with torch.no_grad():
        encoder.blocks[0].mlp.fc1.weight[0, 0] = float("nan")
    Image.new("RGB", (80, 48)).save(tmp_path / "00007.jpg")
    with pytest.raises(ValueError, match=r"non-finite features for .*00007.jpg"):
        next(extractor.iter_frame_features([tmp_path / "00007.jpg"], (48, 80)))


# ----------------------------------------------------------------- label images
def test_png_write_and_read_keep_palette_and_ids(tmp_path: Path) -> None:
    ids = np.arange(12, dtype=np.uint8).reshape(3, 4)
    ids[0, 0] = 255
    custom = [7, 8, 9] + davis_palette()[3:]
    write_label_png(tmp_path / "a.png", ids, custom)
    back, palette = read_label_png(tmp_path / "a.png")
    assert (back == ids).all() and palette[:768] == custom
    assert davis_palette()[:12] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0]
    Image.new("RGB", (4, 3)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="not a label image"):
        read_label_png(tmp_path / "rgb.png")
    out = overlay_labels(np.full((2, 2, 3), 100, np.uint8), np.array([[0, 1], [2, 255]], np.uint8), alpha=0.5)
    assert out[0, 0].tolist() == [100, 100, 100] and out[1, 1].tolist() == [100, 100, 100]
    assert out[0, 1].tolist() == [114, 50, 50] and out[1, 0].tolist() == [50, 114, 50]


# ----------------------------------------------------------------- the CRW algorithm, written out
def crw_brute_force(encoder: mae.MAEEncoder, davis: Path, L: int = 20, K: int = 7, T: float = 0.7,
                    R: float = 20.0, size: tuple[int, int] = (480, 880)) -> np.ndarray:
    """The CRW test code's label propagation on one DAVIS sequence, as plainly as it can be written.

    The frame list is padded with L copies of the first frame; every target's context is the first frame
    (long-term memory, unrestricted) and the L frames before it in the padded list (restricted to a
    radius); the first L have the first frame's labels. Frames: float bilinear resize to `size`; labels:
    nearest to `size`, one-hot, bilinear to the grid; features with DINO's position interpolation;
    predictions: bilinear to `size`, argmax, nearest (OpenCV's rule) to the annotation size.
    """
    frames = sorted((davis / "JPEGImages" / "480p" / "street").glob("*.jpg"))
    gt0 = np.array(Image.open(davis / "Annotations" / "480p" / "street" / "00000.png"))
    H, W = size
    h, w = H // 16, W // 16
    mean, std = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1), torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)

    def features(path: Path) -> torch.Tensor:
        rgb = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255
        x = F.interpolate(rgb[None], size=(H, W), mode="bilinear", align_corners=False)
        x = (x - mean) / std
        tokens = encoder.patch_embed(x)  # (1, h*w, D)
        n = int(math.sqrt(encoder.pos_embed.shape[1] - 1))
        grid = encoder.pos_embed[:, 1:].reshape(1, n, n, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((h + 0.1) / n, (w + 0.1) / n), mode="bicubic")
        tokens = tokens + grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        cls = encoder.cls_token + encoder.pos_embed[:, :1]
        out = torch.cat([cls, tokens], 1)
        for block in encoder.blocks:
            out = block(out)
        return F.normalize(encoder.norm(out)[0, 1:], dim=-1)  # (h*w, D)

    with torch.no_grad():
        feats = [features(p) for p in frames]
    padded_feats = [feats[0]] * L + feats
    ids = sorted(np.unique(gt0).tolist())
    rows, cols = (np.arange(H) * gt0.shape[0] / H).astype(int), (np.arange(W) * gt0.shape[1] / W).astype(int)
    big = gt0[rows][:, cols]
    onehot = torch.from_numpy(np.stack([big == i for i in ids]).astype(np.float32))
    first = F.interpolate(onehot[None], size=(h, w), mode="bilinear", align_corners=False)[0].flatten(1).T
    labels = [first] * L + [torch.zeros_like(first)] * len(frames)
    yy, xx = np.mgrid[0:h, 0:w]
    yx = np.stack([yy.ravel(), xx.ravel()], 1)
    dist = np.sqrt(((yx[:, None, :] - yx[None, :, :]) ** 2).sum(-1))
    restrict = torch.from_numpy(np.where(dist < R, 0.0, -1e10)).float()  # (keys, queries)
    masks = [gt0]
    for t in range(len(frames)):
        query = padded_feats[t + L]
        context = [0] + list(range(t, t + L))
        A = torch.stack([padded_feats[k] @ query.T for k in context])  # (L + 1, keys, queries)
        A[1:] += restrict
        A = A.reshape(-1, h * w) / T
        weights, index = A.topk(K, dim=0)
        weights = weights.softmax(0)
        context_labels = torch.cat([labels[k] for k in context])  # ((L + 1) keys, C)
        pred = (context_labels[index] * weights[..., None]).sum(0)  # (queries, C)
        if t == 0:
            pred = labels[0]
        labels[t + L] = pred
        if t > 0:
            soft = pred.T.reshape(-1, h, w)
            up = F.interpolate(soft[None], size=(H, W), mode="bilinear", align_corners=False)[0]
            at_input = np.array(ids)[up.argmax(0).numpy()]
            r2, c2 = (np.arange(gt0.shape[0]) * H / gt0.shape[0]).astype(int), (np.arange(gt0.shape[1]) * W /
                                                                                gt0.shape[1]).astype(int)
            masks.append(at_input[r2][:, c2])
    return np.stack(masks)


def test_default_protocol_reproduces_the_crw_algorithm_on_real_frames(davis_mini: Path, tmp_path: Path) -> None:
    """With identical encoder weights, the default DAVIS protocol's masks equal the CRW algorithm's on >= 99.9% of
    the scored pixels (real davis_mini frames, a seeded random encoder)."""
    encoder, _ = load_encoder("random", "siammae_tiny", seed=0)
    expected = crw_brute_force(encoder, davis_mini)
    result = run_evaluation("davis", davis_mini, tmp_path / "out", encoder=encoder, progress=False)  # the defaults: crw
    assert result["protocol"] == "crw"
    ours = np.stack([read_label_png(tmp_path / "out" / "masks" / "street" / f"{t:05d}.png")[0] for t in range(5)])
    agreement = (ours[1:-1] == expected[1:-1]).mean()  # the scored frames
    assert agreement >= 0.999, agreement
    assert (ours[1:] != ours[0]).any()  # the masks moved: not a copy of the first frame
