"""The two inner loops (section 2.3.3): latent adaptation, then fine-tuning.

Both are pure functions of explicit tensors: they take the starting point, the
learned learning rates and functions that map a point to the support loss, and
return new tensors. No variable is created or mutated. The gradients are taken
with nested GradientTapes, so an outer tape sees through every step: the
meta-gradient is second order unless `first_order=True` (the shortcut that the
PyTorch ports take), which stops the gradient through the inner gradients.

Losses are per-example tensors; the inner gradient is that of their sum over
the task's support set (as the original's tf.gradients of an unreduced loss).
Summing over the B tasks of a batch as well changes nothing: task b's latents
only affect task b's loss.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

# decode_fn(latents [B, N, K, n_z], i) -> classifier weights [B, N, K, D], for the
# i-th decoding (i indexes the random draws).
DecodeFn = Callable[[tf.Tensor, int], tf.Tensor]
# loss_fn(weights [B, N, K, D], i) -> per-example support loss [B, N, K], for the
# i-th evaluation of the support loss.
LossFn = Callable[[tf.Tensor, int], tf.Tensor]


def _gradient_step(point: tf.Tensor, learning_rate: tf.Tensor, objective: Callable[[tf.Tensor],
                   tf.Tensor], first_order: bool) -> tuple[tf.Tensor, tf.Tensor]:
  """One step point - lr * d(sum objective)/d(point); returns (new point, loss at point)."""
  with tf.GradientTape() as tape:
    tape.watch(point)
    loss = objective(point)
    total = tf.reduce_sum(loss)
  grad = tape.gradient(total, point)
  if first_order:
    grad = tf.stop_gradient(grad)
  return point - learning_rate * grad, loss


def leo_inner_loop(latents: tf.Tensor, inner_lr: tf.Tensor, decode_fn: DecodeFn, loss_fn: LossFn,
                   *, num_steps: int, first_order: bool = False
                   ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Adapts the latent codes: z' = z - alpha * grad_z L_tr(g_d(z)), `num_steps` times.

  The weights are decoded (sampled in meta-training) from the codes after every
  step, as the original does.

  Args:
    latents: z, [B, N, K, n_z].
    inner_lr: alpha, [n_z], one learned rate per latent dimension.
    decode_fn: (z, i) -> weights [B, N, K, D]; i = 0..num_steps.
    loss_fn: (weights, i) -> per-example support loss [B, N, K]; i = 0..num_steps.
    num_steps: number of updates (0: the conditional generator alone).
    first_order: stop gradients through the inner gradients.

  Returns:
    (adapted latents z' [B, N, K, n_z], weights decoded from z' [B, N, K, D],
    per-example support loss at those weights [B, N, K]).
  """
  for i in range(num_steps):
    latents, _ = _gradient_step(latents, inner_lr, lambda z, i=i: loss_fn(decode_fn(z, i), i),
                                first_order)
  weights = decode_fn(latents, num_steps)
  return latents, weights, loss_fn(weights, num_steps)


def finetuning_inner_loop(weights: tf.Tensor, finetuning_lr: tf.Tensor, loss_fn: LossFn, *,
                          num_steps: int, first_order: bool = False) -> tf.Tensor:
  """Fine-tunes the decoded weights: w' = w - eta * grad_w L_tr(w), `num_steps` times.

  Args:
    weights: w, [B, N, K, D].
    finetuning_lr: eta, [D], one learned rate per embedding dimension (the
      original's [1, 1, D] variable).
    loss_fn: (weights, i) -> per-example support loss [B, N, K]; i = 0..num_steps-1.
    num_steps: number of updates (0: no fine-tuning).
    first_order: stop gradients through the inner gradients.

  Returns:
    Adapted weights w' [B, N, K, D].
  """
  for i in range(num_steps):
    weights, _ = _gradient_step(weights, finetuning_lr, lambda w, i=i: loss_fn(w, i), first_order)
  return weights
