"""leo_tf.core.classifier: logits, cross-entropy and accuracy against NumPy loops.

Shapes are deliberately non-square (N != K != D) so that a transposed axis
cannot pass.
"""

import numpy as np
import tensorflow as tf

from leo_tf.core import classifier

B, N, K, D = 2, 3, 4, 7


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
