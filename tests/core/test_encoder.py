"""leo_tf.core.encoder: the relation network, the per-class average and the encoder g_e.

Checked against NumPy loops. Shapes are deliberately non-square (N != K != D != n_z)
so that a transposed axis cannot pass.
"""

import numpy as np
import pytest
import tensorflow as tf

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
