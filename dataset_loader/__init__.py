"""Kinetics-400 frame-pair data: video decoding, pair sampling, augmentation, loaders."""

from mae import torchvision_compat  # noqa: F401  (before anything imports timm)

from .dataset import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LAYOUTS_HELP,
    BadVideoWarning,
    KineticsFramePairs,
    NoReadableVideoError,
    denormalize,
    find_videos,
)
from .loader import make_pair_loader, set_loader_epoch
from .random_temporal_subsample import RandomTemporalSubsample
from .transforms import PairedTransform
from .video import VideoError, VideoReader

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "LAYOUTS_HELP", "BadVideoWarning", "KineticsFramePairs", "NoReadableVideoError",
    "PairedTransform",
    "RandomTemporalSubsample", "VideoError", "VideoReader", "denormalize", "find_videos", "make_pair_loader",
    "set_loader_epoch",
]
