"""Model families and the registry. Importing this package registers every family."""

from vit_jax.models import dhvt, vit  # noqa: F401  (registers the families)
from vit_jax.models.registry import create_model, get_spec, list_models, model_options

__all__ = ['create_model', 'get_spec', 'list_models', 'model_options']
