"""vit_jax: the Vision Transformer family in JAX/Flax, with a config-driven trainer.

    model = vit_jax.create_model('ViT-B_16', num_classes=10)
    variables = model.init(jax.random.key(0), images)        # images [batch, 224, 224, 3]
    logits = model.apply(variables, images, train=False)     # [batch, 10]
    variables = vit_jax.weights.load(model, 'ViT-B_16.npz')  # a file, URL or published name
    model, variables = vit_jax.pretrained('ViT-B_16')        # published weights by name
    pooled, maps = vit_jax.features(model, variables, images)  # pre-logits, [batch, h, w, c] maps
"""

from vit_jax import (  # noqa: F401 -- storage sets the stores' variables
    startup,  # noqa: F401 -- imports jax first, without the CUDA plugin's notes
    storage,
    weights,
)
from vit_jax.models import create_model, list_models, model_options
from vit_jax.models.features import features
from vit_jax.version import __version__
from vit_jax.weights import pretrained

__all__ = ['__version__', 'create_model', 'features', 'list_models', 'model_options',
           'pretrained', 'weights']
