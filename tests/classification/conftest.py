"""Fixtures shared by the classification tests."""

import numpy as np
import pytest

from leo_tf.data.episodes import ProblemInstance


def _one_task(tr, val):
  """One task from support [N, K, D] and query [N, V, D] arrays; row n is class n."""
  tr, val = np.asarray(tr, np.float64)[None], np.asarray(val, np.float64)[None]
  n = tr.shape[1]
  labels = lambda m: np.broadcast_to(np.arange(n, dtype=np.int32)[None, :, None], (1, n, m)).copy()
  return ProblemInstance(tr, labels(tr.shape[2]), val, labels(val.shape[2]))


@pytest.fixture
def one_task():
  """Builds a float64 ProblemInstance of one task from support and query arrays."""
  return _one_task
