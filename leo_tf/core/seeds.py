"""Stateless randomness: seed splitting and dropout that work under XLA.

Every random draw in leo_tf takes an explicit int32 [2] seed, so a meta-training
step is a pure function of (variables, batch, seed): reproducible and resumable
from the step counter alone. The draws of a step are made outside the XLA
cluster (see model.Noise): XLA's CPU code for random numbers is slow when it
is fused into the products that consume it, and it draws other numbers from
the same seed than TF's kernels do.
"""

from __future__ import annotations

import tensorflow as tf


def split_seed(seed: tf.Tensor, num: int) -> list[tf.Tensor]:
  """Splits an int32 [2] seed into `num` independent int32 [2] seeds."""
  if num < 1:
    return []
  seeds = tf.random.experimental.stateless_split(seed, num=num)  # [num, 2]
  return tf.unstack(seeds, num=num, axis=0)


def step_seed(base_seed: int, step: tf.Tensor) -> tf.Tensor:
  """The int32 [2] seed of meta-training step `step` under run seed `base_seed`."""
  return tf.stack([tf.constant(base_seed, tf.int32), tf.cast(step, tf.int32)])


def dropout_keep_mask(shape, rate: float, seed: tf.Tensor, dtype=tf.float32) -> tf.Tensor:
  """Inverted-dropout multiplier: 1 / (1 - rate) where kept, 0 where dropped.

  inputs * mask is dropout at `rate` (tf.nn.dropout's semantics); rate 0 gives
  ones. Drawn with TF's stateless uniform kernel.
  """
  if rate == 0.0:
    return tf.ones(shape, dtype)
  uniform = tf.random.stateless_uniform(shape, seed=seed, dtype=dtype)
  return tf.cast(uniform >= rate, dtype) / (1.0 - rate)
