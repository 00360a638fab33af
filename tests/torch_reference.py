"""PyTorch reference models for the equivalence tests: timm and transformers on the CPU build
of torch.

The pinned torchvision build expects CUDA operators; `import timm` (and `import transformers`)
fails with "operator torchvision::nms does not exist" unless their schemas are defined first, as
`import_timm` does.
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


def import_transformers():
    """Imports transformers beside the CPU build of torch."""
    import_timm()
    import transformers
    return transformers


def state_dict(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """The module's `state_dict()` as numpy arrays."""
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def logits(module: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """Eval-mode logits of a PyTorch model for NHWC float32 `images`."""
    module.eval()
    with torch.no_grad():
        return module(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()


def randomize(module: torch.nn.Module, seed: int = 0, scale: float = 0.5) -> dict[str, np.ndarray]:
    """Sets every parameter to N(0, scale^2) noise (so that zero biases, unit norms and tiny
    layer scales cannot hide a mapping mistake); returns the new `state_dict` as numpy."""
    rng = np.random.RandomState(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.from_numpy((rng.randn(*p.shape) * scale).astype(np.float32)))
    return state_dict(module)
