"""`python -m ml.train`: SiamMAE pre-training from the command line (the code lives in `ml/training/`).

    python -m ml.train --preset quick --output outputs/quick
    python -m ml.train --preset cpu_demo --resume auto
    torchrun --nproc_per_node=8 -m ml.train --preset paper_vit_s16_400 --data /data/kinetics400

From Python: `ml.training.train(get_preset("quick", output_dir=...))`.
"""

import sys

from ml.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
