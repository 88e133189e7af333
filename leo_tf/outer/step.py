"""The outer loop: one compiled meta-training step, and the evaluation step.

A meta-training step is one `tf.function(jit_compile=True)` over a whole
meta-batch: forward through both inner loops (vectorised over tasks), the
second-order meta-gradient, the NaN fallback, clipping and the Adam update.

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

from typing import Callable, NamedTuple, Sequence

import keras
import numpy as np
import tensorflow as tf

from leo_tf.core import objective
from leo_tf.core.config import OuterConfig
from leo_tf.classification.leo import LEO, Noise, ProblemInstance


class StepMetrics(NamedTuple):
  """Scalars of one meta-training step, for logs and TensorBoard."""

  loss: tf.Tensor  # total meta-objective
  val_loss: tf.Tensor
  accuracy: tf.Tensor  # mean query accuracy of the meta-batch
  kl: tf.Tensor
  encoder_penalty: tf.Tensor
  l2: tf.Tensor
  orthogonality: tf.Tensor
  gradient_norm: tf.Tensor  # global norm before clipping
  fallback: tf.Tensor  # 1.0 when the NaN/Inf fallback replaced the gradients


def fallback_gradients(model: LEO) -> list[tf.Tensor]:
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


def meta_gradients(model: LEO, problem: ProblemInstance, seed: tf.Tensor | None,
                   config: OuterConfig, noise: Noise | None = None
                   ) -> tuple[list[tf.Tensor], StepMetrics]:
  """Second-order meta-gradients, NaN-safe and clipped, with the step's metrics.

  The random draws come from `noise` when given, else from `seed`.
  """
  grads, metrics = raw_meta_gradients(model, problem, seed, noise)
  return finalize_gradients(model, grads, metrics, config)


def raw_meta_gradients(model: LEO, problem: ProblemInstance, seed: tf.Tensor | None,
                       noise: Noise | None = None) -> tuple[list[tf.Tensor], StepMetrics]:
  """Second-order meta-gradients of the objective, before the fallback and clipping.

  Returns the gradients (zeros for unconnected variables) and the metrics, with
  gradient_norm and fallback still 0 (finalize_gradients fills them).
  """
  variables = model.meta_variables
  with tf.GradientTape() as tape:
    outputs = model(problem, training=True, seed=seed, noise=noise)
    loss = model.meta_loss(outputs)
  grads = tape.gradient(loss.total, variables)
  grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
  zero = tf.zeros([], loss.total.dtype)
  metrics = StepMetrics(
      loss=loss.total, val_loss=loss.val_loss, accuracy=tf.reduce_mean(outputs.val_accuracy),
      kl=loss.kl, encoder_penalty=loss.encoder_penalty, l2=loss.l2,
      orthogonality=loss.orthogonality, gradient_norm=zero, fallback=zero)
  return grads, metrics


def finalize_gradients(model: LEO, grads: Sequence[tf.Tensor], metrics: StepMetrics,
                       config: OuterConfig) -> tuple[list[tf.Tensor], StepMetrics]:
  """The NaN/Inf fallback and clipping, on the meta-batch's (all-reduced) gradients."""
  finite = all_finite(metrics.loss, grads)
  safe = fallback_gradients(model)
  grads = [tf.where(finite, g, s) for g, s in zip(grads, safe)]
  gradient_norm = tf.linalg.global_norm(grads)
  grads = clip_gradients(grads, config.gradient_threshold, config.gradient_norm_threshold)
  return grads, metrics._replace(gradient_norm=gradient_norm,
                                 fallback=1.0 - tf.cast(finite, metrics.loss.dtype))


def make_optimizer(model: LEO, config: OuterConfig) -> keras.optimizers.Optimizer:
  """Adam at outer_lr, with its slots built (so a compiled step creates no variables)."""
  optimizer = keras.optimizers.Adam(learning_rate=config.outer_lr)
  optimizer.build(model.meta_variables)
  return optimizer


def make_train_step(model: LEO, optimizer: keras.optimizers.Optimizer, config: OuterConfig
                    ) -> Callable[[ProblemInstance, tf.Tensor], StepMetrics]:
  """Returns step(problem, seed) -> StepMetrics, one compiled function per meta-batch.

  The step's random draws (model.draw_noise) are made first by TF's kernels,
  outside the XLA cluster; everything else (both inner loops, the
  second-order meta-gradient, the fallback, clipping and Adam) is one
  XLA-compiled function. So XLA on and off give the same draws for a seed.
  """

  @tf.function(jit_compile=config.jit_compile, reduce_retracing=True)
  def compiled_step(problem: ProblemInstance, noise: Noise) -> StepMetrics:
    grads, metrics = meta_gradients(model, problem, None, config, noise=noise)
    optimizer.apply_gradients(zip(grads, model.meta_variables))
    return metrics

  @tf.function(reduce_retracing=True)
  def train_step(problem: ProblemInstance, seed: tf.Tensor) -> StepMetrics:
    return compiled_step(problem, model.draw_noise(problem, seed))

  return train_step


def make_eval_step(model: LEO, jit_compile: bool = True
                   ) -> Callable[[ProblemInstance], tuple[tf.Tensor, tf.Tensor]]:
  """Returns step(problem) -> (per-task query accuracy [B], per-task query loss [B])."""

  @tf.function(jit_compile=jit_compile, reduce_retracing=True)
  def eval_step(problem: ProblemInstance) -> tuple[tf.Tensor, tf.Tensor]:
    outputs = model(problem, training=False)
    return outputs.val_accuracy, outputs.val_loss

  return eval_step


class SplitEvaluator:
  """Evaluation from image indices, for models with a linear adapted classifier (LEO).

  The fast path of evaluation. Every task of a batch draws from one split, so
  instead of gathering each task's queries (7.7 MB per task with 599 queries
  per class), the split's embeddings are grouped by class once, X [C, S, D]
  (S: images of the largest class), and each class's block is multiplied
  with the adapted classifiers of exactly the tasks that contain the class:

      P[c, s, j, :] = X[c, s] W_{t(c, j)}^T        [C, S, T, N]

  (t(c, j): the j-th task holding class c, T of them at most). A query of
  class c at position s in its class, in task t(c, j), then has the logits
  P[c, s, j]. A compute-bound product, a quarter of the work of multiplying
  every image with every task's classifier, and memory that does not grow
  with the number of queries. Equal to model(problem, training=False)
  .val_accuracy on the same tasks (tested).
  """

  def __init__(self, model: LEO, split, num_tr_examples_per_class: int,
               jit_compile: bool = True):
    """Builds the class blocks of `split` (an embeddings.EmbeddingSplit)."""
    self.model = model
    self.k = num_tr_examples_per_class
    embeddings = split.embeddings  # [M, D]
    padded = split.class_image_indices  # [C, S], -1 padded
    self.blocks = tf.constant(embeddings[np.maximum(padded, 0)] * (padded >= 0)[..., None],
                              model.dtype)  # [C, S, D], zeros where padded
    self.embeddings = tf.constant(embeddings, model.dtype)  # [M, D]
    self.num_classes_total = padded.shape[0]
    # row -> (class, position in the class)
    self.row_class = np.zeros(embeddings.shape[0], np.int32)
    self.row_position = np.zeros(embeddings.shape[0], np.int32)
    classes, positions = np.nonzero(padded >= 0)
    self.row_class[padded[classes, positions]] = classes
    self.row_position[padded[classes, positions]] = positions
    self._step = tf.function(self._accuracy, jit_compile=jit_compile, reduce_retracing=True)

  def _accuracy(self, indices, slot_class, slot_rank, class_tasks, positions):
    k = self.k
    num_classes = tf.shape(indices)[1]
    labels = tf.range(num_classes, dtype=tf.int32)[None, :, None]  # [1, N, 1]
    tr_input = tf.gather(self.embeddings, indices[:, :, :k])  # [B, N, K, D]
    tr_output = tf.broadcast_to(labels, tf.shape(indices[:, :, :k]))  # [B, N, K]
    weights = self.model.adapted_class_weights(tr_input, tr_output)  # [B, N, D]
    task_weights = tf.gather(weights, class_tasks)  # [C, T, N, D]
    products = tf.einsum("csd,ctnd->cstn", self.blocks, task_weights)  # [C, S, T, N]
    query_shape = tf.shape(positions)  # [B, N, V]
    where = tf.stack([tf.broadcast_to(slot_class[:, :, None], query_shape), positions,
                      tf.broadcast_to(slot_rank[:, :, None], query_shape)], axis=-1)
    logits = tf.gather_nd(products, where)  # [B, N, V, N]
    predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)  # [B, N, V]
    correct = tf.cast(tf.equal(predictions, labels), self.model.dtype)
    return tf.reduce_mean(correct, axis=[1, 2])  # [B]

  def __call__(self, indices: np.ndarray) -> tf.Tensor:
    """indices int [B, N, K + V] (rows of the split; first K support) -> accuracy [B]."""
    indices = np.asarray(indices, np.int32)
    batch, num_classes = indices.shape[:2]
    slot_class = self.row_class[indices[:, :, 0]]  # [B, N]: the class of each slot
    flat = slot_class.ravel()  # [B * N]
    order = np.argsort(flat, kind="stable")  # slots grouped by class
    counts = np.bincount(flat, minlength=self.num_classes_total)  # [C]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])  # [C]
    rank = np.empty_like(flat)
    rank[order] = np.arange(flat.size) - starts[flat[order]]  # j of each slot in its class
    # T rounded up to a multiple of 16: few distinct shapes, few compilations.
    width = max(16, -(-int(counts.max()) // 16) * 16)
    class_tasks = np.zeros((self.num_classes_total, width), np.int32)  # [C, T]; 0 unused
    class_tasks[flat[order], rank[order]] = order // num_classes  # the task of each slot
    positions = self.row_position[indices[:, :, self.k:]]  # [B, N, V]
    return self._step(tf.constant(indices), tf.constant(slot_class),
                      tf.constant(rank.reshape(batch, num_classes)), tf.constant(class_tasks),
                      tf.constant(positions))
