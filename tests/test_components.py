"""Encoder, relation network, decoder, Gaussians and classifier against NumPy loops.

Shapes are deliberately non-square (N != K != D != n_z) so that a transposed
axis cannot pass.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from leo_tf.core import classifier
from leo_tf.core import decoder as decoder_lib
from leo_tf.core import distributions
from leo_tf.core import encoder as encoder_lib
from leo_tf.core import seeds

B, N, K, D, NZ = 2, 3, 4, 7, 5


def _relu(x):
  return np.maximum(x, 0.0)


def test_relation_network_matches_naive_pair_loop():
  rng = np.random.default_rng(0)
  codes = rng.standard_normal((B, N, K, NZ))
  layer = encoder_lib.RelationNetwork(NZ, seed=3, dtype="float64")
  layer.build((None, None, None, NZ))
  out = layer(tf.constant(codes)).numpy()
  w0, w1, w2 = [k.numpy() for k in layer.kernels]
  assert w0.shape == (2 * NZ, 2 * NZ)
  expected = np.zeros((B, N, K, 2 * NZ))
  for b in range(B):
    flat = codes[b].reshape(N * K, NZ)
    for i in range(N * K):
      acc = np.zeros(2 * NZ)
      for j in range(N * K):  # every ordered pair (i, j), concatenated as [x_i; x_j]
        pair = np.concatenate([flat[i], flat[j]])
        acc += _relu(_relu(pair @ w0) @ w1) @ w2  # no activation after the last layer
      expected[b, i // K, i % K] = acc / (N * K)
  np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)


def test_average_codes_per_class_repeats_the_class_mean():
  codes = np.arange(B * N * K * 2, dtype=np.float64).reshape(B, N, K, 2)
  out = encoder_lib.average_codes_per_class(tf.constant(codes)).numpy()
  for b in range(B):
    for n in range(N):
      for k in range(K):
        np.testing.assert_allclose(out[b, n, k], codes[b, n].mean(axis=0))


def test_encoder_is_linear_without_bias_and_needs_training_flag():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((B, N, K, D))
  enc = encoder_lib.Encoder(NZ, dropout_rate=0.5, seed=0, dtype="float64")
  enc.build((None, None, None, D))
  np.testing.assert_allclose(enc(tf.constant(x), training=False).numpy(),
                             x @ enc.kernel.numpy(), rtol=1e-12)
  with pytest.raises(ValueError, match="training"):
    enc(tf.constant(x))
  with pytest.raises(ValueError, match="keep_mask"):
    enc(tf.constant(x), training=True)
  # Dropout in meta-training: the input times the keep mask.
  mask = seeds.dropout_keep_mask([B, N, K, D], 0.5, tf.constant([3, 4]), tf.float64)
  dropped = enc(tf.constant(x), training=True, keep_mask=mask).numpy()
  np.testing.assert_allclose(dropped, (x * mask.numpy()) @ enc.kernel.numpy(), rtol=1e-12)


def test_dropout_keep_mask_values_and_rate():
  mask = seeds.dropout_keep_mask([200, 500], 0.3, tf.constant([1, 2])).numpy()
  assert set(np.unique(mask)) == {0.0, np.float32(1 / 0.7)}
  assert (mask == 0).mean() == pytest.approx(0.3, abs=0.005)  # 100,000 draws: sd 0.0015
  np.testing.assert_array_equal(
      mask, seeds.dropout_keep_mask([200, 500], 0.3, tf.constant([1, 2])).numpy())
  np.testing.assert_array_equal(seeds.dropout_keep_mask([3], 0.0, tf.constant([1, 2])), 1.0)


def test_stddev_transform_and_offset():
  u = np.array([[-3.0, 0.0, 0.5]])
  means = np.array([[1.0, -2.0, 0.0]])
  params = tf.constant(np.concatenate([means, u], axis=-1))
  q = distributions.gaussian_from_params(params)
  np.testing.assert_allclose(q.loc.numpy(), means)
  np.testing.assert_allclose(q.scale.numpy(), np.maximum(np.exp(u) - 1.0, 1e-10))
  offset = math.sqrt(2.0 / (5 + 640))
  q = distributions.gaussian_from_params(params, stddev_offset=offset)
  np.testing.assert_allclose(q.scale.numpy(), np.maximum(np.exp(u) - (1.0 - offset), 1e-10))
  assert q.scale.numpy()[0, 1] == pytest.approx(offset)  # u = 0 gives Glorot's stddev
  np.testing.assert_allclose(decoder_lib.weights_stddev_offset(5, 640).numpy(), offset)


def test_soft_bound_on_the_stddev_matches_numpy_and_keeps_gradients_finite():
  # sigma = exp(u') - (1 - offset), u' = b tanh(u / b) for u > 0 and u' = u otherwise,
  # b = log(max + 1 - offset): computed by hand in NumPy.
  offset, max_stddev = 0.1, 2.0
  u = np.array([[-40.0, -3.0, -0.5, 0.0, 0.3, 2.0, 50.0, 1000.0]])
  b = np.log(max_stddev + 1.0 - offset)
  squashed = np.where(u > 0, b * np.tanh(u / b), u)
  want = np.maximum(np.exp(squashed) - (1.0 - offset), 1e-10)
  got = distributions.stddev_from_params(tf.constant(u), offset, max_stddev).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-12)
  assert np.all(got <= max_stddev) and got[0, -1] == pytest.approx(max_stddev, rel=1e-9)
  # Unchanged at and below u = 0, and without a bound (None or 0) the original's formula.
  np.testing.assert_allclose(got[0, :4], np.maximum(np.exp(u[0, :4]) - 0.9, 1e-10), rtol=1e-12)
  for off in (None, 0.0):
    np.testing.assert_allclose(
        distributions.stddev_from_params(tf.constant(u[:, :7]), offset, off).numpy(),
        np.maximum(np.exp(u[:, :7]) - 0.9, 1e-10), rtol=1e-12)
  # d sigma / d u against central finite differences (float64), and finite where
  # the unbounded stddev overflows float32 (u = 1000: exp(u) = Inf).
  u32 = tf.constant(u, tf.float32)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(u32)
    bounded = distributions.stddev_from_params(u32, offset, max_stddev)
    unbounded = distributions.stddev_from_params(u32, offset)
  assert np.all(np.isfinite(tape.gradient(bounded, u32).numpy()))
  assert not np.all(np.isfinite(tape.gradient(unbounded, u32).numpy()))
  u64 = tf.constant(u[:, 2:7])
  with tf.GradientTape() as tape:
    tape.watch(u64)
    sigma = distributions.stddev_from_params(u64, offset, max_stddev)
  h = 1e-6
  numeric = (distributions.stddev_from_params(u64 + h, offset, max_stddev)
             - distributions.stddev_from_params(u64 - h, offset, max_stddev)).numpy() / (2 * h)
  np.testing.assert_allclose(tape.gradient(sigma, u64).numpy(), numeric, rtol=1e-6)
  with pytest.raises(ValueError, match="max_stddev"):
    distributions.stddev_from_params(u64, 0.5, 0.5)


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


def _normal_logpdf(x, mu, sigma):
  return -0.5 * ((x - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)


def test_kl_estimators_match_numpy():
  rng = np.random.default_rng(2)
  mu = rng.standard_normal((B, N, K, NZ))
  u = rng.uniform(0.2, 1.5, (B, N, K, NZ))
  q = distributions.gaussian_from_params(tf.constant(np.concatenate([mu, u], -1)))
  sigma = np.exp(u) - 1.0
  z = rng.standard_normal((B, N, K, NZ))
  eps = (z - mu) / sigma
  sample_kl = distributions.kl_to_standard_normal(q, tf.constant(z), tf.constant(eps), "sample",
                                                  [1, 2, 3]).numpy()
  expected = (_normal_logpdf(z, mu, sigma) - _normal_logpdf(z, 0.0, 1.0)).mean(axis=(1, 2, 3))
  np.testing.assert_allclose(sample_kl, expected, rtol=1e-10)
  # ... and equal to TFP's own log densities at the sample.
  standard = distributions.tfd.Normal(np.float64(0.0), np.float64(1.0))
  tfp_kl = (q.log_prob(z) - standard.log_prob(z)).numpy()
  np.testing.assert_allclose(sample_kl, tfp_kl.mean(axis=(1, 2, 3)), rtol=1e-10)
  analytic = distributions.kl_to_standard_normal(q, tf.constant(z), None, "analytic",
                                                 [1, 2, 3]).numpy()
  closed_form = (np.log(1.0 / sigma) + (sigma ** 2 + mu ** 2) / 2 - 0.5).mean(axis=(1, 2, 3))
  np.testing.assert_allclose(analytic, closed_form, rtol=1e-10)
  with pytest.raises(ValueError, match="estimator"):
    distributions.kl_to_standard_normal(q, tf.constant(z), None, "exact", [1, 2, 3])


def test_sample_kl_is_stable_when_the_stddev_is_clamped():
  # u = -5: exp(u) - 1 < 0, sigma clamps at 1e-10. log q(z) = log N(eps) + log(1e10).
  params = tf.constant([[0.1, -5.0]], tf.float32)
  q = distributions.gaussian_from_params(params)
  z, eps = distributions.sample_with_noise(q, tf.constant([1, 2]))
  kl = distributions.kl_to_standard_normal(q, z, eps, "sample", [1]).numpy()
  e, zz = eps.numpy()[0, 0], z.numpy()[0, 0]
  expected = (-0.5 * e ** 2 + np.log(1e10)) - (-0.5 * zz ** 2)
  assert kl[0] == pytest.approx(expected, rel=1e-5)


def test_sample_with_noise_equals_tfp_sampling():
  params = tf.constant(np.random.default_rng(0).standard_normal((3, 8)), tf.float64)
  q = distributions.gaussian_from_params(params)
  seed = tf.constant([4, 5])
  z, eps = distributions.sample_with_noise(q, seed)
  np.testing.assert_allclose(z.numpy(), q.sample(seed=seed).numpy(), rtol=1e-12)
  unclamped = q.scale.numpy() > 1e-3  # elsewhere (z - mu) / sigma is rounding noise
  assert unclamped.any() and not unclamped.all()
  np.testing.assert_allclose(eps.numpy()[unclamped], ((z - q.loc) / q.scale).numpy()[unclamped],
                             rtol=1e-8)


def test_sampling_is_reparameterised_and_stateless():
  q = distributions.gaussian_from_params(tf.constant([[0.5, -1.0, 1.0, 1.2]], tf.float64))
  eps = distributions.standard_normal([1, 2], tf.constant([7, 8]), tf.float64)
  np.testing.assert_array_equal(
      eps.numpy(), distributions.standard_normal([1, 2], tf.constant([7, 8]), tf.float64).numpy())
  z = distributions.possibly_sample(q, training=True, deterministic=False, noise=eps).numpy()
  np.testing.assert_allclose(z, [[0.5, -1.0]] + (np.exp([[1.0, 1.2]]) - 1) * eps.numpy())
  np.testing.assert_array_equal(
      distributions.possibly_sample(q, training=False, deterministic=False, noise=None).numpy(),
      [[0.5, -1.0]])
  np.testing.assert_array_equal(
      distributions.possibly_sample(q, training=True, deterministic=True, noise=None).numpy(),
      [[0.5, -1.0]])
  with pytest.raises(ValueError, match="noise"):
    distributions.possibly_sample(q, training=True, deterministic=False, noise=None)
  # 20,000 draws: mean 0 and sd 1 within a few standard errors.
  many = distributions.standard_normal([20000], tf.constant([1, 1])).numpy()
  assert abs(many.mean()) < 0.03 and abs(many.std() - 1) < 0.03


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


def test_logits_match_the_originals_per_image_form():
  rng = np.random.default_rng(5)
  m = 6  # queries per class
  x = rng.standard_normal((B, N, m, D))
  w = rng.standard_normal((B, N, K, D))
  out = classifier.logits(tf.constant(x), tf.constant(w)).numpy()
  assert out.shape == (B, N, m, N)
  # The original: einsum("ijk,lmk->ijlm") then the mean over the weights' K axis.
  expected = np.zeros((B, N, m, N))
  for b in range(B):
    for n in range(N):
      for j in range(m):
        for c in range(N):
          expected[b, n, j, c] = np.mean([x[b, n, j] @ w[b, c, k] for k in range(K)])
  np.testing.assert_allclose(out, expected, rtol=1e-10)


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


def test_cross_entropy_and_accuracy_match_numpy():
  rng = np.random.default_rng(6)
  lg = rng.standard_normal((B, N, K, N)) * 3
  labels = rng.integers(0, N, (B, N, K)).astype(np.int32)
  ce = classifier.cross_entropy(tf.constant(lg), tf.constant(labels)).numpy()
  log_p = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
  expected = -np.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
  np.testing.assert_allclose(ce, expected, rtol=1e-10)
  acc = classifier.accuracy(tf.constant(lg), tf.constant(labels)).numpy()
  np.testing.assert_allclose(acc, (lg.argmax(-1) == labels).mean(axis=(1, 2)))
