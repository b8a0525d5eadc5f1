"""SiamMAE model, training, plots and evaluation (the notebook calls into this package)."""

from mae import torchvision_compat  # noqa: F401  (before anything imports timm)
