"""The decoder g_d and its orthogonality penalty (sections 2.3.1 and 2.3.4).

    w_n ~ p(w | z_n) = N(mu_n^d, diag(sigma_n^d)^2),  (mu_n^d, sigma_n^d) = g_d(z_n).

g_d is linear without bias, n_z -> 2 D. Its weight matrix W [n_z, 2D] is kept
close to orthogonal rows by lambda_2 ||C_d - I||^2, C_d the row correlation
matrix of W.
"""

from __future__ import annotations


import keras
import tensorflow as tf

from leo_tf.core import distributions


def weights_stddev_offset(num_classes, embedding_dim: int) -> tf.Tensor:
  """sqrt(2 / (N + D)): Glorot's standard deviation for a D -> N classifier."""
  num_classes = tf.cast(num_classes, tf.float64)
  return tf.sqrt(2.0 / (num_classes + float(embedding_dim)))


class Decoder(keras.layers.Layer):
  """g_d: latent codes [..., n_z] -> Gaussian parameters over weights [..., 2D]."""

  def __init__(self, embedding_dim: int, *, seed: int | None = None,
               max_stddev: float | None = None, **kwargs):
    """max_stddev: soft upper bound on sigma^d (distributions.soft_bound); None or 0: none."""
    super().__init__(**kwargs)
    self.embedding_dim = embedding_dim
    self.max_stddev = max_stddev or None
    self._initializer = keras.initializers.GlorotUniform(seed=seed)

  def build(self, input_shape):
    self.kernel = self.add_weight(name="w", shape=(int(input_shape[-1]), 2 * self.embedding_dim),
                                  initializer=self._initializer)

  def call(self, latents):
    """latents: [B, N, K, n_z] -> [B, N, K, 2D] (means, then unnormalised stddevs)."""
    return tf.einsum("bnkz,zd->bnkd", latents, self.kernel)  # [B,N,K,n_z] -> [B,N,K,2D]

  def weights_distribution(self, latents) -> distributions.tfd.Normal:
    """p(w | z): a diagonal Gaussian [B, N, K, D] over the classifier weights."""
    num_classes = tf.shape(latents)[1]
    offset = tf.cast(weights_stddev_offset(num_classes, self.embedding_dim), latents.dtype)
    return distributions.gaussian_from_params(self(latents), stddev_offset=offset,
                                              max_stddev=self.max_stddev)

  def class_weights_distribution(self, latents) -> distributions.tfd.Normal:
    """The distribution of each class's mean weight vector, [B, N, 1, D].

    The classifier uses a class's K weight vectors only through their mean
    (classifier.logits), w_n = 1/K sum_k w_{n,k}. With the w_{n,k} ~ N(mu_{n,k},
    sigma_{n,k}^2) independent, that mean is exactly

        w_n ~ N(1/K sum_k mu_{n,k},  1/K^2 sum_k sigma_{n,k}^2),

    so it can be sampled directly (the local reparameterisation of Kingma et al.,
    2015): one draw per class instead of K, and the same distribution of the
    decoded weights (ModelConfig.weight_sampling = "class_mean"). It is not the
    same estimator as the original's per-copy draws once the codes are adapted:
    the gradient of the support loss with respect to each copy's code then goes
    through one shared eps instead of that copy's own, which changes the variance
    of every latent step (BUILD_NOTES.md, "Per-copy weight sampling"). g_d is
    linear, so the mean of the K means is g_d's mean half applied once to the
    mean code; only the standard deviations need all K codes.
    """
    d = self.embedding_dim
    num_classes = tf.shape(latents)[1]
    num_copies = tf.cast(tf.shape(latents)[2], latents.dtype)
    offset = tf.cast(weights_stddev_offset(num_classes, d), latents.dtype)
    mean_code = tf.reduce_mean(latents, axis=2, keepdims=True)  # [B, N, 1, n_z]
    loc = tf.einsum("bnkz,zd->bnkd", mean_code, self.kernel[:, :d])  # [B, N, 1, D]
    unnormalized = tf.einsum("bnkz,zd->bnkd", latents, self.kernel[:, d:])  # [B, N, K, D]
    stddev = distributions.stddev_from_params(unnormalized, offset,
                                              self.max_stddev)  # [B, N, K, D]
    scale = tf.sqrt(tf.reduce_sum(tf.square(stddev), axis=2, keepdims=True)) / num_copies
    return distributions.tfd.Normal(loc=loc, scale=scale)  # [B, N, 1, D]


def orthogonality_penalty(kernel: tf.Tensor) -> tf.Tensor:
  """||C_d - I||^2 averaged over entries, C_d the row correlation of kernel [n_z, 2D].

  As the original: C_ij = <w_i, w_j> / (|w_i| |w_j| + 1e-32 terms), and the
  squared difference from the identity is averaged (not summed) over the n_z^2
  entries. The caller multiplies by lambda_2.
  """
  gram = tf.matmul(kernel, kernel, transpose_b=True)  # [n_z, n_z]
  norms = tf.norm(kernel, ord=2, axis=1, keepdims=True) + 1e-32  # [n_z, 1]
  correlation = gram / tf.matmul(norms, norms, transpose_b=True)  # [n_z, n_z]
  identity = tf.eye(tf.shape(kernel)[0], dtype=kernel.dtype)
  return tf.reduce_mean(tf.math.squared_difference(correlation, identity))


