"""`python -m ml.train`: SiamMAE pre-training from the command line (the code lives in `ml/training/`).

    python -m ml.train --preset quick --output outputs/quick
    python -m ml.train --preset cpu_demo --resume auto
    torchrun --nproc_per_node=8 -m ml.train --preset paper_vit_s16_400 --data /data/kinetics400

    python -m ml.train --preset quick --eval-every 1 --eval-davis /data/DAVIS --eval-max-sequences 2

From Python: `ml.training.train(get_preset("quick", output_dir=...))`; with evaluations during training,
`train(config, after_epoch=ml.eval.evaluation_hook(config))`.
"""

import sys

from ml.eval import evaluation_hook
from ml.training import cli


def main(argv: list[str] | None = None) -> int:
    """The training command line, with label propagation during training (--eval-every) wired in."""
    return cli.main(argv, evaluation_hook=evaluation_hook)


if __name__ == "__main__":
    sys.exit(main())
