"""LEO for few-shot regression: the latent code generates every parameter of f_theta.

Section 4.1 and appendix A of the paper. The base learner f_theta is an MLP
1 -> 40 -> 40 -> 1 with ReLU and biases, 1761 parameters, all of them drawn
from the decoder's Gaussian. Per task, with the K support pairs (x, y):

    h_k = g_e([x_k; y_k])                      encoder, 3-layer MLP, [K, 32]
    (mu^e, sigma^e) = 1/K^2 sum_{k, j} g_r([h_k; h_j])
                                                relation network (encoder.py), [2 n_z]
    z ~ N(mu^e, diag(sigma^e)^2)                one code per task, [n_z]
    theta ~ N(mu^d(z), diag(sigma^d(z))^2)      decoder g_d, 3-layer MLP, [1761]
    z' = z - alpha grad_z L_tr(f_theta(z))      latent adaptation (inner_loops.py)
    theta' = theta - eta grad L_tr              optional fine-tuning (inner_loops.py)

The classification model's pieces are reused: the relation network and the
per-class average (one "class" of K examples), the Gaussians, KL and samplers
(distributions.py), both inner loops, the encoder penalty, L2 and orthogonality
terms and the meta-objective (objective.py, decoder.py). Only what differs is
here: the encoder and decoder are MLPs (the classification ones are linear),
the base learner is an MLP whose parameters arrive as one flat vector, and the
losses are squared errors.

Sampling happens in meta-training and in evaluation, as in the paper: S codes
are drawn per task, each adapted on its own, and the parameters are drawn anew
from p(theta | z) at every step of the inner loop and at the end. The
prediction of a task is then S sampled functions; their average is the "mean
prediction" that evaluation scores. `use_means=True` gives instead the single
deterministic path (code and parameters at their means).

Losses: the support loss of one point is (f(x) - y)^2 / K, so that the inner
gradient (of the sum over the support set, inner_loops.py) is the gradient of
the support MSE. The query loss is, with query_loss="samples", the MSE of each
sampled function averaged over the S samples and M queries (bias^2 + variance
of the samples); with query_loss="mean", the MSE of the samples' average, the
mean prediction that evaluation scores (bias^2 + variance / S), which leaves
the KL term freer to keep the samples apart.

Where this departs from a literal reading of appendix A, and why (each was
needed for meta-training to run at all; see the regression issue's notes):
  - the decoder's output has a learned offset (`decoder_bias`): theta_0 and
    u_0, the parameters and unnormalised stddevs that the code z = 0 decodes
    to, initialised as a fresh MLP (Glorot kernels, zero biases) with stddev
    `params_stddev_offset`. Without it, the bias-free decoder makes the
    parameters proportional to |z| and f_theta a cubic polynomial of z: the
    latent gradient is ~0 at the small initial codes and the inner loop
    diverges at larger ones (NaN within 50 steps). The hidden layers of g_e,
    g_r and g_d keep no biases.
  - the encoder reads (x, y) / input_scale, and both Gaussians' stddevs are
    softly bounded (distributions.soft_bound): sigma^e below the prior's 1 and sigma^d
    below max_params_stddev, so that exp(u) cannot overflow.
  - the decoder reads the codes through a soft clip c tanh(z / c), so that an
    inner step that overshoots cannot feed ever larger codes to the next one.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import keras
import numpy as np
import tensorflow as tf

from leo_tf.core import distributions
from leo_tf.core import encoder as encoder_lib
from leo_tf.core import inner_loops
from leo_tf.core import objective
from leo_tf.core import seeds
from leo_tf.core.config import (check_at_least, check_choice, check_fraction,
                                check_inner_model, check_positive)
from leo_tf.outer import learner
from leo_tf.regression import mlp
from leo_tf.regression.tasks import RegressionTasks


QUERY_LOSSES = ("samples", "mean")


@dataclasses.dataclass(frozen=True)
class RegressionConfig:
  """The regression LEO: f_theta, the generator, inner loops and objective weights."""

  hidden_units: tuple[int, ...] = (40, 40)  # f_theta's hidden layers (1 -> 40 -> 40 -> 1)
  num_latents: int = 16  # n_z, one code per task
  network_units: int = 32  # width of every layer of g_e, g_r and g_d
  inner_unroll_length: int = 5  # latent adaptation steps (0: the conditional generator)
  finetuning_unroll_length: int = 0  # fine-tuning steps on theta (0: none)
  inner_lr_init: float = 1.0  # initial alpha, learned per latent dimension
  finetuning_lr_init: float = 0.001  # initial eta, learned per parameter of theta
  num_samples: int = 1  # S, codes (and functions) sampled per task in meta-training
  query_loss: str = "samples"  # "samples": mean MSE of the S functions; "mean": MSE of their mean
  params_stddev_offset: float = 0.1  # sigma^d = exp(u) - (1 - offset): u = 0 gives this stddev
  max_params_stddev: float = 1.0  # soft upper bound on sigma^d (distributions.soft_bound)
  max_latent_stddev: float = 1.0  # soft upper bound on sigma^e, the prior's scale
  input_scale: float = 5.0  # the encoder sees (x, y) / input_scale
  latent_clip: float = 5.0  # the decoder reads c tanh(z / c): codes softly within +-c
  kl_weight: float = 0.01  # beta
  encoder_penalty_weight: float = 1e-9  # gamma
  l2_penalty_weight: float = 1e-8  # lambda_1
  orthogonality_penalty_weight: float = 0.0  # lambda_2, on the decoder's last kernel
  kl_estimator: str = "sample"  # "sample" (the original's) or "analytic" (TFP)
  deterministic: bool = False  # ablation: means instead of samples, no KL
  dtype: str = "float32"  # "float64" for gradient checks

  def __post_init__(self):
    mlp.check_hidden_units(self.hidden_units)
    check_at_least(self, 1, "num_latents", "network_units", "num_samples")
    check_positive(self, "max_params_stddev", "max_latent_stddev", "input_scale", "latent_clip")
    check_fraction(self, "params_stddev_offset")
    check_choice(self, "query_loss", QUERY_LOSSES)
    check_inner_model(self)


# ----------------------------------------------------------------------------
# The generator's layers.


class BiasFreeMLP(keras.layers.Layer):
  """Linear layers without biases, ReLU between them (none after the last).

  [..., d] -> [..., units[-1]].
  """

  def __init__(self, units: Sequence[int], *, seed: int | None = None, **kwargs):
    super().__init__(**kwargs)
    self.units = tuple(int(u) for u in units)
    self._seed = seed

  def build(self, input_shape):
    fan_in = int(input_shape[-1])
    for i, width in enumerate(self.units):
      seed = None if self._seed is None else self._seed + i
      # One attribute per kernel: a Python list of variables is not checkpointed.
      setattr(self, f"w{i}", self.add_weight(
          name=f"w{i}", shape=(fan_in, width),
          initializer=keras.initializers.GlorotUniform(seed=seed)))
      fan_in = width

  @property
  def kernels(self) -> list:
    """The kernels [d, u0], [u0, u1], ..., in order."""
    return [getattr(self, f"w{i}") for i in range(len(self.units))]

  def call(self, inputs):
    """inputs [..., d] -> [..., units[-1]]."""
    hidden = inputs
    for i, kernel in enumerate(self.kernels):
      hidden = tf.einsum("...i,io->...o", hidden, kernel)  # [..., in] -> [..., out]
      if i < len(self.units) - 1:
        hidden = tf.nn.relu(hidden)
    return hidden


class RegressionOutputs(NamedTuple):
  """What one forward pass over B tasks produces (S: samples per task)."""

  val_loss: tf.Tensor  # [B] query MSE against the noisy targets, mean over S and M
  tr_loss: tf.Tensor  # [B] support MSE after adaptation, mean over S and K
  kl: tf.Tensor  # [B] KL(q(z | D^tr) || N(0, I)), 0 in evaluation
  encoder_penalty: tf.Tensor  # [B] mean (z - stopgrad(z'))^2, 0 in evaluation
  latents: tf.Tensor  # [B, S, n_z] codes before adaptation
  adapted_latents: tf.Tensor  # [B, S, n_z] codes after adaptation
  params: tf.Tensor  # [B, S, P] the parameters theta' that predict the queries
  val_predictions: tf.Tensor  # [B, S, M, 1] f_theta'(query x)


class RegressionNoise(NamedTuple):
  """Every random draw of one sampled pass over B tasks with S samples each.

  Drawn by LEORegression.draw_noise from one stateless seed with TFP's kernels,
  outside the XLA-compiled steps (as the classification model's Noise), so the
  same seed gives the same numbers with XLA on or off.
  """

  latent_eps: tf.Tensor  # [B, S, n_z] eps of the sampled codes
  params_eps: tf.Tensor  # [T + 1, B, S, P] eps of the parameters decoded after step t


def validate_tasks(tasks: RegressionTasks) -> None:
  """Raises ValueError naming the field for malformed task batches (static shapes)."""
  for name in ("tr_input", "tr_output", "val_input"):
    shape = tf.TensorShape(getattr(tasks, name).shape)
    if shape.rank != 3 or shape[-1] not in (None, 1):
      raise ValueError(f"tasks.{name} must be [B, points, 1] (1-D regression), got shape "
                       f"{shape}.")
  tr_shape = tf.TensorShape(tasks.tr_input.shape)
  if tr_shape[1] == 0:
    raise ValueError("tasks.tr_input has K = 0 support points; a task needs K >= 1.")
  if tf.TensorShape(tasks.tr_output.shape) != tr_shape:
    raise ValueError(f"tasks.tr_output must match tasks.tr_input's shape {tr_shape}, got "
                     f"{tasks.tr_output.shape}.")
  val_output = getattr(tasks, "val_output", None)
  if val_output is not None and (tf.TensorShape(val_output.shape)
                                 != tf.TensorShape(tasks.val_input.shape)):
    raise ValueError(f"tasks.val_output must match tasks.val_input's shape "
                     f"{tasks.val_input.shape}, got {val_output.shape}.")


class LEORegression(tf.Module):
  """The generator g_e, g_r, g_d of f_theta's parameters and the learned inner rates.

  A MetaLearner (outer.learner), scored by the MSE of its mean prediction.
  `training` says whether the KL and encoder penalty are computed (meta-training);
  codes and parameters are sampled in evaluation too unless use_means.
  """

  score = learner.MSE

  def __init__(self, config: RegressionConfig, *, seed: int = 0, first_order: bool = False,
               name: str = "leo_regression"):
    """Builds every variable at once.

    Args:
      config: the model configuration.
      seed: seeds the Glorot initialisation of the kernels.
      first_order: stop gradients through the inner gradients (comparison only).
      name: module name.
    """
    super().__init__(name=name)
    self.config = config
    self.first_order = first_order
    c = config
    self.num_params = mlp.num_params(c.hidden_units)
    units, n_z = c.network_units, c.num_latents
    self.encoder = BiasFreeMLP((units, units, units), seed=seed, dtype=c.dtype, name="encoder")
    # g_r's layers are 2 n_z wide, which is `units` in the paper's setting (n_z = 16).
    self.relation_network = encoder_lib.RelationNetwork(n_z, seed=seed + 10, dtype=c.dtype,
                                                        name="relation_network")
    self.decoder = BiasFreeMLP((units, units, 2 * self.num_params), seed=seed + 20,
                               dtype=c.dtype, name="decoder")
    self.encoder.build((None, 2))
    self.relation_network.build((None, None, None, units))
    self.decoder.build((None, n_z))
    # theta_0 and u_0: the decoder's output for z = 0, a freshly initialised MLP
    # (Glorot kernels, zero biases) with stddev offset (u = 0); see the module docstring.
    theta_0 = mlp.glorot_params(c.hidden_units, np.random.default_rng(seed + 30))
    self.decoder_bias = tf.Variable(
        np.concatenate([theta_0, np.zeros(self.num_params)]).astype(c.dtype), name="decoder_bias")
    self.inner_lr = tf.Variable(tf.fill([n_z], tf.constant(c.inner_lr_init, c.dtype)),
                                name="inner_lr")
    self.finetuning_lr = tf.Variable(
        tf.fill([self.num_params], tf.constant(c.finetuning_lr_init, c.dtype)),
        name="finetuning_lr")

  @property
  def dtype(self) -> tf.DType:
    return tf.as_dtype(self.config.dtype)

  @property
  def regularized_kernels(self) -> list:
    """The kernels that the L2 term (and the NaN fallback) act on."""
    return [*self.encoder.kernels, *self.relation_network.kernels, *self.decoder.kernels]

  @property
  def meta_variables(self) -> list:
    """Everything the outer loop trains, in a fixed order."""
    return [*self.regularized_kernels, self.decoder_bias, self.inner_lr, self.finetuning_lr]

  @property
  def learned_rates(self) -> dict[str, tf.Variable]:
    """alpha, logged by the outer loop (eta trains only with fine-tuning steps)."""
    return {"inner_lr": self.inner_lr}

  def step_scalars(self, outputs: "RegressionOutputs") -> dict[str, tf.Tensor]:
    """The meta-batch's mean support MSE after adaptation."""
    return {"tr_loss": tf.reduce_mean(outputs.tr_loss)}

  def draw_noise(self, tasks: RegressionTasks, seed: tf.Tensor, num_samples: int | None = None
                 ) -> RegressionNoise:
    """All random draws of a sampled pass on `tasks` (S = num_samples), from an int32 [2] seed."""
    c = self.config
    num_samples = num_samples or c.num_samples
    batch_size = tf.shape(tasks.tr_input)[0]
    latent_seed, params_seed = seeds.split_seed(seed, 2)
    return RegressionNoise(
        latent_eps=distributions.standard_normal(
            tf.stack([batch_size, num_samples, c.num_latents]), latent_seed, self.dtype),
        params_eps=distributions.standard_normal(
            tf.stack([c.inner_unroll_length + 1, batch_size, num_samples, self.num_params]),
            params_seed, self.dtype))

  def latent_distribution(self, tr_input: tf.Tensor, tr_output: tf.Tensor
                          ) -> distributions.tfd.Normal:
    """q(z | D^tr): support x, y [B, K, 1] -> a diagonal Gaussian [B, n_z]."""
    pairs = tf.concat([tr_input, tr_output], axis=-1) / self.config.input_scale  # [B, K, 2]
    codes = self.encoder(pairs)  # [B, K, 32]
    # One "class" of K examples: [B, K, 32] -> [B, 1, K, 32], as g_r expects [B, N, K, .].
    relations = self.relation_network(codes[:, None])  # [B, 1, K, 2 n_z]
    params = encoder_lib.average_codes_per_class(relations)[:, 0, 0]  # [B, 1, K, 2n_z] -> [B, 2n_z]
    return distributions.gaussian_from_params(  # [B, n_z]
        params, stddev_offset=0.0, max_stddev=self.config.max_latent_stddev)

  def params_distribution(self, latents: tf.Tensor) -> distributions.tfd.Normal:
    """p(theta | z): codes [..., n_z] -> a diagonal Gaussian [..., P].

    The decoder reads the codes through a soft clip, c tanh(z / c) (about the
    identity within a few prior standard deviations): f_theta is a cubic
    polynomial of the decoded parameters, so an inner step that overshoots
    would otherwise feed a larger code to the next step, whose gradient is
    larger still, and reach Inf within the 5 steps.
    """
    c = self.config
    clipped = c.latent_clip * tf.tanh(latents / c.latent_clip)  # [..., n_z]
    params = self.decoder(clipped) + self.decoder_bias  # [..., n_z] -> [..., 2P]
    return distributions.gaussian_from_params(
        params, stddev_offset=c.params_stddev_offset, max_stddev=c.max_params_stddev)

  def __call__(self, tasks: RegressionTasks, *, training: bool, seed: tf.Tensor | None = None,
               num_samples: int | None = None, use_means: bool = False,
               noise: RegressionNoise | None = None) -> RegressionOutputs:
    """Runs LEO on a batch of tasks.

    Args:
      tasks: B tasks (tr_input, tr_output [B, K, 1]; val_input [B, M, 1] and,
        for the loss, val_output [B, M, 1]).
      training: meta-training (KL and encoder penalty computed) or evaluation.
        Both sample codes and parameters.
      seed: int32 [2] stateless seed; required unless nothing is sampled
        (use_means or the deterministic ablation) or `noise` is given.
      num_samples: S, samples per task (default: config.num_samples; with
        `noise`, its S).
      use_means: take the means of q(z | D^tr) and p(theta | z) instead of
        samples (then S = 1).
      noise: the draws (draw_noise), instead of drawing them here from seed.

    Returns:
      RegressionOutputs.
    """
    learner.check_training_flag(training)
    validate_tasks(tasks)
    c = self.config
    sample = not (use_means or c.deterministic)
    if sample and seed is None and noise is None:
      raise ValueError("LEORegression samples codes and parameters (in training and "
                       "evaluation): pass seed, an int32 [2] tensor, or use_means=True.")
    num_samples = 1 if not sample else (num_samples or c.num_samples)
    if num_samples < 1:
      raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    if sample and noise is None:
      noise = self.draw_noise(tasks, seed, num_samples)
    tr_input = tf.convert_to_tensor(tasks.tr_input, self.dtype)  # [B, K, 1]
    tr_output = tf.convert_to_tensor(tasks.tr_output, self.dtype)  # [B, K, 1]
    val_input = tf.convert_to_tensor(tasks.val_input, self.dtype)  # [B, M, 1]
    t, f = c.inner_unroll_length, c.finetuning_unroll_length
    hidden_units = c.hidden_units
    batch_size = tf.shape(tr_input)[0]
    num_tr = tf.cast(tf.shape(tr_input)[1], self.dtype)

    q = self.latent_distribution(tr_input, tr_output)  # [B, n_z]
    zero = tf.zeros([batch_size], self.dtype)
    if sample:
      shape = tf.shape(noise.latent_eps)  # [B, S, n_z]
      q_tiled = distributions.tfd.Normal(  # [B, n_z] -> [B, S, n_z]
          tf.broadcast_to(q.loc[:, None], shape), tf.broadcast_to(q.scale[:, None], shape))
      latents = distributions.possibly_sample(q_tiled, sample=True,
                                              noise=noise.latent_eps)  # mu + sigma eps
      kl = (distributions.kl_to_standard_normal(q_tiled, latents, noise.latent_eps,
                                                c.kl_estimator, reduce_axes=[1, 2])
            if training else zero)
    else:
      latents = q.loc[:, None]  # [B, n_z] -> [B, 1, n_z]
      kl = zero

    def decode_fn(z, i):
      theta = self.params_distribution(z)  # [B, S, P]
      return distributions.possibly_sample(theta, sample=sample,
                                           noise=noise.params_eps[i] if sample else None)

    def loss_fn(theta, i):
      del i  # the support loss has no randomness of its own
      # [B, S, P] with support [B, 1, K, 1] -> [B, S, K]; / K: the gradient of the MSE.
      return mlp.squared_errors(theta, tr_input[:, None], tr_output[:, None], hidden_units) / num_tr

    adapted_latents, theta, tr_loss = inner_loops.leo_inner_loop(
        latents, self.inner_lr, decode_fn, loss_fn, num_steps=t, first_order=self.first_order)
    if f:
      theta = inner_loops.finetuning_inner_loop(theta, self.finetuning_lr, loss_fn, num_steps=f,
                                                first_order=self.first_order)
      tr_loss = loss_fn(theta, 0)
    val_predictions = mlp.mlp_predict(theta, val_input[:, None], hidden_units)  # [B, S, M, 1]
    if getattr(tasks, "val_output", None) is not None:
      val_output = tf.convert_to_tensor(tasks.val_output, self.dtype)  # [B, M, 1]
      if c.query_loss == "mean":
        # The MSE of the average function, what evaluation scores: [B, S, M, 1] -> [B].
        mean_prediction = tf.reduce_mean(val_predictions, axis=1)  # [B, M, 1]
        val_loss = tf.reduce_mean(tf.math.squared_difference(mean_prediction, val_output),
                                  axis=[1, 2])
      else:
        val_loss = tf.reduce_mean(  # [B, S, M, 1] -> [B]
            tf.math.squared_difference(val_predictions, val_output[:, None]), axis=[1, 2, 3])
    else:
      val_loss = zero
    if training and sample:
      # [B, S, n_z] -> [B, S, 1, n_z], the [B, N, K, n_z] layout the penalty reduces over.
      enc_penalty = objective.encoder_penalty(latents[:, :, None], adapted_latents[:, :, None])
    else:
      enc_penalty = zero
    return RegressionOutputs(
        val_loss=val_loss,
        # [B, S, K], each point's (f - y)^2 / K -> the support MSE [B].
        tr_loss=tf.reduce_mean(tr_loss, axis=[1, 2]) * num_tr,
        kl=kl, encoder_penalty=enc_penalty, latents=latents,
        adapted_latents=adapted_latents, params=theta, val_predictions=val_predictions)

  def meta_loss(self, outputs: RegressionOutputs) -> objective.MetaLoss:
    """Equations 6-7 on the outputs of a meta-training call."""
    return objective.model_meta_loss(outputs, self.config, self.regularized_kernels,
                                     self.decoder.kernels[-1])
