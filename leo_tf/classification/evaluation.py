"""Meta-validation and meta-test of classification learners: per-task query accuracy.

Every task of an evaluation is one sampler step's single task (task t does not
depend on the chunk size), with every remaining image of each class as a
query, as the original. LEO takes the fast path, SplitEvaluator, which never
gathers the queries; other learners gather their tasks in chunks bounded by
eval_chunk_mb of features.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from leo_tf.classification.leo import LEO
from leo_tf.core.config import DataConfig
from leo_tf.data import embeddings
from leo_tf.data import episodes
from leo_tf.data.episodes import ProblemInstance


def make_eval_step(model, jit_compile: bool = True
                   ) -> Callable[[ProblemInstance], tuple[tf.Tensor, tf.Tensor]]:
  """Returns step(problem) -> (per-task query accuracy [B], per-task query loss [B])."""

  @tf.function(jit_compile=jit_compile, reduce_retracing=True, autograph=False)
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
    self._step = tf.function(self._accuracy, jit_compile=jit_compile, reduce_retracing=True,
                             autograph=False)

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


def eval_sampler(data: DataConfig, split: embeddings.EmbeddingSplit, stream: str, seed: int
                 ) -> episodes.EpisodeSampler:
  """The sampler of meta-validation or meta-test tasks: every remaining image is a query."""
  num_val = episodes.num_eval_val_examples(split, data.num_tr_examples_per_class)
  return episodes.EpisodeSampler(split, data.num_classes, data.num_tr_examples_per_class,
                                 num_val, seed=seed, stream=stream)


def eval_chunk_size(eval_chunk_mb: int, sampler: episodes.EpisodeSampler, batch_size: int) -> int:
  """Tasks per evaluation chunk: at most batch_size, and at most eval_chunk_mb of features."""
  per_class = sampler.num_tr_examples_per_class + sampler.num_val_examples_per_class
  task_bytes = sampler.num_classes * per_class * sampler.split.embedding_dim * 4
  return max(1, min(batch_size, (eval_chunk_mb << 20) // task_bytes))


def evaluate_tasks(eval_step, sampler: episodes.EpisodeSampler, num_tasks: int,
                   chunk_size: int) -> np.ndarray:
  """Per-task query accuracy [num_tasks] of the sampler's first tasks, by gathering them.

  The straightforward path (any model): chunks of gathered features through
  eval_step(problem) -> (accuracy [B], loss [B]).
  """
  accuracies = []
  for chunk in episodes.iterate_tasks(sampler, num_tasks, chunk_size):
    accuracy, _ = eval_step(ProblemInstance(*chunk))
    accuracies.append(accuracy.numpy())
  return np.concatenate(accuracies)


def make_task_evaluator(model, sampler: episodes.EpisodeSampler, batch_size: int, *,
                        eval_chunk_mb: int, jit_compile: bool = True
                        ) -> Callable[[int], np.ndarray]:
  """Returns evaluate(num_tasks) -> per-task query accuracy [num_tasks].

  LEO, whose adapted classifier is linear (LEO.adapted_class_weights), takes
  the fast path, SplitEvaluator: indices instead of gathered features, logits
  from class-blocked products with the split's embeddings; chunks are bounded
  by eval_chunk_mb of those products. Other learners (Meta-SGD, whose features
  carry a bias entry, and the nearest class mean, whose logits are distances)
  gather their tasks' features in chunks bounded by eval_chunk_mb. Both see the
  same tasks (task t is the sampler's step-t task).
  """
  if not isinstance(model, LEO):
    eval_step = make_eval_step(model, jit_compile)
    chunk = eval_chunk_size(eval_chunk_mb, sampler, batch_size)
    return lambda num_tasks: evaluate_tasks(eval_step, sampler, num_tasks, chunk)
  step = SplitEvaluator(model, sampler.split, sampler.num_tr_examples_per_class, jit_compile)
  # The product holds at most (images of the largest class) x N floats per task
  # and class it holds: N (S N) floats per task.
  product_bytes = sampler.split.class_image_indices.shape[1] * sampler.num_classes ** 2 * 4
  chunk = max(1, min(batch_size, (eval_chunk_mb << 20) // product_bytes))

  def evaluate_fast(num_tasks: int) -> np.ndarray:
    if num_tasks < 1:
      raise ValueError(f"num_tasks must be >= 1, got {num_tasks}.")
    accuracies = []
    for first in range(0, num_tasks, chunk):
      indices = sampler.sample_task_indices(first, min(chunk, num_tasks - first))  # [B, N, K+V]
      accuracies.append(step(indices).numpy())
    return np.concatenate(accuracies)

  return evaluate_fast
