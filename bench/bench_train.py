"""Training-step benchmark: pairs/s, counted FLOPs and CPU (or GPU) utilisation.

For each preset, one optimiser step (forward + backward + AdamW) on a batch of frame pairs is
timed: `--runs` timed steps after `--warmup` untimed ones, median and spread reported. The model's
FLOPs per step are counted with `torch.utils.flop_counter.FlopCounterMode` during the first warm-up
step. Its formula table has no entry for the CPU attention kernels (`scaled_dot_product_attention`
on CPU tensors would count 0 FLOPs), so `attention_flop_formulas()` adds them: 2 matmuls forward and
4 backward, model FLOPs without the recomputation some attention kernels do (the same figure as
counting on the meta device, where attention runs as plain matmuls).

Utilisation is achieved FLOP/s over this machine's measured peak matmul rate: a square matmul is
timed (best of 3) after every timed step, so both see the same load on a shared machine, and the
figure is the median over runs of the within-run ratio. One profiled forward + backward measures the time the
FLOP-counted operations (matmuls, attention, the patch convolution) take: their share of it, and
the rate they reach while running (the profiler's overhead lands mostly on the many small
operations, so the share is a slight underestimate).

Each preset is compared with a straightforward baseline of the same model whose encoder runs on all
of f2's patches with mask tokens in place (what a naive implementation does), to show what encoding
only the visible patches buys. The two take turns step by step.

    python -m bench.bench_train                      # CPU, fp32: tiny, ViT-S/16, ViT-B/16
    python -m bench.bench_train --presets siammae_tiny --batch 2 --runs 2   # a smoke run
    python -m bench.bench_train --device cuda --bf16  # GPU, bf16 autocast
"""

from __future__ import annotations

import argparse
import copy
import re
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from bench import save_json, sync_device
from ml.model import SiamMAE, create_model, decoder_dims
from ml.training.config import TrainConfig

DEFAULT_PRESETS = ("siammae_tiny", "siammae_vit_small_patch16", "siammae_vit_base_patch16")
# the decoder variants of ViT-S/16 (`preset+field=value`): CropMAE's smaller decoder and the paper's ablation types
DECODER_VARIANTS = ("siammae_vit_small_patch16+decoder_size=small", "siammae_vit_small_patch16+decoder_type=cross",
                    "siammae_vit_small_patch16+decoder_type=joint")
DEFAULT_BATCHES = (8, 8, 4)  # pairs per step of each default preset: seconds-long steps on a 2-core CPU
BASELINE = "baseline: f2 encoded with mask tokens"
VISIBLE_ONLY = "SiamMAE (visible-only encoder)"
PEAK_MATMUL_SIZE = 2048
# operations whose FLOPs FlopCounterMode counts here (matmuls, attention, convolutions): the profiler's names
FLOP_COUNTED_OPS = re.compile(r"aten::(mm|addmm|bmm|baddbmm|_scaled_dot_product_\w+|\w*convolution\w*)")


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


# ---------------------------------------------------------------- FLOPs


def _attention_forward_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """q @ k^T and softmax(.) @ v: 2 FLOPs per multiply-add. Shapes (N, heads, tokens, head_dim)."""
    n, heads, t_q, d_qk = query_shape
    t_k, d_v = key_shape[2], value_shape[3]
    return 2 * n * heads * t_q * t_k * (d_qk + d_v)


def _attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                              **kwargs) -> int:
    """The gradients of both products (4 matmuls, twice the forward); a kernel's recomputation is not model work."""
    return 2 * _attention_forward_flops(query_shape, key_shape, value_shape)


def attention_flop_formulas() -> dict:
    """FlopCounterMode `custom_mapping` for every fused attention kernel: the CPU ones have no formula in torch."""
    aten = torch.ops.aten
    forward = ["_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
               "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention"]
    mapping = {}
    for name in forward:
        for op, formula in ((name, _attention_forward_flops), (name + "_backward", _attention_backward_flops)):
            if hasattr(aten, op):
                mapping[getattr(aten, op)] = formula
    return mapping


def torch_counts_attention(device: torch.device) -> bool:
    """Whether FlopCounterMode alone counts any FLOPs for `scaled_dot_product_attention` on this device."""
    q = torch.randn(1, 1, 4, 8, device=device)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    return counter.get_total_flops() > 0


def step_flops(module: nn.Module, f1: torch.Tensor, f2: torch.Tensor) -> int:
    """FLOPs of one forward + backward (2 per multiply-add of matmuls, attention and convolutions)."""
    with FlopCounterMode(display=False, custom_mapping=attention_flop_formulas()) as counter:
        loss = module(f1, f2)[0]
        loss.backward()
    module.zero_grad(set_to_none=True)
    return counter.get_total_flops()


# ---------------------------------------------------------------- timing


class PeakMatmul:
    """Times a square (n x n) @ (n x n) matmul: the machine's practical peak FLOP/s at this moment."""

    def __init__(self, device: torch.device, dtype: torch.dtype, n: int = PEAK_MATMUL_SIZE) -> None:
        self.device, self.n = device, n
        self.a = torch.randn(n, n, device=device, dtype=dtype)
        self.b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(2):
            self.a @ self.b

    def sample(self, repeats: int = 1) -> float:
        """FLOP/s of the fastest of `repeats` matmuls."""
        best = float("inf")
        for _ in range(repeats):
            sync_device(self.device)
            t0 = time.perf_counter()
            self.a @ self.b
            sync_device(self.device)
            best = min(best, time.perf_counter() - t0)
        return 2 * self.n**3 / best


class Stepper:
    """One module, its AdamW and its inputs: `step()` runs forward, backward and the optimiser."""

    def __init__(self, module: nn.Module, f1: torch.Tensor, f2: torch.Tensor, autocast_dtype: torch.dtype | None):
        self.module, self.f1, self.f2, self.autocast_dtype = module, f1, f2, autocast_dtype
        trained = [p for p in module.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(trained, lr=1e-4, betas=TrainConfig.betas)

    def forward_backward(self) -> None:
        device = self.f1.device
        with torch.autocast(device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            loss = self.module(self.f1, self.f2)[0]
        loss.backward()

    def step(self) -> tuple[float, float]:
        """-> seconds of forward + backward, seconds of the optimiser step."""
        device = self.f1.device
        sync_device(device)
        t0 = time.perf_counter()
        self.forward_backward()
        sync_device(device)
        t1 = time.perf_counter()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        sync_device(device)
        return t1 - t0, time.perf_counter() - t1


def flop_counted_time(stepper: Stepper) -> tuple[float, float]:
    """One profiled forward + backward -> (seconds in FLOP-counted operations, their own time; wall seconds)."""
    device = stepper.f1.device
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        sync_device(device)
        t0 = time.perf_counter()
        stepper.forward_backward()
        sync_device(device)
        wall = time.perf_counter() - t0
    stepper.opt.zero_grad(set_to_none=True)
    counted = sum(e.self_cpu_time_total for e in prof.key_averages() if FLOP_COUNTED_OPS.fullmatch(e.key)) / 1e6
    return counted, wall


def median_ratio(a: list[float], b: list[float]) -> float:
    """Median over runs of a[run] / b[run]."""
    return statistics.median(x / y for x, y in zip(a, b))


# ---------------------------------------------------------------- the benchmark


def model_of(spec: str) -> SiamMAE:
    """A model from `preset` or `preset+field=value+...` (fields: decoder_size, decoder_type, f1_mask_ratio)."""

    arch, *changes = spec.split("+")
    kwargs: dict = {}
    for change in changes:
        name, _, value = change.partition("=")
        if name == "decoder_size":
            dims = decoder_dims(value)
            kwargs.update(zip(("decoder_embed_dim", "decoder_depth", "decoder_num_heads", "decoder_mlp_ratio"), dims))
        elif name in ("decoder_type", "f1_mask_ratio"):
            kwargs[name] = value if name == "decoder_type" else float(value)
        else:
            raise ValueError(f"{spec}: unknown variant field {name!r} (decoder_size, decoder_type, f1_mask_ratio)")
    return create_model(arch, **kwargs)


def _warm_up_counting_flops(steppers: dict[str, Stepper], warmup: int) -> dict[str, int]:
    """`warmup` untimed steps of each variant, taken in turns; the FLOPs of each variant's first step."""
    flops = {}
    for i in range(warmup):
        for name, stepper in steppers.items():
            with (FlopCounterMode(display=False, custom_mapping=attention_flop_formulas()) if i == 0
                  else nullcontext()) as counter:
                stepper.step()
            if i == 0:
                flops[name] = counter.get_total_flops()
    return flops


def _timed_steps(steppers: dict[str, Stepper], peak: PeakMatmul, runs: int,
                 ) -> tuple[dict[str, list[float]], dict[str, list[float]], list[float]]:
    """`runs` timed steps of each variant in turns, and the matmul peak sampled after each round:
    -> (forward + backward seconds, optimiser seconds) per variant, peaks in FLOP/s."""
    fwd_bwd_s: dict[str, list[float]] = {name: [] for name in steppers}
    opt_s: dict[str, list[float]] = {name: [] for name in steppers}
    peaks = []
    for _ in range(runs):
        for name, stepper in steppers.items():
            fb, op = stepper.step()
            fwd_bwd_s[name].append(fb)
            opt_s[name].append(op)
        peaks.append(peak.sample(repeats=3))
    return fwd_bwd_s, opt_s, peaks


def benchmark_preset(
    arch: str, batch: int, runs: int, warmup: int, device: torch.device, bf16: bool, baseline: bool,
    profile_ops: bool = True,
) -> list[dict]:
    """Rows for one preset (or `preset+field=value` variant): SiamMAE and (optionally) the baseline, timed turn by
    turn."""
    if runs < 1 or warmup < 1:
        raise ValueError(f"need runs >= 1 and warmup >= 1 (the first warm-up step counts FLOPs), got {runs}, {warmup}")
    autocast_dtype = torch.bfloat16 if bf16 else None
    torch.manual_seed(0)
    model = model_of(arch).to(device)
    size = model.img_size
    f1 = torch.randn(batch, 3, size, size, device=device)
    f2 = torch.randn(batch, 3, size, size, device=device)
    variants = {VISIBLE_ONLY: model}
    if baseline:
        variants[BASELINE] = VisibleAndMaskTokensSiamMAE(copy.deepcopy(model)).to(device)
    steppers = {name: Stepper(module, f1, f2, autocast_dtype) for name, module in variants.items()}
    peak = PeakMatmul(device, torch.bfloat16 if bf16 else torch.float32)

    flops = _warm_up_counting_flops(steppers, warmup)
    counted = {name: flop_counted_time(s) for name, s in steppers.items()} if profile_ops else {}
    fwd_bwd_s, opt_s, peaks = _timed_steps(steppers, peak, runs)
    step_s = {name: [fb + op for fb, op in zip(fwd_bwd_s[name], opt_s[name])] for name in steppers}

    rows = []
    for name in steppers:
        times = step_s[name]
        median = statistics.median(times)
        utilisation = [flops[name] / t / p for t, p in zip(times, peaks)]
        row = {
            "preset": arch, "variant": name, "img_size": size, "batch": batch, "device": str(device),
            "encoder_params": sum(p.numel() for p in model.encoder.parameters()),
            "decoder_params": sum(p.numel() for p in model.decoder.parameters()),
            "precision": "bf16 autocast" if bf16 else "fp32", "threads": torch.get_num_threads(),
            "runs": runs, "warmup": warmup,
            "step_s_median": median, "step_s_min": min(times), "step_s_max": max(times),
            "fwd_bwd_s_median": statistics.median(fwd_bwd_s[name]),
            "optimizer_s_median": statistics.median(opt_s[name]),
            "pairs_per_s": batch / median, "pairs_per_s_min": batch / max(times), "pairs_per_s_max": batch / min(times),
            "gflop_per_step": flops[name] / 1e9, "gflop_per_pair": flops[name] / batch / 1e9,
            "achieved_gflops": flops[name] / median / 1e9,
            "peak_matmul_gflops_median": statistics.median(peaks) / 1e9, "peak_matmul_gflops_max": max(peaks) / 1e9,
            "utilisation": statistics.median(utilisation), "utilisation_min": min(utilisation),
            "utilisation_max": max(utilisation),
        }
        if name in counted:
            # share of the profiled forward + backward in FLOP-counted ops, and their own rate against the peak
            counted_s, wall_s = counted[name]
            row["flop_op_time_share"] = counted_s / wall_s
            row["flop_op_efficiency"] = flops[name] / counted_s / statistics.median(peaks)
        if name == BASELINE:
            row["baseline_over_siammae_step_time"] = median_ratio(times, step_s[VISIBLE_ONLY])
        rows.append(row)
    return rows


def run_benchmark(
    presets: tuple[str, ...] = DEFAULT_PRESETS,
    batch: int | tuple[int, ...] = DEFAULT_BATCHES,
    runs: int = 5,
    warmup: int = 1,
    device: torch.device | None = None,
    bf16: bool = False,
    baseline: bool = True,
    profile_ops: bool = True,
) -> list[dict]:
    """Rows for every preset (SiamMAE, then the baseline); `batch` is one size for all or one per preset."""
    batches = (batch,) * len(presets) if isinstance(batch, int) else tuple(batch)
    if len(batches) == 1:
        batches *= len(presets)
    if len(batches) != len(presets):
        raise ValueError(f"give one batch size or one per preset: {len(batches)} sizes for {len(presets)} presets")
    device = device or torch.device("cpu")
    torch_counts = torch_counts_attention(device)
    results = []
    for arch, b in zip(presets, batches):
        results += benchmark_preset(arch, b, runs, warmup, device, bf16, baseline, profile_ops)
    return [r | {"torch_counts_attention": torch_counts} for r in results]


def format_table(results: list[dict]) -> str:
    rows = [
        "| preset | variant | img | batch (pairs) | step s, median (min-max) | pairs/s | GFLOP/pair | GFLOP/s "
        "| utilisation, median (min-max) | time in counted ops | their rate / peak |",
        "|---|---|---|---:|---|---:|---:|---:|---|---:|---:|",
    ]
    for r in results:
        share = f"{100 * r['flop_op_time_share']:.0f}%" if "flop_op_time_share" in r else "n/a"
        efficiency = f"{100 * r['flop_op_efficiency']:.0f}%" if "flop_op_efficiency" in r else "n/a"
        rows.append(
            f"| {r['preset']} | {r['variant']} | {r['img_size']} | {r['batch']} | "
            f"{r['step_s_median']:.3f} ({r['step_s_min']:.3f}-{r['step_s_max']:.3f}) | {r['pairs_per_s']:.2f} | "
            f"{r['gflop_per_pair']:.1f} | {r['achieved_gflops']:.1f} | {100 * r['utilisation']:.0f}% "
            f"({100 * r['utilisation_min']:.0f}-{100 * r['utilisation_max']:.0f}%) | {share} | {efficiency} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS), help="model presets to time")
    parser.add_argument("--batch", type=int, nargs="+", default=None,
                        help=f"frame pairs per step: one for all presets or one per preset "
                             f"(default {' '.join(map(str, DEFAULT_BATCHES))} for the default presets, else 8)")
    parser.add_argument("--runs", type=int, default=5, help="timed steps; the median is reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (the first one counts FLOPs)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the mask-tokens-in-encoder baseline")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled step (time in counted ops)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    batch = args.batch or (DEFAULT_BATCHES if tuple(args.presets) == DEFAULT_PRESETS else [8])
    results = run_benchmark(tuple(args.presets), tuple(batch), args.runs, args.warmup, torch.device(args.device),
                            args.bf16, not args.no_baseline, not args.no_profile)
    print(format_table(results))
    print(f"\nPeak matmul ({results[0]['precision']}, {PEAK_MATMUL_SIZE}x{PEAK_MATMUL_SIZE}, sampled after every "
          f"timed step): median {results[0]['peak_matmul_gflops_median']:.0f} GFLOP/s.")
    save_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
