"""MAML (Finn et al., 2017) on the same tasks and the same f_theta as the regression LEO.

The baseline of section 4.1: one meta-learned initialisation theta_0 of the
MLP 1 -> 40 -> 40 -> 1 (1761 parameters), adapted per task in parameter space
by plain gradient descent on the support MSE,

    theta_{i+1} = theta_i - alpha grad_theta L_tr(f_theta_i),   i < num_inner_steps,

with a fixed scalar alpha, and meta-trained through those steps with the full
second-order meta-gradient. The inner loop is the core's
`inner_loops.finetuning_inner_loop` (pure, nested tapes); the base learner and
its losses are regression.mlp's, so the two methods differ only in where they
adapt. MAML is deterministic: its prediction is one function (S = 1).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from leo_tf.core import inner_loops
from leo_tf.core import objective
from leo_tf.outer import learner
from leo_tf.regression import leo
from leo_tf.regression import mlp
from leo_tf.core.config import DTYPES, check_at_least, check_choice
from leo_tf.regression.tasks import RegressionTasks


@dataclasses.dataclass(frozen=True)
class MAMLConfig:
  """The MAML baseline."""

  hidden_units: tuple[int, ...] = (40, 40)  # f_theta's hidden layers, as LEO's
  inner_lr: float = 0.01  # alpha, fixed (MAML's sinusoid setting)
  num_inner_steps: int = 5  # gradient steps per task, in meta-training and evaluation
  l2_penalty_weight: float = 0.0  # weight decay on theta_0 (sum theta^2 / 2)
  dtype: str = "float32"

  def __post_init__(self):
    mlp.check_hidden_units(self.hidden_units)
    if self.inner_lr < 0:
      raise ValueError(f"inner_lr (alpha) must be >= 0, got {self.inner_lr}.")
    check_at_least(self, 0, "num_inner_steps", "l2_penalty_weight")
    check_choice(self, "dtype", DTYPES)


class MAML(tf.Module):
  """MAML's initialisation theta_0 [P] and its second-order inner loop (a MetaLearner)."""

  score = learner.MSE

  def __init__(self, config: MAMLConfig, *, seed: int = 0, first_order: bool = False,
               name: str = "maml"):
    super().__init__(name=name)
    self.config = config
    self.first_order = first_order
    self.num_params = mlp.num_params(config.hidden_units)
    init = mlp.glorot_params(config.hidden_units, np.random.default_rng(seed))
    self.init_params = tf.Variable(init.astype(config.dtype), name="init_params")  # theta_0 [P]

  @property
  def dtype(self) -> tf.DType:
    return tf.as_dtype(self.config.dtype)

  @property
  def regularized_kernels(self) -> list:
    """What the L2 term (and the outer loop's NaN fallback) act on."""
    return [self.init_params]

  @property
  def meta_variables(self) -> list:
    return [self.init_params]

  @property
  def learned_rates(self) -> dict[str, tf.Variable]:
    return {}  # alpha is fixed

  def draw_noise(self, tasks: RegressionTasks, seed: tf.Tensor, num_samples: int | None = None
                 ) -> tuple[()]:
    """MAML draws nothing: the empty nest."""
    del tasks, seed, num_samples
    return ()

  def step_scalars(self, outputs: leo.RegressionOutputs) -> dict[str, tf.Tensor]:
    """The meta-batch's mean support MSE after adaptation."""
    return {"tr_loss": tf.reduce_mean(outputs.tr_loss)}

  def __call__(self, tasks: RegressionTasks, *, training: bool, seed: tf.Tensor | None = None,
               num_samples: int | None = None, use_means: bool = False, noise: None = None
               ) -> leo.RegressionOutputs:
    """Adapts theta_0 to each task and predicts its queries.

    The signature is LEORegression's; MAML draws nothing, so seed, num_samples,
    use_means and noise are ignored and S = 1.

    Returns:
      RegressionOutputs with S = 1 (kl, encoder_penalty and the latents are
      zeros of shape [B] and [B, 1, 0]).
    """
    del seed, num_samples, use_means, noise  # deterministic
    learner.check_training_flag(training)
    leo.validate_tasks(tasks)
    c = self.config
    tr_input = tf.convert_to_tensor(tasks.tr_input, self.dtype)  # [B, K, 1]
    tr_output = tf.convert_to_tensor(tasks.tr_output, self.dtype)  # [B, K, 1]
    val_input = tf.convert_to_tensor(tasks.val_input, self.dtype)  # [B, M, 1]
    batch_size = tf.shape(tr_input)[0]
    num_tr = tf.cast(tf.shape(tr_input)[1], self.dtype)
    theta = tf.tile(self.init_params[None, None], [batch_size, 1, 1])  # [P] -> [B, 1, P]

    def loss_fn(params, i):
      del i
      # [B, 1, P] on support [B, 1, K, 1] -> [B, 1, K]; / K: the gradient of the MSE.
      return mlp.squared_errors(params, tr_input[:, None], tr_output[:, None],
                                       c.hidden_units) / num_tr

    theta = inner_loops.finetuning_inner_loop(
        theta, tf.constant(c.inner_lr, self.dtype), loss_fn, num_steps=c.num_inner_steps,
        first_order=self.first_order)
    tr_loss = tf.reduce_mean(loss_fn(theta, 0), axis=[1, 2]) * num_tr  # [B]
    val_predictions = mlp.mlp_predict(theta, val_input[:, None], c.hidden_units)
    zero = tf.zeros([batch_size], self.dtype)
    if getattr(tasks, "val_output", None) is not None:
      val_output = tf.convert_to_tensor(tasks.val_output, self.dtype)  # [B, M, 1]
      val_loss = tf.reduce_mean(tf.math.squared_difference(val_predictions, val_output[:, None]),
                                axis=[1, 2, 3])  # [B, 1, M, 1] -> [B]
    else:
      val_loss = zero
    no_latents = tf.zeros([batch_size, 1, 0], self.dtype)  # [B, 1, 0]
    return leo.RegressionOutputs(
        val_loss=val_loss, tr_loss=tr_loss, kl=zero, encoder_penalty=zero, latents=no_latents,
        adapted_latents=no_latents, params=theta, val_predictions=val_predictions)

  def meta_loss(self, outputs: leo.RegressionOutputs) -> objective.MetaLoss:
    """The mean query MSE (+ optional weight decay on theta_0), as an objective.MetaLoss."""
    zero = tf.zeros([], self.dtype)
    return objective.meta_loss(
        outputs.val_loss, outputs.kl, outputs.encoder_penalty,
        objective.l2_penalty(self.regularized_kernels), zero, kl_weight=0.0,
        encoder_penalty_weight=0.0, l2_penalty_weight=self.config.l2_penalty_weight,
        orthogonality_penalty_weight=0.0)
