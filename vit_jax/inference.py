"""One way to load a model for inference, shared by every command line and notebook: from a
training run (`workdir`), a weights file or URL with a registered model name, a Hugging Face
`save_pretrained` directory, or a published name (`python -m vit_jax.hub --list`). Each gives the
model, its variables, how its evaluation images are prepared and, where the source says, its
class names.

    loaded = inference.load(workdir='runs/digits')                   # a run of vit_jax.main
    loaded = inference.load(weights_source='ViT-B_16.npz', model='ViT-B_16')
    loaded = inference.load(weights_source='hf/vit-base-patch16-224')  # a Hugging Face directory
    loaded = inference.load(weights_source='imagenet21k/ViT-B_16')   # a published name
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import ml_collections

from vit_jax import catalogue, models, storage, weights
from vit_jax.errors import ModelError
from vit_jax.models.contract import Preprocessing
from vit_jax.normalization import NORMALIZATIONS
from vit_jax.train.workdir import Workdir

# Keys of a classifier head's bias in the layouts `weights.read` returns.
HEAD_BIASES = ('head/bias', 'head.bias', 'head.fc.bias')


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A model ready for `model.apply(variables, images, train=False)`: `name` its registered name
    (None for a Hugging Face directory's); `preprocessing` how its evaluation images are
    prepared (`input_size`, `crop_pct`, `interpolation`, `mean`, `std`); `class_names` the
    run's (None where the source names none); `config` the training run's config (None
    unless loaded from a workdir)."""

    model: nn.Module
    variables: Any
    name: str | None
    preprocessing: Preprocessing
    class_names: tuple[str, ...] | None = None
    config: ml_collections.ConfigDict | None = None


def load(*, workdir: str | os.PathLike | None = None, weights_source: str | None = None,
         model: str | None = None, step: int | None = None, ema: bool = False,
         img_size: int | None = None, options: dict[str, Any] | None = None) -> Loaded:
    """The model of `workdir` (its checkpoint `step`, default the latest; `ema` its moving
    average), or of `weights_source` (a file or URL read with the registered `model`, a Hugging
    Face directory, or, without `model`, a published name), at `img_size` (default: the
    source's; the position embedding resized) with the model `options` given. The class count
    (and a ViT's pre-logits width) come from the weights (`options['num_classes']` for weights
    without a head)."""
    if workdir is not None:
        return _from_workdir(workdir, step, ema, img_size)
    if weights_source is None:
        raise ModelError('give --model and --weights (a file or URL), --weights alone (a '
                         'Hugging Face directory or a published name), or --workdir')
    overrides = {**(options or {}), **({'img_size': img_size} if img_size else {})}
    if model is None and os.path.isdir(weights_source):
        net = weights.hf_model(weights_source, **overrides)
        return Loaded(net, weights.load(net, weights_source, strict=True), None,
                      type(net).default_preprocessing)
    if model is None:
        if storage.scheme(weights_source) or os.path.exists(weights_source):
            raise ModelError(f'{weights_source} is a weights file: give --model=NAME, the '
                             f'registered model it is for (python -c "import vit_jax; '
                             f'print(vit_jax.list_models())")')
        net, variables = weights.pretrained(weights_source, **overrides)
        name = catalogue.find(weights_source).model
        return Loaded(net, variables, name, models.get_spec(name).pretrained_cfg)
    arrays = weights.read(weights_source)
    head = next((int(v.shape[0]) for k, v in arrays.items() if k.endswith(HEAD_BIASES)), 0)
    pre_logits = next((v for k, v in arrays.items() if k.endswith('pre_logits/kernel')), None)
    if pre_logits is not None and 'representation_size' in models.model_options(model):
        overrides.setdefault('representation_size', int(pre_logits.shape[-1]))
    net = models.create_model(model, **{**overrides, 'num_classes': head or overrides.get(
        'num_classes', 0)})
    return Loaded(net, weights.load(net, arrays, strict=True), model,
                  models.get_spec(model).pretrained_cfg)


def _from_workdir(workdir: str | os.PathLike, step: int | None, ema: bool,
                  img_size: int | None) -> Loaded:
    """A training run's model; its images resized as the eval pipeline does (the whole image,
    bilinearly) and normalised with the run's mean and std."""
    net, variables, config, names = Workdir(workdir).load_run(step, ema=ema)
    if img_size and img_size != net.img_size:
        net = net.clone(img_size=img_size)
        variables = weights.load(net, variables, strict=True)
    preprocessing = Preprocessing(**{
        **models.get_spec(config.model_name).pretrained_cfg, 'crop_pct': 1.0,
        'interpolation': 'bilinear', **NORMALIZATIONS[config.pp.get('normalize',
                                                                      'minus_one_one')]})
    return Loaded(net, variables, config.model_name, preprocessing, tuple(names), config)
