"""The encoder g_e and the relation network g_r (section 2.3.1, appendix B.3).

    z_n ~ q(z_n | D_n^tr) = N(mu_n^e, diag(sigma_n^e)^2),
    (mu_n^e, sigma_n^e) = 1 / (N K^2) sum_{k_n} sum_{m, k_m} g_r(g_e(x_n^{k_n}), g_e(x_m^{k_m})).

g_e is linear without bias, D -> n_z, with dropout on its input in meta-training.
g_r is a 3-layer MLP of 2 n_z units without biases and ReLU between the layers
(none after the last, like snt.nets.MLP), applied to all (NK)^2 ordered pairs of
codes, averaged over the partner, then averaged per class.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def _require_training(training) -> bool:
  if training is None:
    raise ValueError("Pass training=True (meta-training) or training=False (evaluation) "
                     "explicitly; the mode is never stored on the layer.")
  return bool(training)


class Encoder(keras.layers.Layer):
  """g_e: dropout, then a linear map without bias, [..., D] -> [..., n_z]."""

  def __init__(self, num_latents: int, dropout_rate: float, *, seed: int | None = None,
               **kwargs):
    super().__init__(**kwargs)
    self.num_latents = num_latents
    self.dropout_rate = dropout_rate
    self._initializer = keras.initializers.GlorotUniform(seed=seed)

  def build(self, input_shape):
    self.kernel = self.add_weight(name="w", shape=(int(input_shape[-1]), self.num_latents),
                                  initializer=self._initializer)

  def call(self, inputs, training=None, keep_mask=None):
    """inputs: [B, N, K, D] -> codes [B, N, K, n_z].

    In meta-training, keep_mask [B, N, K, D] is the dropout multiplier
    (seeds.dropout_keep_mask at self.dropout_rate); it is required then.
    """
    training = _require_training(training)
    if training:
      if keep_mask is None:
        raise ValueError("Encoder in meta-training needs keep_mask, the dropout multiplier "
                         "(seeds.dropout_keep_mask(tf.shape(inputs), dropout_rate, seed)).")
      inputs = inputs * keep_mask  # dropout on the features
    return tf.einsum("bnkd,dz->bnkz", inputs, self.kernel)  # [B, N, K, D] -> [B, N, K, n_z]


class RelationNetwork(keras.layers.Layer):
  """g_r over all ordered pairs of codes, averaged over partners and per class.

  Two exact rewrites make it cheaper than the original's tile-and-concatenate
  (the result is the same; tested against a NumPy loop over pairs):
  - the first layer on a concatenated pair [a, b] is W [a; b] = W_a a + W_b b, a
    broadcast sum of per-example products, [NK, 1, H] + [1, NK, H], without
    materialising the (NK)^2 concatenated pairs;
  - the last layer has no activation, so it is applied after the mean over
    partners, to NK rows instead of (NK)^2.
  """

  def __init__(self, num_latents: int, *, num_layers: int = 3, seed: int | None = None,
               **kwargs):
    super().__init__(**kwargs)
    self.num_latents = num_latents
    self.num_layers = num_layers
    self.units = 2 * num_latents
    self._seed = seed

  def build(self, input_shape):
    fan_in = 2 * int(input_shape[-1])
    for i in range(self.num_layers):
      seed = None if self._seed is None else self._seed + i
      # One attribute per kernel (w0, w1, ...): a Python list of variables on a
      # Keras layer is not tracked by tf.train.Checkpoint.
      setattr(self, f"w{i}", self.add_weight(
          name=f"w{i}", shape=(fan_in if i == 0 else self.units, self.units),
          initializer=keras.initializers.GlorotUniform(seed=seed)))

  @property
  def kernels(self) -> list:
    """The layers' kernels [2 n_z, H], [H, H], ..., in order."""
    return [getattr(self, f"w{i}") for i in range(self.num_layers)]

  def call(self, codes):
    """codes: [B, N, K, n_z] -> per-example relation outputs [B, N, K, 2 n_z].

    Output (b, n, k) is mean over all (m, j) of g_r([code_{nk}; code_{mj}]).
    """
    batch, num_classes, num_examples = tf.unstack(tf.shape(codes)[:3])
    num_latents = codes.shape[-1]
    total = num_classes * num_examples
    flat = tf.reshape(codes, [batch, total, num_latents])  # [B, N, K, n_z] -> [B, NK, n_z]
    first = self.kernels[0]
    left = tf.einsum("biz,zh->bih", flat, first[:num_latents])  # [B, NK, H]: W_a a
    right = tf.einsum("bjz,zh->bjh", flat, first[num_latents:])  # [B, NK, H]: W_b b
    hidden = left[:, :, None, :] + right[:, None, :, :]  # [B, NK, NK, H], pair (i, j)
    for kernel in self.kernels[1:-1]:
      hidden = tf.einsum("bijh,hg->bijg", tf.nn.relu(hidden), kernel)  # [B, NK, NK, H]
    # The last layer is linear, so the mean over partners commutes with it:
    # mean_j (relu(h_ij) W) = (mean_j relu(h_ij)) W, on NK rows instead of (NK)^2.
    pooled = tf.reduce_mean(tf.nn.relu(hidden), axis=2)  # mean over the partner j: [B, NK, H]
    outputs = tf.einsum("bih,hg->big", pooled, self.kernels[-1])  # [B, NK, 2 n_z]
    return tf.reshape(outputs, [batch, num_classes, num_examples, self.units])  # [B, N, K, 2n_z]


def average_codes_per_class(codes: tf.Tensor) -> tf.Tensor:
  """Averages [B, N, K, c] over K and keeps the shape (the original tiles back to K).

  As in the original code, the class's Gaussian parameters are repeated for each
  of the K support examples, and a latent code is then sampled for each copy.
  """
  num_examples = tf.shape(codes)[2]
  mean = tf.reduce_mean(codes, axis=2, keepdims=True)  # [B, N, 1, c]
  return tf.tile(mean, [1, 1, num_examples, 1])  # [B, N, 1, c] -> [B, N, K, c]
