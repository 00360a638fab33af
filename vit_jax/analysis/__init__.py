"""Research tools: what a trained ViT attends to and what it has learned.

- `attention`: attention weights of every block, mean attention distance per head and layer,
  attention rollout and class-token attention maps;
- `embeddings`: cosine similarity of position embeddings, principal components of the patch
  embedding filters;
- `plots`: the ViT paper's figures of these (matplotlib);
- `run`: load a model from a workdir or weights file, run all four, write PNGs and a JSON
  (`python -m vit_jax.analysis --help`).
"""

from vit_jax.analysis.attention import (
    attention_maps,
    attention_weights,
    mean_attention_distance,
    rollout,
)
from vit_jax.analysis.embeddings import (
    filter_components,
    position_embedding,
    position_similarity,
)

__all__ = ['attention_maps', 'attention_weights', 'filter_components',
           'mean_attention_distance', 'position_embedding', 'position_similarity', 'rollout']
