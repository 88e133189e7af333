"""regression.mlp: f_theta's flat parameter layout and its forward pass against NumPy."""

import numpy as np
import pytest
import tensorflow as tf

from leo_tf.regression import mlp


def test_parameter_count_and_layout():
  assert mlp.num_params((40, 40)) == 1761  # 1*40+40 + 40*40+40 + 40*1+1
  assert [s for _, s in mlp.param_shapes((40, 40))] == [
      (1, 40), (40,), (40, 40), (40,), (40, 1), (1,)]


def test_mlp_predict_matches_numpy():
  rng = np.random.default_rng(0)
  hidden = (3, 4)
  params = rng.standard_normal((2, 3, mlp.num_params(hidden)))  # [B=2, S=3, P=27]
  x = rng.standard_normal((2, 3, 5, 1))  # [B, S, M=5, 1]
  got = mlp.mlp_predict(tf.constant(params), tf.constant(x), hidden).numpy()
  want = np.zeros((2, 3, 5, 1))
  for b in range(2):
    for s in range(3):
      p = params[b, s]
      w0, b0 = p[:3].reshape(1, 3), p[3:6]
      w1, b1 = p[6:18].reshape(3, 4), p[18:22]
      w2, b2 = p[22:26].reshape(4, 1), p[26:27]
      h = np.maximum(x[b, s] @ w0 + b0, 0)
      h = np.maximum(h @ w1 + b1, 0)
      want[b, s] = h @ w2 + b2
  np.testing.assert_allclose(got, want, rtol=1e-12)
  with pytest.raises(ValueError, match="hidden_units"):
    mlp.mlp_predict(tf.constant(params), tf.constant(x), (3, 5))
