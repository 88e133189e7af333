"""leo_tf.data.random_problems: seeded random few-shot problems in the episodes' layout."""

import numpy as np

from leo_tf.data import episodes
from leo_tf.data import random_problems


def test_random_problem_shapes_labels_and_unit_norm_features():
  problem = random_problems.random_problem(2, 3, 4, 5, 7, seed=1)
  assert isinstance(problem, episodes.ProblemInstance)
  assert problem.tr_input.shape == (2, 3, 4, 7) and problem.tr_input.dtype == np.float32
  assert problem.val_input.shape == (2, 3, 5, 7) and problem.val_input.dtype == np.float32
  assert problem.tr_output.dtype == np.int32 and problem.val_output.dtype == np.int32
  np.testing.assert_array_equal(problem.tr_output[1], [[0] * 4, [1] * 4, [2] * 4])  # row n: n
  np.testing.assert_array_equal(problem.val_output, np.broadcast_to(
      np.arange(3)[None, :, None], (2, 3, 5)))
  for x in (problem.tr_input, problem.val_input):
    np.testing.assert_allclose(np.linalg.norm(x, axis=-1), 1.0, rtol=1e-6)
  problem.tr_output[0, 0, 0] = 9  # the labels are writable copies, not a broadcast view


def test_random_problem_is_seeded_and_can_skip_the_normalisation():
  a = random_problems.random_problem(2, 3, 1, 2, 6, seed=4, dtype=np.float64)
  b = random_problems.random_problem(2, 3, 1, 2, 6, seed=4, dtype=np.float64)
  for got, want in zip(a, b):
    np.testing.assert_array_equal(got, want)
  assert a.tr_input.dtype == np.float64
  assert not np.array_equal(
      a.tr_input, random_problems.random_problem(2, 3, 1, 2, 6, seed=5, dtype=np.float64).tr_input)
  raw = random_problems.random_problem(2, 3, 1, 2, 6, seed=4, dtype=np.float64, normalize=False)
  np.testing.assert_allclose(
      raw.tr_input / np.linalg.norm(raw.tr_input, axis=-1, keepdims=True), a.tr_input,
      rtol=1e-12)
  assert np.abs(np.linalg.norm(raw.tr_input, axis=-1) - 1.0).max() > 0.1  # 6-D normals: not unit
