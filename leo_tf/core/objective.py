"""The meta-objective, equations 6 and 7 of the paper.

    min  sum_tasks [ L_val(f(w')) + beta * KL(q(z | D^tr) || N(0, I))
                     + gamma * ||stopgrad(z') - z||^2 ]
         + lambda_1 * ||phi||^2 + lambda_2 * ||C_d - I||^2

Normalisations follow the original code: the task terms are averaged over the
meta-batch; the query loss is averaged over the queries; the KL is averaged over
the latent entries; the encoder penalty is the mean squared difference (not the
sum); the L2 term is lambda_1 * sum ||w||^2 / 2 over the encoder, relation
network and decoder kernels (tf.nn.l2_loss, as contrib's l2_regularizer); the
orthogonality term is the mean squared difference from the identity.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import tensorflow as tf

from leo_tf.core import decoder as decoder_lib

# The original's NaN fallback: the gradient of 1e-4 * l2_loss, whatever lambda_1.
FALLBACK_L2_WEIGHT = 1e-4


class MetaLoss(NamedTuple):
  total: tf.Tensor  # scalar: what the outer optimiser minimises
  val_loss: tf.Tensor  # scalar: mean query cross-entropy
  kl: tf.Tensor  # scalar: mean KL (unweighted)
  encoder_penalty: tf.Tensor  # scalar: mean encoder penalty (unweighted)
  l2: tf.Tensor  # scalar: sum ||w||^2 / 2 (unweighted)
  orthogonality: tf.Tensor  # scalar: ||C_d - I||^2 mean (unweighted)


def encoder_penalty(latents: tf.Tensor, adapted_latents: tf.Tensor) -> tf.Tensor:
  """mean (z - stopgrad(z'))^2 per task: [B, N, K, n_z] x 2 -> [B].

  Pulls the encoder's output towards where adaptation ends, without pulling the
  adapted codes back (the stop-gradient).
  """
  diff = tf.math.squared_difference(latents, tf.stop_gradient(adapted_latents))
  return tf.reduce_mean(diff, axis=[1, 2, 3])


def l2_penalty(kernels: Sequence[tf.Tensor]) -> tf.Tensor:
  """sum over kernels of ||w||^2 / 2 (tf.nn.l2_loss)."""
  return tf.add_n([tf.nn.l2_loss(k) for k in kernels])


def meta_loss(val_loss: tf.Tensor, kl: tf.Tensor, enc_penalty: tf.Tensor, l2: tf.Tensor,
              orthogonality: tf.Tensor, *, kl_weight: float, encoder_penalty_weight: float,
              l2_penalty_weight: float, orthogonality_penalty_weight: float) -> MetaLoss:
  """Combines the per-task terms [B] and the regularisers (scalars) into eq. 6-7."""
  per_task = val_loss + kl_weight * kl + encoder_penalty_weight * enc_penalty  # [B]
  total = (tf.reduce_mean(per_task) + l2_penalty_weight * l2
           + orthogonality_penalty_weight * orthogonality)
  return MetaLoss(total=total, val_loss=tf.reduce_mean(val_loss), kl=tf.reduce_mean(kl),
                  encoder_penalty=tf.reduce_mean(enc_penalty), l2=l2, orthogonality=orthogonality)


def model_meta_loss(outputs, config, regularized_kernels: Sequence[tf.Tensor],
                    decoder_kernel: tf.Tensor) -> MetaLoss:
  """Equations 6-7 for a LEO-style model, its weights read from its configuration.

  Args:
    outputs: the model's outputs, with val_loss, kl, encoder_penalty [B].
    config: with kl_weight (beta), encoder_penalty_weight (gamma),
      l2_penalty_weight (lambda_1), orthogonality_penalty_weight (lambda_2).
    regularized_kernels: what the L2 term acts on.
    decoder_kernel: [n_z, 2D] (or the decoder's last kernel), for the
      orthogonality term.
  """
  return meta_loss(
      outputs.val_loss, outputs.kl, outputs.encoder_penalty, l2_penalty(regularized_kernels),
      decoder_lib.orthogonality_penalty(decoder_kernel), kl_weight=config.kl_weight,
      encoder_penalty_weight=config.encoder_penalty_weight,
      l2_penalty_weight=config.l2_penalty_weight,
      orthogonality_penalty_weight=config.orthogonality_penalty_weight)
