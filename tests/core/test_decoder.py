"""leo_tf.core.decoder: the decoder g_d, its weight distributions and orthogonality penalty.

Checked against NumPy. Shapes are deliberately non-square (N != K != D != n_z)
so that a transposed axis cannot pass.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from leo_tf.core import decoder as decoder_lib

B, N, K, D, NZ = 2, 3, 4, 7, 5


def test_weights_stddev_offset_is_glorots_stddev():
  offset = math.sqrt(2.0 / (5 + 640))
  np.testing.assert_allclose(decoder_lib.weights_stddev_offset(5, 640).numpy(), offset)


def test_decoder_bounds_the_weight_stddev_when_asked():
  z = np.random.default_rng(3).standard_normal((B, N, K, NZ)) * 30  # large codes: large u
  plain = decoder_lib.Decoder(D, seed=1, dtype="float64")
  bounded = decoder_lib.Decoder(D, seed=1, max_stddev=1.5, dtype="float64")
  for dec in (plain, bounded):
    dec.build((None, None, None, NZ))
  p, q = plain.weights_distribution(tf.constant(z)), bounded.weights_distribution(tf.constant(z))
  np.testing.assert_array_equal(p.loc.numpy(), q.loc.numpy())
  assert p.scale.numpy().max() > 1e3 and q.scale.numpy().max() <= 1.5
  small = p.scale.numpy() < 0.05  # u <= 0 there (the offset is sqrt(2 / (N + D)) = 0.45)
  np.testing.assert_allclose(q.scale.numpy()[small], p.scale.numpy()[small], rtol=1e-12)
  mean = bounded.class_weights_distribution(tf.constant(z))
  np.testing.assert_allclose(mean.scale.numpy()[:, :, 0],
                             np.sqrt((q.scale.numpy() ** 2).sum(axis=2)) / K, rtol=1e-12)


def test_orthogonality_penalty_matches_numpy():
  rng = np.random.default_rng(3)
  w = rng.standard_normal((NZ, 2 * D))
  out = decoder_lib.orthogonality_penalty(tf.constant(w)).numpy()
  corr = np.zeros((NZ, NZ))
  for i in range(NZ):
    for j in range(NZ):
      corr[i, j] = w[i] @ w[j] / (np.linalg.norm(w[i]) * np.linalg.norm(w[j]))
  np.testing.assert_allclose(out, np.mean((corr - np.eye(NZ)) ** 2), rtol=1e-10)
  # Orthogonal rows give zero.
  q, _ = np.linalg.qr(rng.standard_normal((2 * D, NZ)))
  assert decoder_lib.orthogonality_penalty(tf.constant(q.T)).numpy() == pytest.approx(0, abs=1e-12)


def test_decoder_is_linear_without_bias():
  rng = np.random.default_rng(4)
  z = rng.standard_normal((B, N, K, NZ))
  dec = decoder_lib.Decoder(D, seed=0, dtype="float64")
  dec.build((None, None, None, NZ))
  params = dec(tf.constant(z)).numpy()
  np.testing.assert_allclose(params, z @ dec.kernel.numpy(), rtol=1e-12)
  dist = dec.weights_distribution(tf.constant(z))
  np.testing.assert_allclose(dist.loc.numpy(), params[..., :D])
  offset = math.sqrt(2.0 / (N + D))
  np.testing.assert_allclose(dist.scale.numpy(),
                             np.maximum(np.exp(params[..., D:]) - (1 - offset), 1e-10))


def test_class_weights_distribution_is_that_of_the_mean_of_the_copies():
  # The classifier uses a class's K weight vectors only through their mean, so
  # the model samples that mean directly: N(mean_k mu_k, sum_k sigma_k^2 / K^2).
  rng = np.random.default_rng(7)
  z = rng.standard_normal((B, N, K, NZ))  # different codes per copy
  dec = decoder_lib.Decoder(D, seed=1, dtype="float64")
  dec.build((None, None, None, NZ))
  per_copy = dec.weights_distribution(tf.constant(z))
  mu, sigma = per_copy.loc.numpy(), per_copy.scale.numpy()  # [B, N, K, D]
  mean = dec.class_weights_distribution(tf.constant(z))
  assert mean.loc.shape == (B, N, 1, D)
  np.testing.assert_allclose(mean.loc.numpy()[:, :, 0], mu.mean(axis=2), rtol=1e-12)
  np.testing.assert_allclose(mean.scale.numpy()[:, :, 0],
                             np.sqrt((sigma ** 2).sum(axis=2)) / K, rtol=1e-12)
  # Monte Carlo: the mean of K independently sampled copies has these moments.
  draws = mu + sigma * rng.standard_normal((20000, B, N, K, D))  # [S, B, N, K, D]
  sampled_mean = draws.mean(axis=3)  # [S, B, N, D]
  np.testing.assert_allclose(sampled_mean.std(axis=0), mean.scale.numpy()[:, :, 0], rtol=0.04)
  np.testing.assert_allclose(sampled_mean.mean(axis=0), mean.loc.numpy()[:, :, 0],
                             atol=4 * mean.scale.numpy().max() / np.sqrt(20000))
  # K = 1: the copy's own distribution.
  single = dec.class_weights_distribution(tf.constant(z[:, :, :1]))
  np.testing.assert_allclose(single.loc.numpy(), mu[:, :, :1], rtol=1e-12)
  np.testing.assert_allclose(single.scale.numpy(), sigma[:, :, :1], rtol=1e-12)
