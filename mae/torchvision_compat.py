"""Make `import torchvision` (and so `import timm`) work with a CPU-only torch.

PyPI's torchvision wheel is built for CUDA. Next to a CPU-only torch its compiled extension does
not load, and importing torchvision fails with "operator torchvision::nms does not exist" while
registering fake kernels for `nms` (pytorch/vision#9085). When that happens we define the schemas
of the two operators it looks up, so the Python package imports; nothing in this project calls
torchvision's compiled ops or its image/video decoders. Where torchvision loads normally (a CUDA
torch, or a matching CPU build) this module changes nothing.
"""

from __future__ import annotations

import sys

import torch

_OP_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_fragment: torch.library.Library | None = None  # kept alive: dropping it unregisters the schemas
patched = False


def _forget_torchvision() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def ensure_torchvision() -> None:
    """Import torchvision, defining its missing operator schemas first if the build needs it."""
    global _fragment, patched
    try:
        import torchvision  # noqa: F401

        return
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
    _forget_torchvision()
    _fragment = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _OP_SCHEMAS.values():
        try:
            _fragment.define(schema)
        except RuntimeError:  # already defined by a partial load of the extension
            pass
    patched = True
    import torchvision  # noqa: F401


ensure_torchvision()
