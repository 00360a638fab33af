"""Model families and the registry. Importing this package registers every family."""

from vit_jax.models import sret, vit  # noqa: F401  (register the SReT and ViT variants)
from vit_jax.models.registry import create_model, get_spec, list_models, model_options

__all__ = ['create_model', 'get_spec', 'list_models', 'model_options']
