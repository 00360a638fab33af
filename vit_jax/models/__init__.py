"""Model families and the registry. Importing this package registers every family."""

from vit_jax.models import convnext, dhvt, resnet, sret, swin, vit  # noqa: F401  (importing a family registers its variants)
from vit_jax.models.registry import create_model, families, get_spec, list_models, model_options

__all__ = ['create_model', 'families', 'get_spec', 'list_models', 'model_options']
