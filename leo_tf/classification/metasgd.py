"""Meta-SGD (Li et al. 2017) on fixed features: the paper's "Meta-SGD (our features)".

A linear softmax classifier theta = (W, b), W [N, D], b [N], is adapted to each
task in parameter space by gradient steps whose learning rates are themselves
meta-learned, one per parameter:

    theta'  = theta_0 - alpha (.) grad_theta L_tr(theta)     (repeated num_inner_steps times)
    min_{theta_0, alpha}  E_tasks L_val(theta')  + lambda_1 ||theta_0||^2 / 2

theta_0 (the initial classifier) and alpha (the same shape as theta) are the
meta-parameters. As in LEO's fine-tuning (and the original code), the inner
gradient is that of the support loss summed over the task's N K examples, and
dropout is applied to the features in meta-training. The bias is folded into
the weights: features get a constant 1 appended, so theta is one tensor
[N, D + 1] and the inner loop is inner_loops.finetuning_inner_loop, the pure
function LEO's fine-tuning uses (with alpha [N, 1, D + 1] instead of [D]).

The class is a MetaLearner (outer.learner) with LEO's outputs (`__call__(problem,
*, training, seed, noise) -> LEOOutputs`), so the one outer step and fit loop
train it and classification.experiment evaluates it as LEO. LEOOutputs
fields, for this model:
  latents:          theta_0's weights W_0 for each task [B, N, 1, D] (Meta-SGD's
                    "code" is the classifier itself);
  adapted_latents:  the adapted weights W' [B, N, 1, D];
  classifier_weights: W' [B, N, D];
  kl, encoder_penalty: zeros [B].
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import tensorflow as tf

from leo_tf.core import classifier
from leo_tf.core import inner_loops
from leo_tf.core import objective
from leo_tf.core import seeds
from leo_tf.core.config import (DTYPES, ModelConfig, check_at_least, check_choice, check_fraction,
                                check_positive)
from leo_tf.classification.leo import LEOOutputs, validate_problem
from leo_tf.data.episodes import ProblemInstance
from leo_tf.outer import learner


@dataclasses.dataclass(frozen=True)
class MetaSGDConfig:
  """Meta-SGD's linear classifier on D-dimensional features."""

  embedding_dim: int = 640  # D
  num_classes: int = 5  # N: theta_0 has one row per output slot
  num_inner_steps: int = 1  # adaptation steps (1 in Li et al.)
  inner_lr_init: float = 1.0  # initial alpha, every entry
  dropout_rate: float = 0.0  # dropout on the features during meta-training
  l2_penalty_weight: float = 0.0  # lambda_1 on theta_0 (weights and bias)
  dtype: str = "float32"

  def __post_init__(self):
    check_at_least(self, 1, "embedding_dim")
    if self.num_classes < 2:
      raise ValueError(f"num_classes (N) must be >= 2, got {self.num_classes}.")
    if self.num_inner_steps < 1:
      raise ValueError(
          f"num_inner_steps must be >= 1 (Meta-SGD adapts at least once), got "
          f"{self.num_inner_steps}; for Meta-SGD set --finetuning_unroll_length >= 1.")
    check_positive(self, "inner_lr_init")
    check_fraction(self, "dropout_rate")
    check_at_least(self, 0, "l2_penalty_weight")
    check_choice(self, "dtype", DTYPES)

  @classmethod
  def from_model_config(cls, model: ModelConfig, num_classes: int) -> "MetaSGDConfig":
    """Meta-SGD settings from the LEO flags: its adaptation is LEO's fine-tuning.

    num_inner_steps <- finetuning_unroll_length, inner_lr_init <-
    finetuning_lr_init, and embedding_dim, dropout_rate, l2_penalty_weight, dtype
    as they are.
    """
    return cls(embedding_dim=model.embedding_dim, num_classes=num_classes,
               num_inner_steps=model.finetuning_unroll_length,
               inner_lr_init=model.finetuning_lr_init, dropout_rate=model.dropout_rate,
               l2_penalty_weight=model.l2_penalty_weight, dtype=model.dtype)


class MetaSGDNoise(NamedTuple):
  """The random draws of one meta-training pass over B tasks (dropout masks)."""

  support_keep: tf.Tensor  # [T + 1, B, N, K, D] multipliers of the support-loss evaluations
  query_keep: tf.Tensor  # [B, N, V, D] multiplier of the queries


def with_bias_feature(inputs: tf.Tensor) -> tf.Tensor:
  """Appends a constant 1 to every feature vector: [..., D] -> [..., D + 1]."""
  ones = tf.ones(tf.concat([tf.shape(inputs)[:-1], [1]], axis=0), inputs.dtype)
  return tf.concat([inputs, ones], axis=-1)  # [..., D] ++ [..., 1] -> [..., D + 1]


class MetaSGD(tf.Module):
  """theta_0 [N, D + 1] (weights and bias) and alpha [N, D + 1], meta-learned."""

  score = learner.ACCURACY

  def __init__(self, config: MetaSGDConfig, *, name: str = "metasgd"):
    """Builds the variables: theta_0 = 0 (all slots alike; labels are permuted per task)."""
    super().__init__(name=name)
    self.config = config
    shape = [config.num_classes, config.embedding_dim + 1]
    self.initial_weights = tf.Variable(tf.zeros(shape, config.dtype), name="initial_weights")
    self.inner_lr = tf.Variable(tf.fill(shape, tf.constant(config.inner_lr_init, config.dtype)),
                                name="inner_lr")

  @property
  def dtype(self) -> tf.DType:
    return tf.as_dtype(self.config.dtype)

  @property
  def regularized_kernels(self) -> list:
    """theta_0: the L2 term (and outer.py's NaN fallback) act on it."""
    return [self.initial_weights]

  @property
  def meta_variables(self) -> list:
    return [self.initial_weights, self.inner_lr]

  @property
  def learned_rates(self) -> dict[str, tf.Variable]:
    """alpha, logged by the outer loop."""
    return {"inner_lr": self.inner_lr}

  def step_scalars(self, outputs: LEOOutputs) -> dict[str, tf.Tensor]:
    """The meta-batch's mean query accuracy."""
    return {"accuracy": tf.reduce_mean(outputs.val_accuracy)}

  def draw_noise(self, problem: ProblemInstance, seed: tf.Tensor) -> "MetaSGDNoise":
    """The dropout masks of a meta-training pass on `problem`, from an int32 [2] seed.

    Drawn with TF's stateless kernels; outer.step.make_train_step draws them outside
    its XLA-compiled function and passes them as `noise`.
    """
    c = self.config
    tr_shape = tf.shape(problem.tr_input)  # [B, N, K, D]
    val_shape = tf.shape(problem.val_input)  # [B, N, V, D]
    support_seed, query_seed = seeds.split_seed(seed, 2)
    return MetaSGDNoise(
        support_keep=seeds.dropout_keep_mask(tf.concat([[c.num_inner_steps + 1], tr_shape], 0),
                               c.dropout_rate, support_seed, self.dtype),
        query_keep=seeds.dropout_keep_mask(val_shape, c.dropout_rate, query_seed, self.dtype))

  def __call__(self, problem: ProblemInstance, *, training: bool,
               seed: tf.Tensor | None = None, noise: "MetaSGDNoise | None" = None
               ) -> LEOOutputs:
    """Adapts theta_0 to each of B tasks and classifies their queries.

    Args:
      problem: B N-way tasks, tr_input [B, N, K, D], val_input [B, N, V, D];
        N must be config.num_classes.
      training: meta-training (dropout on the features) or evaluation.
      seed: int32 [2] stateless seed of the dropout masks (meta-training).
      noise: the masks themselves (draw_noise), instead of seed.

    Returns:
      LEOOutputs (see the module docstring for what latents mean here).
    """
    learner.check_training_flag(training)
    if training and seed is None and noise is None:
      raise ValueError("Meta-training draws dropout masks: pass seed, an int32 [2] tensor "
                       "(e.g. seeds.step_seed(run_seed, step)), or noise=draw_noise(...).")
    c = self.config
    validate_problem(problem, c.embedding_dim)
    n = tf.TensorShape(problem.tr_input.shape)[1]
    if n is not None and n != c.num_classes:
      raise ValueError(
          f"The tasks are {n}-way but this Meta-SGD model was built for N = {c.num_classes} "
          f"(its initial classifier has {c.num_classes} rows); build it with num_classes={n} "
          "(--num_classes).")
    tr_input = tf.convert_to_tensor(problem.tr_input, self.dtype)  # [B, N, K, D]
    val_input = tf.convert_to_tensor(problem.val_input, self.dtype)  # [B, N, V, D]
    tr_output = tf.convert_to_tensor(problem.tr_output, tf.int32)  # [B, N, K]
    val_output = tf.convert_to_tensor(problem.val_output, tf.int32)  # [B, N, V]
    t = c.num_inner_steps
    if training and noise is None:
      noise = self.draw_noise(problem, seed)
    support_keep = [noise.support_keep[i] if training else None for i in range(t + 1)]
    query_keep = noise.query_keep if training else None

    def loss_and_logits(inputs, labels, weights, mask):
      x = inputs if mask is None else inputs * mask  # dropout on the features
      x = with_bias_feature(x)  # [B, N, M, D + 1]
      logits = classifier.logits(x, weights)  # [B, N, M, N] (weights [B, N, 1, D + 1])
      return classifier.cross_entropy(logits, labels), logits  # [B, N, M]

    batch = tf.shape(tr_input)[0]
    # theta_0 for every task: [N, D + 1] -> [B, N, 1, D + 1]
    weights0 = tf.tile(self.initial_weights[None, :, None, :], [batch, 1, 1, 1])
    learning_rate = self.inner_lr[:, None, :]  # [N, D + 1] -> [N, 1, D + 1], broadcasts over B
    weights = inner_loops.finetuning_inner_loop(
        weights0, learning_rate,
        lambda w, i: loss_and_logits(tr_input, tr_output, w, support_keep[i])[0], num_steps=t)
    tr_loss, _ = loss_and_logits(tr_input, tr_output, weights, support_keep[t])
    val_loss, val_logits = loss_and_logits(val_input, val_output, weights, query_keep)
    zeros = tf.zeros(tf.reshape(batch, [1]), self.dtype)  # [B]
    return LEOOutputs(
        val_loss=tf.reduce_mean(val_loss, axis=[1, 2]),
        val_accuracy=classifier.accuracy(val_logits, val_output),
        tr_loss=tf.reduce_mean(tr_loss, axis=[1, 2]),
        kl=zeros, encoder_penalty=zeros,
        latents=weights0[..., :-1],  # [B, N, 1, D]
        adapted_latents=weights[..., :-1],  # [B, N, 1, D]
        classifier_weights=weights[:, :, 0, :-1],  # [B, N, 1, D + 1] -> [B, N, D]
        val_logits=val_logits)

  def meta_loss(self, outputs: LEOOutputs) -> objective.MetaLoss:
    """Mean query loss + lambda_1 ||theta_0||^2 / 2 (no KL, encoder or orthogonality terms)."""
    zero = tf.zeros([], self.dtype)
    return objective.meta_loss(
        outputs.val_loss, outputs.kl, outputs.encoder_penalty,
        objective.l2_penalty(self.regularized_kernels), zero,
        kl_weight=0.0, encoder_penalty_weight=0.0,
        l2_penalty_weight=self.config.l2_penalty_weight, orthogonality_penalty_weight=0.0)
