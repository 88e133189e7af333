"""LEO: the whole inner model, from support set to query loss (algorithm 1).

    z ~ q(z | D^tr)              encoder g_e + relation network g_r   (encoder.py)
    w ~ p(w | z)                 decoder g_d                          (decoder.py)
    z' = z - alpha grad_z L_tr   latent adaptation                    (inner_loops.py)
    w' = w - eta grad_w L_tr     fine-tuning                          (inner_loops.py)
    L_val(w'), KL, encoder penalty                                     (objective.py)

Every call is vectorised over a batch of B tasks of the same N and K; there is no
Python loop and no map over tasks. `training` is an explicit argument of every
call: meta-training samples codes and weights (TFP, stateless seeds; see Noise) and applies
dropout; evaluation uses the means, no dropout, no KL and no encoder penalty.

Where the original code (deepmind/leo, model.py) settles what the paper leaves
open, this follows it:
  - the class's Gaussian over codes is repeated for its K support examples, and
    a code is sampled per copy, decoded to a Gaussian over a weight vector per
    copy and a weight vector sampled per copy, at every latent step; the class's
    logit uses the mean of the K weight vectors (weight_sampling "per_copy", the
    default). "class_mean" samples that mean's own Gaussian instead
    (Decoder.class_weights_distribution: one draw per class; the same distribution
    of the first decoding, a different noise in the latent steps). Either way
    fine-tuning moves the mean with rate eta / K, which is exactly what K copies
    moved by eta each do to their mean (each copy's gradient is 1/K of the mean's);
  - dropout is applied to the features both in the encoder and in the
    classifier, in meta-training only;
  - the inner gradients are those of the summed (not averaged) support loss;
  - the first fine-tuning gradient is taken on the loss that ended latent
    adaptation (here recomputed with the same dropout mask: the same value);
  - the KL is a one-sample estimate averaged over entries (an analytic KL is
    selectable), the encoder penalty a mean squared difference.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from leo_tf.core import classifier
from leo_tf.core import decoder as decoder_lib
from leo_tf.core import distributions
from leo_tf.core import encoder as encoder_lib
from leo_tf.core import inner_loops
from leo_tf.core import objective
from leo_tf.core import seeds
from leo_tf.core.config import ModelConfig
from leo_tf.data.episodes import ProblemInstance  # [B, N, K, D], [B, N, K], [B, N, V, D], [B, N, V]
from leo_tf.outer import learner


class LEOOutputs(NamedTuple):
  """What one forward pass over B tasks produces."""

  val_loss: tf.Tensor  # [B] mean query cross-entropy after adaptation
  val_accuracy: tf.Tensor  # [B] query accuracy after adaptation
  tr_loss: tf.Tensor  # [B] mean support cross-entropy after latent adaptation
  kl: tf.Tensor  # [B] KL(q(z | D^tr) || N(0, I)), 0 in evaluation
  encoder_penalty: tf.Tensor  # [B] mean (z - stopgrad(z'))^2, 0 in evaluation
  latents: tf.Tensor  # [B, N, K, n_z] codes before adaptation
  adapted_latents: tf.Tensor  # [B, N, K, n_z] codes after latent adaptation
  classifier_weights: tf.Tensor  # [B, N, D] class weights after fine-tuning (mean over K)
  val_logits: tf.Tensor  # [B, N, V, N]


class Noise(NamedTuple):
  """Every random draw of one meta-training pass over B tasks.

  Drawn by LEO.draw_noise from one stateless seed with TF's and TFP's kernels,
  outside the XLA-compiled step (see outer.step.make_train_step), then consumed by
  LEO.__call__. The same seed gives the same numbers with XLA on or off.
  """

  encoder_keep: tf.Tensor  # [B, N, K, D] dropout multiplier on the encoder's input
  latent_eps: tf.Tensor  # [B, N, K, n_z] eps of the sampled codes
  weight_eps: tf.Tensor  # [T + 1, B, N, K, D] eps of the weights decoded after step t, one
                        # per support copy ([T + 1, B, N, 1, D]: one per class, "class_mean")
  support_keep: tf.Tensor  # [T + F + 1, B, N, K, D] dropout multipliers of the support
                           # loss evaluations (LEO steps 0..T, then fine-tuning)
  query_keep: tf.Tensor  # [B, N, V, D] dropout multiplier of the queries


def validate_problem(problem: ProblemInstance, embedding_dim: int) -> None:
  """Raises ValueError with a message naming the problem for malformed inputs.

  Shapes are checked always (statically); label values are checked when they
  are concrete (eager tensors or numpy arrays).
  """
  for name in ("tr_input", "val_input"):
    shape = tf.TensorShape(getattr(problem, name).shape)
    if shape.rank != 4:
      raise ValueError(f"{name} must be [B, N, K, D] (rank 4), got shape {shape}.")
    if shape[-1] is not None and shape[-1] != embedding_dim:
      raise ValueError(f"{name} has embedding size {shape[-1]} but the model was built for "
                       f"{embedding_dim}; use embeddings of size {embedding_dim} or set "
                       f"ModelConfig.embedding_dim.")
  tr_shape = tf.TensorShape(problem.tr_input.shape)
  val_shape = tf.TensorShape(problem.val_input.shape)
  if tr_shape[2] == 0:
    raise ValueError("tr_input has K = 0 support examples per class; K must be >= 1.")
  if val_shape[2] == 0:
    raise ValueError("val_input has 0 query examples per class; it must have >= 1.")
  if tr_shape[1] is not None and tr_shape[1] < 2:
    raise ValueError(f"A task needs N >= 2 classes, got N = {tr_shape[1]}.")
  if (tr_shape[1] is not None and val_shape[1] is not None and tr_shape[1] != val_shape[1]):
    raise ValueError(f"tr_input has N = {tr_shape[1]} classes but val_input has {val_shape[1]}.")
  for name, input_name in (("tr_output", "tr_input"), ("val_output", "val_input")):
    labels = getattr(problem, name)
    if tf.TensorShape(labels.shape)[:3] != tf.TensorShape(getattr(problem, input_name).shape)[:3]:
      raise ValueError(f"{name} must be [B, N, K] matching {input_name}; got {labels.shape} "
                       f"and {getattr(problem, input_name).shape}.")
    if isinstance(labels, np.ndarray) or (tf.is_tensor(labels) and hasattr(labels, "numpy")):
      values = np.asarray(labels)
      num_classes = tr_shape[1]
      if values.size and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(f"{name} has labels in [{values.min()}, {values.max()}] but a "
                         f"{num_classes}-way task needs labels in [0, {num_classes - 1}].")


class LEO(tf.Module):
  """The LEO model: Keras layers g_e, g_r, g_d and the two learned inner rates.

  A MetaLearner (outer.learner): the outer loop trains it through that contract.
  """

  score = learner.ACCURACY

  def __init__(self, config: ModelConfig, *, seed: int = 0, first_order: bool = False,
               name: str = "leo"):
    """Builds every variable at once (their shapes depend on D and n_z only).

    Args:
      config: the model configuration.
      seed: seeds the Glorot initialisation of the kernels.
      first_order: stop gradients through the inner gradients (for comparison
        only; LEO is second order).
      name: module name.
    """
    super().__init__(name=name)
    self.config = config
    self.first_order = first_order
    dtype = config.dtype
    d, n_z = config.embedding_dim, config.num_latents
    self.encoder = encoder_lib.Encoder(n_z, config.dropout_rate, seed=seed, dtype=dtype,
                                       name="encoder")
    self.relation_network = encoder_lib.RelationNetwork(n_z, seed=seed + 1, dtype=dtype,
                                                        name="relation_network")
    self.decoder = decoder_lib.Decoder(d, seed=seed + 10, max_stddev=config.max_weights_stddev,
                                       dtype=dtype, name="decoder")
    self.encoder.build((None, None, None, d))
    self.relation_network.build((None, None, None, n_z))
    self.decoder.build((None, None, None, n_z))
    # alpha: one rate per latent dimension; eta: one per embedding dimension.
    self.inner_lr = tf.Variable(tf.fill([n_z], tf.constant(config.inner_lr_init, dtype)),
                                name="inner_lr")
    self.finetuning_lr = tf.Variable(tf.fill([d], tf.constant(config.finetuning_lr_init, dtype)),
                                     name="finetuning_lr")

  @property
  def dtype(self) -> tf.DType:
    return tf.as_dtype(self.config.dtype)

  @property
  def regularized_kernels(self) -> list:
    """The kernels that the L2 term (and the NaN fallback) act on."""
    return [self.encoder.kernel, *self.relation_network.kernels, self.decoder.kernel]

  @property
  def meta_variables(self) -> list:
    """Everything the outer loop trains, in a fixed order."""
    return [*self.regularized_kernels, self.inner_lr, self.finetuning_lr]

  @property
  def learned_rates(self) -> dict[str, tf.Variable]:
    """alpha and eta, logged by the outer loop."""
    return {"inner_lr": self.inner_lr, "finetuning_lr": self.finetuning_lr}

  def step_scalars(self, outputs: LEOOutputs) -> dict[str, tf.Tensor]:
    """The meta-batch's mean query accuracy, logged beside the objective's terms."""
    return {"accuracy": tf.reduce_mean(outputs.val_accuracy)}

  def draw_noise(self, problem: ProblemInstance, seed: tf.Tensor) -> Noise:
    """All random draws of a meta-training pass on `problem`, from an int32 [2] seed."""
    c = self.config
    dtype = self.dtype
    tr_shape = tf.shape(problem.tr_input)  # [B, N, K, D]
    val_shape = tf.shape(problem.val_input)  # [B, N, V, D]
    t, f = c.inner_unroll_length, c.finetuning_unroll_length
    s = seeds.split_seed(seed, 5)
    code_shape = tf.concat([tr_shape[:3], [c.num_latents]], 0)  # [B, N, K, n_z]
    copies = tr_shape[2:3] if c.weight_sampling == "per_copy" else [1]  # K or 1
    return Noise(
        encoder_keep=seeds.dropout_keep_mask(tr_shape, c.dropout_rate, s[0], dtype),
        latent_eps=distributions.standard_normal(code_shape, s[1], dtype),
        weight_eps=distributions.standard_normal(
            tf.concat([[t + 1], tr_shape[:2], copies, tr_shape[3:]], 0), s[2], dtype),
        support_keep=seeds.dropout_keep_mask(tf.concat([[t + f + 1], tr_shape], 0),
                                             c.dropout_rate, s[3], dtype),
        query_keep=seeds.dropout_keep_mask(val_shape, c.dropout_rate, s[4], dtype))

  def encode(self, tr_input: tf.Tensor, *, training: bool, noise: Noise | None = None,
             ) -> tuple[tf.Tensor, tf.Tensor]:
    """q(z | D^tr): support features [B, N, K, D] -> (codes [B, N, K, n_z], KL [B]).

    In meta-training the codes are sampled and the KL estimated; in evaluation
    they are the means and the KL is 0.
    """
    c = self.config
    batch_shape = tf.shape(tr_input)[:3]
    zero_kl = tf.zeros(batch_shape[:1], self.dtype)
    if c.random_prior:
      # Ablation: the codes come from the prior N(0, I), not from the data.
      if not training or c.deterministic:
        return tf.zeros(tf.concat([batch_shape, [c.num_latents]], 0), self.dtype), zero_kl
      return noise.latent_eps, zero_kl
    codes = self.encoder(tr_input, training=training,
                         keep_mask=noise.encoder_keep if training else None)  # [B, N, K, n_z]
    relations = self.relation_network(codes)  # [B, N, K, 2 n_z]
    params = encoder_lib.average_codes_per_class(relations)  # [B, N, K, 2 n_z]
    q = distributions.gaussian_from_params(params)  # [B, N, K, n_z]
    if not training or c.deterministic:
      return q.loc, zero_kl
    latents = q.loc + q.scale * noise.latent_eps  # reparameterised sample
    kl = distributions.kl_to_standard_normal(q, latents, noise.latent_eps, c.kl_estimator,
                                             reduce_axes=[1, 2, 3])
    return latents, kl

  def adapt(self, tr_input: tf.Tensor, tr_output: tf.Tensor, *, training: bool,
            noise: Noise | None = None, adaptation: bool = True):
    """Encode, adapt in latent space, fine-tune: the support set's part of LEO.

    Args:
      tr_input: [B, N, K, D] support features; tr_output: [B, N, K] labels.
      training: meta-training (noise required) or evaluation.
      noise: the random draws of meta-training (LEO.draw_noise).
      adaptation: False skips both inner loops, whatever the configuration: the
        conditional generator alone (the served `generate` signature).

    Returns:
      (codes z [B, N, K, n_z], KL [B], adapted codes z' [B, N, K, n_z],
      fine-tuned class weights w' [B, N, 1, D] (the mean of the K copies),
      support loss after latent adaptation [B, N, K]).
    """
    c = self.config
    t, f = (c.inner_unroll_length, c.finetuning_unroll_length) if adaptation else (0, 0)
    latents, kl = self.encode(tr_input, training=training, noise=noise)
    num_copies = tf.cast(tf.shape(tr_input)[2], self.dtype)  # K

    def decode_fn(z, i):
      """Codes [B, N, K, n_z] -> the class weights [B, N, 1, D], the mean of the K copies."""
      sample = training and not c.deterministic
      eps = noise.weight_eps[i] if training else None
      if c.weight_sampling == "class_mean":
        weights = self.decoder.class_weights_distribution(z)  # [B, N, 1, D]
        return distributions.possibly_sample(weights, sample=sample, noise=eps)
      weights = self.decoder.weights_distribution(z)  # [B, N, K, D]
      copies = distributions.possibly_sample(weights, sample=sample, noise=eps)  # [B, N, K, D]
      return tf.reduce_mean(copies, axis=2, keepdims=True)  # [B, N, 1, D]

    def leo_loss_fn(w, i):
      keep = noise.support_keep[i] if training else None
      return classifier.inner_loss(tr_input, tr_output, w, keep)[0]

    def finetuning_loss_fn(w, i):
      # Step 0 reuses the dropout mask of the loss that ended latent adaptation.
      return leo_loss_fn(w, t + i)

    adapted_latents, weights, tr_loss = inner_loops.leo_inner_loop(
        latents, self.inner_lr, decode_fn, leo_loss_fn, num_steps=t, first_order=self.first_order)
    # d L / d w_{n,k} = (1/K) d L / d w_n: K copies stepped by eta move their mean
    # by eta / K times the mean's gradient.
    weights = inner_loops.finetuning_inner_loop(
        weights, self.finetuning_lr / num_copies, finetuning_loss_fn, num_steps=f,
        first_order=self.first_order)
    return latents, kl, adapted_latents, weights, tr_loss

  def adapted_class_weights(self, tr_input: tf.Tensor, tr_output: tf.Tensor) -> tf.Tensor:
    """Evaluation: the adapted linear classifier [B, N, D] (mean over the K copies).

    logits(x) = <x, w_n> for these weights are the model's evaluation logits
    (classifier.logits); the fast evaluation path
    (classification.evaluation.SplitEvaluator) relies on that.
    """
    _, _, _, weights, _ = self.adapt(tf.convert_to_tensor(tr_input, self.dtype),
                                     tf.convert_to_tensor(tr_output, tf.int32), training=False)
    return weights[:, :, 0]  # [B, N, 1, D] -> [B, N, D]

  def __call__(self, problem: ProblemInstance, *, training: bool,
               seed: tf.Tensor | None = None, noise: Noise | None = None) -> LEOOutputs:
    """Runs LEO on a batch of tasks.

    Args:
      problem: a ProblemInstance of B tasks (tensors or arrays).
      training: meta-training (sampling, dropout, KL, encoder penalty) or
        evaluation (means, no dropout).
      seed: int32 [2] stateless seed of the random draws (meta-training).
      noise: the random draws themselves (LEO.draw_noise); given instead of seed
        by the compiled meta-training step.

    Returns:
      LEOOutputs.
    """
    learner.check_training_flag(training)
    if training and seed is None and noise is None:
      raise ValueError("Meta-training draws samples and dropout masks: pass seed, an int32 [2] "
                       "tensor (e.g. seeds.step_seed(run_seed, step)), or noise.")
    validate_problem(problem, self.config.embedding_dim)
    tr_input = tf.convert_to_tensor(problem.tr_input, self.dtype)
    val_input = tf.convert_to_tensor(problem.val_input, self.dtype)
    tr_output = tf.convert_to_tensor(problem.tr_output, tf.int32)
    val_output = tf.convert_to_tensor(problem.val_output, tf.int32)
    if training and noise is None:
      noise = self.draw_noise(ProblemInstance(tr_input, tr_output, val_input, val_output), seed)
    latents, kl, adapted_latents, weights, tr_loss = self.adapt(
        tr_input, tr_output, training=training, noise=noise)
    val_loss, val_logits = classifier.inner_loss(val_input, val_output, weights,
                                                 noise.query_keep if training else None)
    if training:
      enc_penalty = objective.encoder_penalty(latents, adapted_latents)
    else:
      enc_penalty = tf.zeros_like(kl)
    return LEOOutputs(
        val_loss=tf.reduce_mean(val_loss, axis=[1, 2]),
        val_accuracy=classifier.accuracy(val_logits, val_output),
        tr_loss=tf.reduce_mean(tr_loss, axis=[1, 2]),
        kl=kl,
        encoder_penalty=enc_penalty,
        latents=latents,
        adapted_latents=adapted_latents,
        classifier_weights=weights[:, :, 0],  # [B, N, 1, D] -> [B, N, D]
        val_logits=val_logits)

  def meta_loss(self, outputs: LEOOutputs) -> objective.MetaLoss:
    """Equations 6-7 on the outputs of a meta-training call."""
    return objective.model_meta_loss(outputs, self.config, self.regularized_kernels,
                                     self.decoder.kernel)
