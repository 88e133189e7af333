"""Small EmbeddingSplits with given class sizes, shared by the episode and pipeline tests."""

import numpy as np

from leo_tf.data import embeddings


def make_split(class_sizes, seed=0, embedding_dim=4):
  """A split whose classes have the given sizes; rows interleave the classes."""
  rows = np.concatenate([np.full(size, c) for c, size in enumerate(class_sizes)])
  rows = np.random.default_rng(seed).permutation(rows)
  names = [f"c{c:02d}" for c in rows]
  images = [f"c{c:02d}_{i}.JPEG" for i, c in enumerate(rows)]
  x = np.random.default_rng(seed + 1).standard_normal((rows.size, embedding_dim))
  return embeddings.build_split(x.astype(np.float32), names, images, ("<test>",))
