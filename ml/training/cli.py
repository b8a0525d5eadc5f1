"""`python -m ml.train`: a preset, each recipe option replacing one of its fields, then `train`.

    python -m ml.train --preset quick --output outputs/quick
    torchrun --nproc_per_node=8 -m ml.train --preset paper_vit_s16_400 --data /data/kinetics400

A bad option or value, an unusable folder or data, a diverged run: one line on stderr and exit 1;
SIGTERM / SIGINT: 143 / 130 after the last step, with the checkpoint to resume from.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from mae.pretrained import CheckpointError
from ml.files import DiskFullError
from ml.training.config import TrainConfig
from ml.training.distributed import cleanup_distributed, init_distributed
from ml.training.engine import EpochEnd
from ml.training.options import add_config_options, options_to_changes
from ml.training.presets import PRESETS, get_preset
from ml.training.pretrain import train
from ml.training.run import RunError
from ml.training.signals import TrainingStopped

# what the command line reports as a one-line error (anything else is a bug and keeps its traceback)
USER_ERRORS = (ValueError, FileNotFoundError, CheckpointError, RunError, FloatingPointError, DiskFullError)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ml.train",
        usage="%(prog)s [--preset NAME] [--resume auto|PATH] [recipe options] (--help lists them)",
        description="SiamMAE pre-training. Starts from a preset; each recipe option replaces one of its fields. "
                    "Multi-GPU: torchrun --nproc_per_node=8 -m ml.train ... (only rank 0 writes).",
    )
    p.add_argument("--preset", default="cpu_demo", choices=sorted(PRESETS),
                   help="training recipe to start from (paper_vit_s16_*: the paper's ViT-S/16) [default: cpu_demo]")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="'auto': continue from the run folder's latest checkpoint when there is one; or a checkpoint "
                        "file (an earlier one of the run rewinds it)")
    p.add_argument("--stop-after-epoch", type=int, metavar="N", help="return after epoch N, as if stopped")
    p.add_argument("--allow-new-data", action="store_true",
                   help="resume on other training videos than the checkpoint's (the same files moved elsewhere "
                        "need no flag)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="any TrainConfig field, read as the field's type (e.g. test_split=None, min_gap=2)")
    add_config_options(p)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset with the options and `--set` fields applied (ValueError naming the field for a bad value)."""
    return get_preset(args.preset, **options_to_changes(args, args.set))


def main(argv: list[str] | None = None,
         evaluation_hook: Callable[[TrainConfig], Callable[[EpochEnd], None] | None] | None = None) -> int:
    """The command line; `evaluation_hook(config)` gives the after-epoch hook of `--eval-every` (`ml.train` passes
    `ml.eval.evaluation_hook`: evaluation sits above training, so it is handed in)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        if args.stop_after_epoch is not None and args.stop_after_epoch < 1:
            raise ValueError(f"--stop-after-epoch must be >= 1, got {args.stop_after_epoch}")
    except ValueError as err:
        parser.error(str(err).splitlines()[0])
    try:
        after_epoch = evaluation_hook(config) if evaluation_hook is not None else None  # checks --eval-davis now
        init_distributed(config.device, timeout_minutes=config.dist_timeout_minutes)
        train(config, resume=args.resume, stop_after_epoch=args.stop_after_epoch,
              progress=False if args.no_progress else None, allow_new_data=args.allow_new_data,
              after_epoch=after_epoch)
    except TrainingStopped as err:
        message = str(err).splitlines()[0]
        if "resume" not in message:  # stopped outside the epoch loop, which names the checkpoint to resume from
            message += "; --resume auto continues from the last checkpoint"
        print(f"{parser.prog}: {message}", file=sys.stderr)
        return 143 if "SIGTERM" in str(err) else 130
    except KeyboardInterrupt:  # Ctrl-C before the run's own handler is in place, or after it
        print(f"{parser.prog}: interrupted; --resume auto continues from the last checkpoint", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        print(f"{parser.prog}: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 1
    finally:
        cleanup_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
