"""PyTorch reference models for the equivalence tests: timm on the CPU build of torch.

The pinned torchvision build expects CUDA operators; `import timm` fails with "operator
torchvision::nms does not exist" unless their schemas are defined first, as `import_timm` does.
"""

import numpy as np
import torch

_torchvision_ops = None


def import_timm():
    """Imports timm beside the CPU build of torch."""
    global _torchvision_ops
    if _torchvision_ops is None and not hasattr(torch.ops.torchvision, 'nms'):
        _torchvision_ops = torch.library.Library('torchvision', 'DEF')
        for op in ('nms', 'qnms'):
            _torchvision_ops.define(
                f'{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
    import timm
    return timm


def state_dict(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """The module's `state_dict()` as numpy arrays."""
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def logits(module: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """Eval-mode logits of a PyTorch model for NHWC float32 `images`."""
    module.eval()
    with torch.no_grad():
        return module(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
