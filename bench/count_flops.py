"""Parameter counts and forward FLOPs of the SiamMAE presets (the README's table).

    python -m bench.count_flops [--img-size 224] [--mask-ratio R]

Models are built on the meta device (no memory, no weights), so the large presets cost nothing.
FLOPs are counted by torch.utils.flop_counter.FlopCounterMode for one frame pair (batch 1): it counts
matrix multiplications and convolutions (attention included) as 2 FLOPs per multiply-accumulate, so
FLOPs = 2 * MACs; norms, softmax, GELU and the loss are not counted.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from ml.model import DECODER_SIZES, DECODER_TYPES, SIAMMAE_PRESETS, SiamMAE, create_model, decoder_dims
from ml.training.config import TrainConfig


def count_params(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def forward_flops(model: SiamMAE, img_size: int) -> dict[str, int]:
    """FLOPs of one forward pass on one pair at the model's mask ratio: total, encoder (both frames), decoder."""
    f1 = torch.zeros(1, model.in_chans, img_size, img_size, device="meta")
    f2 = torch.zeros_like(f1)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(f1, f2)
    total = counter.get_total_flops()
    decoder = sum(counter.get_flop_counts()["SiamMAE.decoder"].values())  # its projection and head included
    return {"total": total, "encoder": total - decoder, "decoder": decoder}  # the loss has no matmul


def preset_row(arch: str, img_size: int, mask_ratio: float, **overrides) -> dict:
    with torch.device("meta"):
        model = create_model(arch, **{"img_size": img_size, "mask_ratio": mask_ratio, **overrides})
    flops = forward_flops(model, img_size)
    return {
        "arch": arch, "img_size": img_size, "patches": (img_size // model.patch_size) ** 2,
        "encoder": count_params(model.encoder), "decoder": count_params(model.decoder),
        "trainable": count_params(model, trainable_only=True), "flops": flops,
    }


def markdown_table(rows: list[dict], first_column: str = "preset") -> str:
    lines = [
        f"| {first_column} | input | encoder params | decoder params | trainable | forward GFLOPs per pair "
        "(encoder + decoder) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        f = r["flops"]
        lines.append(
            f"| `{r['label']}` | {r['img_size']}², {r['patches']} patches | {r['encoder']:,} | {r['decoder']:,} | "
            f"{r['trainable']:,} | {f['total'] / 1e9:.2f} ({f['encoder'] / 1e9:.2f} + {f['decoder'] / 1e9:.2f}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=TrainConfig.img_size)
    parser.add_argument("--mask-ratio", type=float, default=TrainConfig.mask_ratio)
    args = parser.parse_args()

    rows = []
    for arch, preset in SIAMMAE_PRESETS.items():
        resized = preset.get("img_size", 224) != args.img_size
        label = f"{arch}, img_size={args.img_size}" if resized else arch
        rows.append({**preset_row(arch, args.img_size, args.mask_ratio), "label": label})
    tiny_size = SIAMMAE_PRESETS["siammae_tiny"]["img_size"]
    if tiny_size != args.img_size:
        rows.append({**preset_row("siammae_tiny", tiny_size, args.mask_ratio), "label": "siammae_tiny"})
    print(f"Presets (mask ratio {args.mask_ratio}, default cross_self decoder):\n")
    print(markdown_table(rows))

    arch = TrainConfig.arch
    variants = [{**preset_row(arch, args.img_size, args.mask_ratio, decoder_type=t), "label": t} for t in DECODER_TYPES]
    for name in DECODER_SIZES:  # the decoder sizes, cross_self
        width, depth, heads, ratio = decoder_dims(name)
        variants.append({**preset_row(arch, args.img_size, args.mask_ratio, decoder_embed_dim=width,
                                      decoder_depth=depth, decoder_num_heads=heads, decoder_mlp_ratio=ratio),
                         "label": f"cross_self, decoder_size={name} ({width}/{depth}/{heads}/{ratio:g})"})
    print(f"\nDecoder variants of {arch}:\n")
    print(markdown_table(variants, first_column="decoder"))


if __name__ == "__main__":
    main()
