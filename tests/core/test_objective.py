"""Tests for leo_tf.core.objective: equations 6 and 7, by hand."""

import numpy as np
import pytest
import tensorflow as tf

from leo_tf.core import decoder as decoder_lib
from leo_tf.core import objective


def test_encoder_penalty_is_a_mean_and_stops_the_gradient_of_the_adapted_codes():
  z = tf.constant([[[[1.0, 2.0]]], [[[0.0, 0.0]]]])  # [B=2, N=1, K=1, n_z=2]
  z_adapted = tf.constant([[[[0.0, 4.0]]], [[[3.0, 0.0]]]])
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([z, z_adapted])
    penalty = objective.encoder_penalty(z, z_adapted)
  # task 0: ((1 - 0)^2 + (2 - 4)^2) / 2 = 2.5; task 1: (9 + 0) / 2 = 4.5
  np.testing.assert_allclose(penalty.numpy(), [2.5, 4.5])
  assert tape.gradient(penalty, z_adapted) is None
  np.testing.assert_allclose(tape.gradient(penalty, z).numpy().ravel(), [1.0, -2.0, -3.0, 0.0])


def test_meta_loss_combines_the_terms_with_their_weights():
  val_loss, kl, enc = tf.constant([1.0, 3.0]), tf.constant([0.5, 1.5]), tf.constant([2.0, 4.0])
  l2 = objective.l2_penalty([tf.constant([[1.0, 2.0]]), tf.constant([3.0])])  # (1 + 4 + 9) / 2
  assert float(l2) == 7.0
  loss = objective.meta_loss(val_loss, kl, enc, l2, tf.constant(0.25), kl_weight=0.1,
                             encoder_penalty_weight=0.01, l2_penalty_weight=1e-3,
                             orthogonality_penalty_weight=2.0)
  # mean(1 + 0.05 + 0.02, 3 + 0.15 + 0.04) + 7e-3 + 0.5 = 2.13 + 0.507
  assert float(loss.total) == pytest.approx(2.637, rel=1e-6)
  assert (float(loss.val_loss), float(loss.kl), float(loss.encoder_penalty)) == (2.0, 1.0, 3.0)


def test_model_meta_loss_reads_the_weights_from_the_configuration():
  class Outputs:
    val_loss, kl, encoder_penalty = tf.constant([1.0]), tf.constant([2.0]), tf.constant([3.0])

  class Config:
    kl_weight, encoder_penalty_weight = 0.5, 0.25
    l2_penalty_weight, orthogonality_penalty_weight = 0.125, 4.0

  kernels = [tf.constant([[2.0, 0.0]])]
  decoder_kernel = tf.constant([[1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0]])
  orthogonality = float(decoder_lib.orthogonality_penalty(decoder_kernel))  # C_01 = 1/2
  assert orthogonality == pytest.approx(2 * 0.25 / 4)
  loss = objective.model_meta_loss(Outputs, Config, kernels, decoder_kernel)
  assert float(loss.total) == pytest.approx(1.0 + 1.0 + 0.75 + 0.125 * 2.0 + 4.0 * orthogonality)
