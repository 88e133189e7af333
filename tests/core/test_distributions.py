"""leo_tf.core.distributions: the stddev transform and its soft bound, KL estimators, sampling.

Checked against NumPy, central finite differences and TFP's own densities and
samples. Shapes are deliberately non-square (N != K != n_z).
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from leo_tf.core import distributions

B, N, K, NZ = 2, 3, 4, 5


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


def _reparameterised_sample(q, seed):
  """(z, eps): the project's sample mu + sigma * eps, eps ~ N(0, I) from standard_normal."""
  eps = distributions.standard_normal(q.loc.shape, seed, q.loc.dtype)
  return distributions.possibly_sample(q, sample=True, noise=eps), eps


def test_sample_kl_is_stable_when_the_stddev_is_clamped():
  # u = -5: exp(u) - 1 < 0, sigma clamps at 1e-10. log q(z) = log N(eps) + log(1e10).
  params = tf.constant([[0.1, -5.0]], tf.float32)
  q = distributions.gaussian_from_params(params)
  z, eps = _reparameterised_sample(q, tf.constant([1, 2]))
  kl = distributions.kl_to_standard_normal(q, z, eps, "sample", [1]).numpy()
  e, zz = eps.numpy()[0, 0], z.numpy()[0, 0]
  expected = (-0.5 * e ** 2 + np.log(1e10)) - (-0.5 * zz ** 2)
  assert kl[0] == pytest.approx(expected, rel=1e-5)


def test_reparameterised_sample_equals_tfp_sampling():
  params = tf.constant(np.random.default_rng(0).standard_normal((3, 8)), tf.float64)
  q = distributions.gaussian_from_params(params)
  seed = tf.constant([4, 5])
  z, eps = _reparameterised_sample(q, seed)
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
  z = distributions.possibly_sample(q, sample=True, noise=eps).numpy()
  np.testing.assert_allclose(z, [[0.5, -1.0]] + (np.exp([[1.0, 1.2]]) - 1) * eps.numpy())
  # Not sampling (evaluation, or the deterministic ablation in meta-training) is the mean.
  np.testing.assert_array_equal(
      distributions.possibly_sample(q, sample=False, noise=None).numpy(), [[0.5, -1.0]])
  np.testing.assert_array_equal(
      distributions.possibly_sample(q, sample=False, noise=eps).numpy(), [[0.5, -1.0]])
  with pytest.raises(ValueError, match="noise"):
    distributions.possibly_sample(q, sample=True, noise=None)
  # 20,000 draws: mean 0 and sd 1 within a few standard errors.
  many = distributions.standard_normal([20000], tf.constant([1, 1])).numpy()
  assert abs(many.mean()) < 0.03 and abs(many.std() - 1) < 0.03
