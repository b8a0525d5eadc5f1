"""A training run: its configuration (TrainConfig, presets, command-line options), the run folder it owns
(lock, loss logs, checkpoints), the checkpoint format, the epoch engine, optimiser and schedule, processes
(torchrun), and `train(config)` that puts them together. Depends on `ml.model`, `dataset_loader`, `mae`.

    config.py      every default of a run (TrainConfig)       presets.py   named recipes, differences only
    options.py     TrainConfig as command-line options         build.py     data and model from a config
    run.py         the run folder: lock, logs, saving         checkpoint.py  the file format, finding, loading
    rng.py         random states of a run                     engine.py    one epoch, the held-out loss
    optim.py       AdamW groups, warm-up + cosine             distributed.py  torchrun process groups
    signals.py     SIGINT/SIGTERM -> stop at a step           tensorboard.py  --tensorboard logging
    pretrain.py    train(config): the whole run               cli.py       python -m ml.train
"""

from ml.training.config import TrainConfig
from ml.training.presets import NOTEBOOK_SETTINGS, PRESETS, get_preset
from ml.training.pretrain import train

__all__ = ["NOTEBOOK_SETTINGS", "PRESETS", "TrainConfig", "get_preset", "train"]
