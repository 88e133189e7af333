"""Nearest class mean (prototypes) on fixed features: the baseline with nothing to learn.

Each class's prototype is the mean of its K support embeddings; a query goes to
the class whose prototype is nearest in squared Euclidean distance (as
Prototypical Networks, Snell et al. 2017, but on the stage-1 features rather
than on a metric-trained embedding):

    c_n = 1/K sum_k x_{n,k},    logit_n(x) = -||x - c_n||^2.

`ncm_accuracy` is the NumPy version (stage 1 uses it to pick its epoch);
`Prototypes` wraps the same rule in the MetaLearner contract with LEO's outputs
(`__call__(problem, *, training, seed) -> LEOOutputs`, `meta_variables`, ...),
so that classification.experiment evaluates it with the same episodes and confidence
intervals; it has no variables and cannot be meta-trained.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from leo_tf.core import classifier
from leo_tf.classification.leo import LEOOutputs, validate_problem
from leo_tf.core.config import check_at_least
from leo_tf.data.episodes import ProblemInstance
from leo_tf.outer import learner


def ncm_logits_numpy(tr_input: np.ndarray, val_input: np.ndarray) -> np.ndarray:
  """-squared distances to the class means: [B, N, K, D], [B, N, V, D] -> [B, N, V, N]."""
  prototypes = np.mean(tr_input, axis=2)  # [B, N, K, D] -> [B, N, D]
  # ||x - c||^2 = |x|^2 - 2 <x, c> + |c|^2
  cross = np.einsum("bnvd,bcd->bnvc", val_input, prototypes)  # [B, N, V, N]
  query_sq = np.einsum("bnvd,bnvd->bnv", val_input, val_input)  # [B, N, V]
  proto_sq = np.einsum("bcd,bcd->bc", prototypes, prototypes)  # [B, N]
  return -(query_sq[..., None] - 2.0 * cross + proto_sq[:, None, None, :])  # [B, N, V, N]


def ncm_accuracy(problem: ProblemInstance) -> np.ndarray:
  """Per-task query accuracy [B] of the nearest class mean on a numpy problem."""
  logits = ncm_logits_numpy(np.asarray(problem.tr_input), np.asarray(problem.val_input))
  predictions = np.argmax(logits, axis=-1)  # [B, N, V]
  return np.mean(predictions == np.asarray(problem.val_output), axis=(1, 2))  # [B]


@dataclasses.dataclass(frozen=True)
class PrototypesConfig:
  """The nearest-class-mean baseline: only the feature size, to check inputs."""

  embedding_dim: int = 640  # D

  def __post_init__(self):
    check_at_least(self, 1, "embedding_dim")


class Prototypes(tf.Module):
  """Nearest class mean with the LEO model interface (no variables).

  LEOOutputs fields, for this model:
    latents: the support embeddings [B, N, K, D] (the "codes" it starts from);
    adapted_latents: the prototypes [B, N, 1, D];
    classifier_weights: the prototypes [B, N, D];
    val_logits: -squared distances [B, N, V, N];
    kl, encoder_penalty: zeros [B].
  """

  score = learner.ACCURACY

  def __init__(self, config: PrototypesConfig, *, name: str = "prototypes"):
    super().__init__(name=name)
    self.config = config

  @property
  def regularized_kernels(self) -> list:
    return []

  @property
  def meta_variables(self) -> list:
    return []

  @property
  def learned_rates(self) -> dict[str, tf.Variable]:
    return {}

  def step_scalars(self, outputs: LEOOutputs) -> dict[str, tf.Tensor]:
    return {"accuracy": tf.reduce_mean(outputs.val_accuracy)}

  def draw_noise(self, problem: ProblemInstance, seed: tf.Tensor):
    raise ValueError("The nearest-class-mean baseline draws nothing and cannot be "
                     "meta-trained; evaluate it with --model=prototypes.")

  def __call__(self, problem: ProblemInstance, *, training: bool,
               seed: tf.Tensor | None = None, noise=None) -> LEOOutputs:
    """Classifies the queries of B tasks by their nearest class mean.

    Args:
      problem: B tasks, [B, N, K, D] support and [B, N, V, D] queries.
      training: must be False: there is nothing to meta-train.
      seed, noise: unused (accepted for the common model interface).
    """
    del seed, noise
    if learner.check_training_flag(training):
      raise ValueError("The nearest-class-mean baseline has no parameters to meta-train; call "
                       "it with training=False (--model=prototypes only evaluates).")
    validate_problem(problem, self.config.embedding_dim)
    tr_input = tf.convert_to_tensor(problem.tr_input, tf.float32)  # [B, N, K, D]
    val_input = tf.convert_to_tensor(problem.val_input, tf.float32)  # [B, N, V, D]
    tr_output = tf.convert_to_tensor(problem.tr_output, tf.int32)  # [B, N, K]
    val_output = tf.convert_to_tensor(problem.val_output, tf.int32)  # [B, N, V]
    prototypes = tf.reduce_mean(tr_input, axis=2)  # [B, N, K, D] -> [B, N, D]

    def logits(x):
      cross = tf.einsum("bnvd,bcd->bnvc", x, prototypes)  # [B, N, V, N]
      x_sq = tf.reduce_sum(tf.square(x), axis=-1)  # [B, N, V]
      p_sq = tf.reduce_sum(tf.square(prototypes), axis=-1)  # [B, N]
      return -(x_sq[..., None] - 2.0 * cross + p_sq[:, None, None, :])  # [B, N, V, N]

    val_logits = logits(val_input)
    tr_loss = classifier.cross_entropy(logits(tr_input), tr_output)  # [B, N, K]
    val_loss = classifier.cross_entropy(val_logits, val_output)  # [B, N, V]
    zeros = tf.zeros(tf.shape(tr_input)[:1], tf.float32)  # [B]
    return LEOOutputs(
        val_loss=tf.reduce_mean(val_loss, axis=[1, 2]),
        val_accuracy=classifier.accuracy(val_logits, val_output),
        tr_loss=tf.reduce_mean(tr_loss, axis=[1, 2]),
        kl=zeros, encoder_penalty=zeros,
        latents=tr_input,
        adapted_latents=prototypes[:, :, None, :],  # [B, N, D] -> [B, N, 1, D]
        classifier_weights=prototypes,
        val_logits=val_logits)

  def meta_loss(self, outputs: LEOOutputs):
    raise ValueError("The nearest-class-mean baseline has no meta-objective (nothing to "
                     "train); evaluate it with --model=prototypes, which skips training.")
