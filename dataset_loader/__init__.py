"""Kinetics-400 frame-pair data: video decoding, pair sampling, augmentation, loaders."""

from mae import torchvision_compat  # noqa: F401  (before anything imports timm)
