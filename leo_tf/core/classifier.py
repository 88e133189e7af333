"""The base learner f_theta: a linear softmax classifier on the features.

As in the original code, each class n has K weight vectors w_{n,1..K} (one per
support example, since a code and then a weight vector is sampled per copy); the
logit of class n for an input x is the mean over k of <x, w_{n,k}>, and dropout
is applied to the inputs in meta-training.
"""

from __future__ import annotations

import tensorflow as tf



def logits(inputs: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
  """inputs [B, N, M, D], weights [B, N, K, D] -> logits [B, N, M, N].

  logits[b, n, m, c] = mean_k <inputs[b, n, m], weights[b, c, k]>. By linearity
  this is the product with the mean weight vector of each class, computed once
  (the original computed the [N, M, N, K] products and then averaged).
  """
  class_weights = tf.reduce_mean(weights, axis=2)  # [B, N, K, D] -> [B, N, D]
  return tf.einsum("bnmd,bcd->bnmc", inputs, class_weights)  # [B, N, M, N]


def cross_entropy(logits_: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
  """Per-example softmax cross-entropy, [B, N, M, C] and int [B, N, M] -> [B, N, M].

  Written with a dense one-hot and log_softmax so that it has second derivatives
  everywhere (the original used softmax_cross_entropy_with_logits_v2 for that).
  """
  one_hot = tf.one_hot(labels, depth=tf.shape(logits_)[-1], dtype=logits_.dtype)
  return -tf.reduce_sum(one_hot * tf.nn.log_softmax(logits_, axis=-1), axis=-1)


def accuracy(logits_: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
  """Fraction of correct argmax predictions per task: [B, N, M, C] -> [B]."""
  predictions = tf.argmax(logits_, axis=-1, output_type=labels.dtype)  # [B, N, M]
  correct = tf.cast(tf.equal(predictions, labels), logits_.dtype)
  return tf.reduce_mean(correct, axis=[1, 2])


def inner_loss(inputs: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor,
               keep_mask: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
  """Per-example loss [B, N, M] and logits [B, N, M, N] of `weights` on a set.

  keep_mask [B, N, M, D], when given, is the dropout multiplier applied to the
  inputs (meta-training only, as the original).
  """
  if keep_mask is not None:
    inputs = inputs * keep_mask
  outputs = logits(inputs, weights)
  return cross_entropy(outputs, labels), outputs
