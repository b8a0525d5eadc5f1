"""Training-step benchmark: pairs/s, counted FLOPs and CPU (or GPU) utilisation.

For each preset, one optimiser step (forward + backward + AdamW) on a batch of frame pairs is
timed (median and spread of `--runs` runs after a warm-up). The model's FLOPs per step are counted
with `torch.utils.flop_counter.FlopCounterMode` and divided by the step time and by the measured
peak matmul rate of this machine (a square matmul in the same run): that fraction is the
utilisation. Each preset is compared with a straightforward baseline of the same model whose
encoder runs on all of f2's patches with mask tokens in place (what a naive implementation does),
to show what encoding only the visible patches buys.

    python -m bench.bench_train                      # CPU, fp32: tiny, ViT-S/16, ViT-B/16
    python -m bench.bench_train --presets siammae_tiny --batch 2 --runs 2   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from ml.SiamMAE import SiamMAE, create_model

DEFAULT_PRESETS = ("siammae_tiny", "siammae_vit_small_patch16", "siammae_vit_base_patch16")


class VisibleAndMaskTokensSiamMAE(nn.Module):
    """The baseline: the same SiamMAE, but f2 goes through the encoder whole, mask tokens in place.

    Masked patch embeddings are replaced by a learned encoder-width mask token and all L tokens
    are encoded; the decoder then gets the visible tokens' outputs as usual, so only the encoder's
    cost differs from `SiamMAE`.
    """

    def __init__(self, model: SiamMAE) -> None:
        super().__init__()
        self.model = model
        self.encoder_mask_token = nn.Parameter(torch.zeros(1, 1, model.encoder.embed_dim))

    def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m, enc = self.model, self.model.encoder
        grid = m._check_frames(f1, f2)
        latent1 = enc.forward_features(f1)  # (N, 1 + L, D)
        x, cls_pos = enc.embed_patches(f2)  # (N, L, D)
        _, mask, ids_restore = enc.random_masking(x, m.mask_ratio)  # mask (N, L)
        x = torch.where(mask.bool().unsqueeze(-1), self.encoder_mask_token.to(x.dtype) + 0 * x, x)
        cls = (enc.cls_token + cls_pos).expand(x.shape[0], -1, -1)
        full = enc.forward_blocks(torch.cat([cls, x], dim=1))  # (N, 1 + L, D): every token encoded
        ids_keep = torch.argsort(ids_restore, dim=1)[:, : int(mask.shape[1] * (1 - m.mask_ratio))]
        visible = torch.gather(full[:, 1:], 1, ids_keep.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
        latent2 = torch.cat([full[:, :1], visible], dim=1)  # (N, 1 + L_keep, D), as SiamMAE's encoder gives
        pred = m.forward_decoder(latent1, latent2, ids_restore, grid)
        return m.forward_loss(f2, pred, mask), pred, mask


def peak_matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 2048, runs: int = 5) -> float:
    """Measured FLOP/s of a square (n x n) @ (n x n) matmul: the machine's practical peak."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(runs):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops(module: nn.Module, f1: torch.Tensor, f2: torch.Tensor) -> int:
    """FLOPs of one forward + backward (2 * multiply-adds of matmuls and convolutions, attention included)."""
    with FlopCounterMode(display=False) as counter:
        loss = module(f1, f2)[0]
        loss.backward()
    module.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def time_steps(
    module: nn.Module, f1: torch.Tensor, f2: torch.Tensor, runs: int, warmup: int, autocast_dtype: torch.dtype | None
) -> list[float]:
    """Seconds per optimiser step (forward, backward, AdamW), `runs` times after `warmup` untimed steps."""
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95))
    device = f1.device
    times = []
    for i in range(warmup + runs):
        _sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = module(f1, f2)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def run_benchmark(
    presets: tuple[str, ...] = DEFAULT_PRESETS,
    batch: int = 8,
    runs: int = 5,
    warmup: int = 1,
    device: torch.device | None = None,
    bf16: bool = False,
    baseline: bool = True,
) -> list[dict]:
    device = device or torch.device("cpu")
    autocast_dtype = torch.bfloat16 if bf16 else None
    peak = peak_matmul_flops(device, torch.bfloat16 if bf16 else torch.float32)
    results = []
    for arch in presets:
        torch.manual_seed(0)
        model = create_model(arch).to(device)
        size = model.img_size
        f1 = torch.randn(batch, 3, size, size, device=device)
        f2 = torch.randn(batch, 3, size, size, device=device)
        variants = [("SiamMAE (visible-only encoder)", model)]
        if baseline:
            variants.append(("baseline: f2 encoded with mask tokens", VisibleAndMaskTokensSiamMAE(model).to(device)))
        for name, module in variants:
            flops = step_flops(module, f1, f2)
            times = time_steps(module, f1, f2, runs, warmup, autocast_dtype)
            median = statistics.median(times)
            results.append({
                "preset": arch, "variant": name, "img_size": size, "batch": batch, "device": str(device),
                "precision": "bf16 autocast" if bf16 else "fp32",
                "step_s_median": median, "step_s_min": min(times), "step_s_max": max(times),
                "pairs_per_s": batch / median, "gflop_per_step": flops / 1e9,
                "achieved_gflops": flops / median / 1e9, "peak_matmul_gflops": peak / 1e9,
                "utilisation": flops / median / peak,
            })
        del model, variants
    return results


def format_table(results: list[dict]) -> str:
    rows = [
        "| preset | variant | img | batch | step s (median, min-max) | pairs/s | GFLOP/step | GFLOP/s | utilisation |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rows.append(
            f"| {r['preset']} | {r['variant']} | {r['img_size']} | {r['batch']} | "
            f"{r['step_s_median']:.3f} ({r['step_s_min']:.3f}-{r['step_s_max']:.3f}) | {r['pairs_per_s']:.1f} | "
            f"{r['gflop_per_step']:.1f} | {r['achieved_gflops']:.1f} | {100 * r['utilisation']:.0f}% |"
        )
    if results:
        rows.append(f"\nPeak matmul ({results[0]['precision']}, 2048x2048, measured in the same run): "
                    f"{results[0]['peak_matmul_gflops']:.0f} GFLOP/s.")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS), help="model presets to time")
    parser.add_argument("--batch", type=int, default=8, help="frame pairs per step")
    parser.add_argument("--runs", type=int, default=5, help="timed steps; the median is reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the mask-tokens-in-encoder baseline")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    results = run_benchmark(tuple(args.presets), args.batch, args.runs, args.warmup, torch.device(args.device),
                            args.bf16, not args.no_baseline)
    print(format_table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
