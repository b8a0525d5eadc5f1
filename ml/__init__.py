"""SiamMAE in layers; the notebook and the command lines call into them, arrows only downward.

    ml/model/      the network: SiamMAE, CrossDecoder, architecture presets, fixed-mask reconstructions
    ml/training/   a training run: TrainConfig and presets, the run folder, checkpoints, engine, `train`
    ml/eval/       label propagation on DAVIS / JHMDB / VIP with frozen features (reads checkpoints)
    ml/notebook/   what SiamMAE.ipynb's cells call: figures, samples.pickle, analyses, the headless demo
    ml/files.py    atomic writes and writability (used by every layer and by dataset_loader)
    ml/SiamMAE.py, ml/utils.py   the seed's interface, as thin faces over the layers
    ml/train.py, ml/evaluate.py, ml/demo.py, ml/report.py, ml/export.py   the command lines (python -m ml.train, ...)

Below them: `mae/` (the MAE ViT backbone) and `dataset_loader/` (Kinetics frame pairs).
"""

from mae import torchvision_compat  # noqa: F401  (before anything imports timm)
