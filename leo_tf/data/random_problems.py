"""Random few-shot problems (random embeddings): for benchmarks, examples and tests."""

from __future__ import annotations

import numpy as np

from leo_tf.data.episodes import ProblemInstance


def random_problem(batch_size: int, num_classes: int, num_tr: int, num_val: int,
                   embedding_dim: int, *, seed: int = 0, dtype=np.float32,
                   normalize: bool = True) -> ProblemInstance:
  """B tasks of N classes, K support and V query examples of random features.

  Features are standard normal, L2-normalised per example as the real
  embeddings are at load; labels are n in row n.

  Returns:
    ProblemInstance of numpy arrays: [B, N, K, D], [B, N, K], [B, N, V, D], [B, N, V].
  """
  rng = np.random.default_rng(seed)

  def features(per_class):
    x = rng.standard_normal((batch_size, num_classes, per_class, embedding_dim))
    if normalize:
      x /= np.linalg.norm(x, axis=-1, keepdims=True)
    return x.astype(dtype)

  def labels(per_class):
    # row n holds class n: [N] -> [B, N, per_class]
    return np.broadcast_to(np.arange(num_classes, dtype=np.int32)[None, :, None],
                           (batch_size, num_classes, per_class)).copy()

  return ProblemInstance(features(num_tr), labels(num_tr), features(num_val), labels(num_val))
