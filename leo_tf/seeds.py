"""Stateless randomness: seed splitting and dropout that work under XLA.

Every random draw in leo_tf takes an explicit int32 [2] seed, so a meta-training
step is a pure function of (variables, batch, seed): reproducible, resumable
from the step counter alone, and compilable with XLA.
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


def dropout(inputs: tf.Tensor, rate: float, *, training: bool, seed: tf.Tensor | None) -> tf.Tensor:
  """Inverted dropout with a stateless seed; the identity outside meta-training."""
  if not training or rate == 0.0:
    return inputs
  if seed is None:
    raise ValueError("dropout needs a stateless seed (int32 [2]) in meta-training.")
  return tf.nn.experimental.stateless_dropout(inputs, rate=rate, seed=seed)
