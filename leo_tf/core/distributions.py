"""Diagonal Gaussians over latent codes and classifier weights (section 2.3.1).

The encoder and the decoder each output the parameters of a diagonal Gaussian
as one tensor [..., 2 * d]: the first half are the means, the second half the
unnormalised standard deviations u. As in the original code,

    sigma = max(exp(u) - (1 - offset), 1e-10),

with offset 0 for the latent codes and sqrt(2 / (N + D)) (Glorot's standard
deviation for a D -> N layer) for the classifier weights, so that u = 0 gives
the initial scale a freshly initialised layer would have.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

MIN_STDDEV = 1e-10


def gaussian_from_params(params: tf.Tensor, stddev_offset: float = 0.0,
                         max_stddev: float | None = None) -> tfd.Normal:
  """Returns the diagonal Gaussian that `params` [..., 2d] parameterise: [..., d]."""
  means, unnormalized_stddev = tf.split(params, 2, axis=-1)  # 2 x [..., d]
  return tfd.Normal(loc=means,
                    scale=stddev_from_params(unnormalized_stddev, stddev_offset, max_stddev))


def stddev_from_params(unnormalized_stddev: tf.Tensor, stddev_offset=0.0,
                       max_stddev: float | None = None) -> tf.Tensor:
  """sigma = max(exp(u) - (1 - offset), 1e-10), elementwise; softly below max_stddev if given."""
  if max_stddev:
    unnormalized_stddev = soft_bound(unnormalized_stddev, stddev_offset, max_stddev)
  return tf.maximum(tf.exp(unnormalized_stddev) - (1.0 - stddev_offset), MIN_STDDEV)


def soft_bound(unnormalized_stddev: tf.Tensor, stddev_offset, max_stddev: float) -> tf.Tensor:
  """Squashes the positive u, u -> b tanh(u / b), b = log(max_stddev + 1 - offset).

  The identity at and below 0 (both branches have slope 1 at 0) and never
  above b, so sigma = exp(u) - (1 - offset) stays below max_stddev and neither
  sigma nor its gradient exp(u) can overflow. Without it an inner loop can run
  away: a large sigma makes large sampled weights, hence a large support loss
  and a large gradient step on the code, which raises u further, until exp(u)
  is Inf and the meta-batch's loss NaN (BUILD_NOTES.md, "Bugs found and fixed").
  The original has no bound (max_stddev None or 0 here).
  """
  offset = float(stddev_offset) if isinstance(stddev_offset, (int, float)) else None
  if offset is not None and not max_stddev > offset:
    raise ValueError(f"max_stddev ({max_stddev}) must be above the stddev offset ({offset}), "
                     f"the stddev at u = 0.")
  dtype = unnormalized_stddev.dtype
  as_dtype = lambda x: tf.cast(x, dtype) if tf.is_tensor(x) else tf.constant(x, dtype)
  bound = tf.math.log(as_dtype(max_stddev) + 1.0 - as_dtype(stddev_offset))
  squashed = bound * tf.tanh(unnormalized_stddev / bound)
  return tf.where(unnormalized_stddev > 0, squashed, unnormalized_stddev)


def possibly_sample(distribution: tfd.Normal, *, sample: bool,
                    noise: tf.Tensor | None) -> tf.Tensor:
  """A reparameterised sample mu + sigma * eps when `sample`, the mean mu otherwise.

  Args:
    distribution: a tfd.Normal with batch shape [..., d].
    sample: draw (classification: meta-training outside the deterministic
      ablation; regression: whenever codes and parameters are sampled, in
      evaluation too) or take the mean.
    noise: eps ~ N(0, I), [..., d] (standard_normal); required when sampling.

  Returns:
    [..., d] tensor.
  """
  if not sample:
    return distribution.loc
  if noise is None:
    raise ValueError("possibly_sample needs noise eps ~ N(0, I) (standard_normal) to sample.")
  return distribution.loc + distribution.scale * noise


def standard_normal(shape, seed: tf.Tensor, dtype=tf.float32) -> tf.Tensor:
  """eps ~ N(0, I) of `shape`, drawn by TFP with a stateless int32 [2] seed."""
  standard = tfd.Normal(loc=tf.zeros([], dtype), scale=tf.ones([], dtype))
  return standard.sample(shape, seed=seed)


def kl_to_standard_normal(distribution: tfd.Normal, samples: tf.Tensor, noise: tf.Tensor | None,
                          estimator: str, reduce_axes) -> tf.Tensor:
  """KL(q || N(0, I)), averaged over `reduce_axes` (the original averages, not sums).

  Args:
    distribution: q, a tfd.Normal [..., d].
    samples: z = mu + sigma * eps drawn from q, [..., d].
    noise: eps, [..., d] (used by the "sample" estimator).
    estimator: "sample": the original's one-sample estimate log q(z) - log p(z)
      at the drawn z; "analytic": TFP's closed form.
    reduce_axes: axes to average over (e.g. [1, 2, 3] for [B, N, K, n_z]).

  Returns:
    The KL per leading index, e.g. [B].

  The one-sample estimate evaluates log q(z) as log N(eps; 0, 1) - log sigma,
  which is q.log_prob(z) in value and in gradient (z - mu)/sigma = eps for every
  mu and sigma), but without recomputing (z - mu) / sigma: when sigma is clamped
  at 1e-10 that subtraction loses every significant digit and the estimate
  becomes rounding noise of size up to 1e4 in float32.
  """
  prior = tfd.Normal(loc=tf.zeros_like(distribution.loc), scale=tf.ones_like(distribution.scale))
  if estimator == "sample":
    if noise is None:
      raise ValueError("The 'sample' KL estimator needs the noise eps of the sample.")
    log_q = prior.log_prob(noise) - tf.math.log(distribution.scale)  # log N(eps) - log sigma
    kl = log_q - prior.log_prob(samples)
  elif estimator == "analytic":
    kl = tfd.kl_divergence(distribution, prior)
  else:
    raise ValueError(f"estimator must be 'sample' or 'analytic', got {estimator!r}.")
  return tf.reduce_mean(kl, axis=reduce_axes)
