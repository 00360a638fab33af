"""DeiT's knowledge distillation (Touvron et al., 2021): a frozen teacher from the registry
scores each training batch and its predictions are a second target for the student.

`hard`: cross-entropy with the teacher's top class; `soft`: the KL divergence between the
teacher's and the student's softmax at temperature `tau`, times `tau²`, averaged over batch and
classes as DeiT's `DistillationLoss` (its `reduction='sum'` then `/ numel`). The training loss is
`(1 - alpha) * base + alpha * distillation`. A student with a distillation token (DeiT's
`distilled=True`) takes the base loss on its class head and the distillation loss on its
distillation head; any other student (e.g. SReT's `_distill` variants, the same network as the
plain ones) takes both on its one head.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vit_jax import models, weights
from vit_jax.errors import ConfigError, VitJaxError
from vit_jax.train import sharding

if TYPE_CHECKING:  # the benchmark builds objectives without ml_collections
    import ml_collections

TYPES = ('none', 'hard', 'soft')


@dataclasses.dataclass(frozen=True)
class Distillation:
    """The train step's objective (`vit_jax.train.objectives.Objective`) when distilling: from
    `teacher` (its `img_size` is the side its inputs are resized to), of `type` 'hard' or
    'soft', weight `alpha`, soft temperature `tau`. The teacher's variables are the step's
    `extras['teacher']`."""

    teacher: nn.Module
    type: str = 'hard'
    alpha: float = 0.5
    tau: float = 1.0

    @property
    def frozen(self) -> dict[str, nn.Module]:
        return {'teacher': self.teacher}

    def __call__(self, outputs: Any, images: jax.Array, extras: Mapping[str, Any],
                 base: Callable[[jax.Array], jax.Array]) -> tuple[jax.Array, jax.Array]:
        """`(1 - alpha) * base(class head) + alpha * distillation(distillation head)` `[batch]`
        (one head: both on it), and the heads' average logits."""
        logits, kd_logits = outputs if isinstance(outputs, tuple) else (outputs, outputs)
        teacher = teacher_logits(self.teacher, extras['teacher'], images)
        loss = (1 - self.alpha) * base(logits) + self.alpha * distillation_loss(
            kd_logits, teacher, self.type, self.tau)
        return loss, (logits + kd_logits) / 2

    def load_extras(self, config: ml_collections.ConfigDict, placed_like: Mapping[str, Any]
                    ) -> dict[str, Any]:
        """`{'teacher': variables}` from `config.teacher.weights` (see `load_teacher`)."""
        return {'teacher': load_teacher(config, self.teacher, placed_like['teacher'])}


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array, kind: str,
                      tau: float = 1.0) -> jax.Array:
    """Per-example distillation loss `[batch]` of logits `[batch, classes]`: 'hard' is the
    cross-entropy with the teacher's argmax; 'soft' is `KL(p_teacher || p_student)` at
    temperature `tau`, times `tau²`, divided by the class count (so that its batch mean is
    DeiT's loss)."""
    if kind == 'hard':
        return optax.softmax_cross_entropy_with_integer_labels(student_logits,
                                                               teacher_logits.argmax(-1))
    log_student = jax.nn.log_softmax(student_logits / tau, axis=-1)
    log_teacher = jax.nn.log_softmax(teacher_logits / tau, axis=-1)
    kl = (jnp.exp(log_teacher) * (log_teacher - log_student)).sum(-1)
    return kl * tau ** 2 / student_logits.shape[-1]


def teacher_logits(teacher: nn.Module, variables: Any, images: jax.Array) -> jax.Array:
    """The frozen teacher's evaluation-mode logits `[batch, classes]` of the student's images
    `[batch, h, w, c]`, resized (bilinearly) to the teacher's `img_size` when it differs."""
    size = teacher.img_size
    if images.shape[1:3] != (size, size):
        images = jax.image.resize(images, (images.shape[0], size, size, images.shape[3]),
                                  'bilinear')
    return jax.lax.stop_gradient(teacher.apply(variables, images, train=False))


def from_config(config: ml_collections.ConfigDict, num_classes: int) -> Distillation | None:
    """The `Distillation` of `config.distill` with the teacher `config.teacher.model` (at
    `config.teacher.img_size`, default its registered size, with `num_classes` classes), or
    None when `config.distill.type` is 'none'. Reads no weights."""
    if config.distill.type == 'none':
        return None
    overrides = {'num_classes': num_classes}
    if config.teacher.img_size:
        overrides['img_size'] = config.teacher.img_size
    teacher = models.create_model(config.teacher.model, **overrides)
    return Distillation(teacher, config.distill.type, config.distill.alpha, config.distill.tau)


def load_teacher(config: ml_collections.ConfigDict, teacher: nn.Module, placed_like: Any,
                 ) -> Any:
    """The teacher's variables from `config.teacher.weights`, placed as `placed_like` (arrays
    or `jax.ShapeDtypeStruct`s with shardings) says."""
    path = config.teacher.weights
    try:
        variables = weights.load(teacher, path, strict=True)
    except VitJaxError as e:
        raise ConfigError(f'--config.teacher.weights={path} does not load into '
                          f'{config.teacher.model} ({teacher.num_classes} classes, '
                          f'{teacher.img_size}px): {e}') from None
    return jax.tree.map(sharding.place, variables, placed_like)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises a one-line `ConfigError` unless the teacher is given exactly when distillation
    is on (each key's own values are checked by `vit_jax.train.config_keys`)."""
    kind, teacher = config.distill.type, config.teacher
    if kind == 'none':
        if teacher.model or teacher.weights:
            raise ConfigError('--config.teacher is set but --config.distill.type=none; set '
                              '--config.distill.type=hard or soft')
        return
    if not (teacher.model and teacher.weights):
        raise ConfigError(f'--config.distill.type={kind} needs a teacher: set '
                          f'--config.teacher.model=NAME and --config.teacher.weights=FILE')
    models.get_spec(teacher.model)
