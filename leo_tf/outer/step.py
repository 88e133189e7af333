"""The one outer step: meta-gradient, NaN/Inf fallback, clipping, Adam.

A meta-training step is one `tf.function(jit_compile=True)` over a whole
meta-batch of any MetaLearner (outer.learner): forward through its inner loops
(vectorised over tasks), the second-order meta-gradient, the NaN fallback,
clipping and the Adam update. outer.distribute runs the same pieces per replica.

Outer update, as the original (runner.py, model.py), with its fallback fixed:
  - when the loss or any gradient is NaN or Inf, the gradients are replaced by
    those of 1e-4 * sum ||w||^2 / 2 over the regularised kernels (zero for the
    learning rates): a small weight decay that pulls the variables back into a
    region where the loss is defined. The original meant this but zipped
    gradients and variables in the wrong order and returned the variables
    themselves; it also checked only NaN, not Inf.
  - each gradient is clipped by value at `gradient_threshold`, then each by
    its own norm at `gradient_norm_threshold` (per tensor, as the original).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import keras
import tensorflow as tf

from leo_tf.core import objective
from leo_tf.core.config import OuterConfig
from leo_tf.outer.learner import MetaLearner

# The scalars of one meta-training step (for logs and TensorBoard), by name:
#   loss            the total meta-objective
#   val_loss, kl, encoder_penalty, l2, orthogonality   its terms (objective.MetaLoss)
#   ...             the learner's own (MetaLearner.step_scalars, e.g. accuracy)
#   gradient_norm   the global norm before clipping
#   fallback        1.0 when the NaN/Inf fallback replaced the gradients
StepMetrics = dict[str, tf.Tensor]


def fallback_gradients(model: MetaLearner) -> list[tf.Tensor]:
  """Gradients of 1e-4 * sum ||w||^2 / 2 w.r.t. model.meta_variables (zeros where unused)."""
  with tf.GradientTape() as tape:
    penalty = objective.FALLBACK_L2_WEIGHT * objective.l2_penalty(model.regularized_kernels)
  variables = model.meta_variables
  grads = tape.gradient(penalty, variables)
  return [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]


def all_finite(loss: tf.Tensor, grads: Sequence[tf.Tensor]) -> tf.Tensor:
  """True when the loss and every gradient entry are finite (no NaN, no Inf)."""
  checks = [tf.reduce_all(tf.math.is_finite(loss))]
  checks += [tf.reduce_all(tf.math.is_finite(g)) for g in grads]
  return tf.reduce_all(tf.stack(checks))


def clip_gradients(grads: Sequence[tf.Tensor], gradient_threshold: float,
                   gradient_norm_threshold: float) -> list[tf.Tensor]:
  """Clips each gradient by value, then each by its own norm (<= 0 switches one off)."""
  grads = list(grads)
  if gradient_threshold > 0:
    grads = [tf.clip_by_value(g, -gradient_threshold, gradient_threshold) for g in grads]
  if gradient_norm_threshold > 0:
    grads = [tf.clip_by_norm(g, gradient_norm_threshold) for g in grads]
  return grads


def meta_gradients(model: MetaLearner, batch: Any, noise: Any, config: OuterConfig
                   ) -> tuple[list[tf.Tensor], StepMetrics]:
  """Second-order meta-gradients, NaN-safe and clipped, with the step's metrics.

  `noise` is model.draw_noise(batch, seed): the step's random draws.
  """
  grads, metrics = raw_meta_gradients(model, batch, noise)
  return finalize_gradients(model, grads, metrics, config)


def raw_meta_gradients(model: MetaLearner, batch: Any, noise: Any
                       ) -> tuple[list[tf.Tensor], StepMetrics]:
  """Second-order meta-gradients of the objective, before the fallback and clipping.

  Returns the gradients (zeros for unconnected variables) and the metrics
  without gradient_norm and fallback (finalize_gradients adds them).
  """
  variables = model.meta_variables
  with tf.GradientTape() as tape:
    outputs = model(batch, training=True, noise=noise)
    loss = model.meta_loss(outputs)
  grads = tape.gradient(loss.total, variables)
  grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
  metrics = {"loss": loss.total, "val_loss": loss.val_loss, **model.step_scalars(outputs),
             "kl": loss.kl, "encoder_penalty": loss.encoder_penalty, "l2": loss.l2,
             "orthogonality": loss.orthogonality}
  return grads, metrics


def finalize_gradients(model: MetaLearner, grads: Sequence[tf.Tensor], metrics: StepMetrics,
                       config: OuterConfig) -> tuple[list[tf.Tensor], StepMetrics]:
  """The NaN/Inf fallback and clipping, on the meta-batch's (all-reduced) gradients."""
  finite = all_finite(metrics["loss"], grads)
  safe = fallback_gradients(model)
  grads = [tf.where(finite, g, s) for g, s in zip(grads, safe)]
  gradient_norm = tf.linalg.global_norm(grads)
  grads = clip_gradients(grads, config.gradient_threshold, config.gradient_norm_threshold)
  return grads, {**metrics, "gradient_norm": gradient_norm,
                 "fallback": 1.0 - tf.cast(finite, metrics["loss"].dtype)}


# The original's outer optimiser, tf.compat.v1.train.AdamOptimizer, has epsilon
# 1e-8 (Keras: 1e-7) and the same update, lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps).
ADAM_EPSILON = 1e-8


def make_optimizer(model: MetaLearner, config: OuterConfig) -> keras.optimizers.Optimizer:
  """The original's Adam at outer_lr, with its slots built (so a compiled step creates no variables)."""
  optimizer = keras.optimizers.Adam(learning_rate=config.outer_lr, epsilon=ADAM_EPSILON)
  optimizer.build(model.meta_variables)
  return optimizer


def make_train_step(model: MetaLearner, optimizer: keras.optimizers.Optimizer,
                    config: OuterConfig) -> Callable[[Any, tf.Tensor], StepMetrics]:
  """Returns step(batch, seed) -> StepMetrics, one compiled function per meta-batch.

  The step's random draws (model.draw_noise) are made first by TF's kernels,
  outside the XLA cluster; everything else (both inner loops, the
  second-order meta-gradient, the fallback, clipping and Adam) is one
  XLA-compiled function. So XLA on and off give the same draws for a seed.
  """

  @tf.function(jit_compile=config.jit_compile, reduce_retracing=True, autograph=False)
  def compiled_step(batch, noise) -> StepMetrics:
    grads, metrics = meta_gradients(model, batch, noise, config)
    optimizer.apply_gradients(zip(grads, model.meta_variables))
    return metrics

  @tf.function(reduce_retracing=True, autograph=False)
  def train_step(batch, seed: tf.Tensor) -> StepMetrics:
    return compiled_step(batch, model.draw_noise(batch, seed))

  return train_step
