"""What a train step minimises: the `Objective` interface, the plain `Classification` of the
labels, and `from_config`, which picks a run's objective (DeiT's distillation,
`vit_jax.train.distill.Distillation`, when `distill.type` is set). A new objective is a class
here (or in a module of its own) with a line in `from_config`, and its keys in
`vit_jax.train.config_keys`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import flax.linen as nn
import jax

if TYPE_CHECKING:  # the benchmark builds steps without ml_collections
    import ml_collections

# `base(logits [batch, classes]) -> [batch]`: the run's loss (`LOSSES`) against the step's
# targets, label smoothing included.
BaseLoss = Callable[[jax.Array], jax.Array]


class Objective(Protocol):
    """What a train step minimises, given the model's training outputs.

    `objective(outputs, images, extras, base) -> (loss [batch], logits [batch, classes])`:
    `outputs` are the model's (logits, or a tuple of heads' logits), `images` its inputs,
    `base` the run's loss against the targets; `logits` are what the training accuracy scores.
    `frozen` names models whose variables the step takes beside the state (`extras`, not
    trained): the trainer places them as the run's parameters and reads them with
    `load_extras(config, placed_like)`.
    """

    frozen: Mapping[str, nn.Module]

    def __call__(self, outputs: Any, images: jax.Array, extras: Mapping[str, Any],
                 base: BaseLoss) -> tuple[jax.Array, jax.Array]: ...

    def load_extras(self, config: Any, placed_like: Mapping[str, Any]) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class Classification:
    """The run's loss on the labels. A model with two heads in training (DeiT's
    `distilled=True`) learns the labels on both (the mean of their losses); the accuracy is
    that of the heads' average, as evaluation predicts."""

    frozen: Mapping[str, nn.Module] = dataclasses.field(default_factory=dict)

    def __call__(self, outputs: Any, images: jax.Array, extras: Mapping[str, Any],
                 base: BaseLoss) -> tuple[jax.Array, jax.Array]:
        if isinstance(outputs, tuple):
            return sum(map(base, outputs)) / len(outputs), sum(outputs) / len(outputs)
        return base(outputs), outputs

    def load_extras(self, config: Any, placed_like: Mapping[str, Any]) -> dict[str, Any]:
        return {}


def from_config(config: ml_collections.ConfigDict, num_classes: int) -> Objective:
    """The objective a run of `config` trains with (its frozen models built, not loaded)."""
    from vit_jax.train import distill  # it loads weights: only for a run that distils

    return distill.from_config(config, num_classes) or Classification()
