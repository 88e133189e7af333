"""leo_tf.core.seeds: the stateless inverted-dropout keep mask."""

import numpy as np
import pytest
import tensorflow as tf

from leo_tf.core import seeds


def test_dropout_keep_mask_values_and_rate():
  mask = seeds.dropout_keep_mask([200, 500], 0.3, tf.constant([1, 2])).numpy()
  assert set(np.unique(mask)) == {0.0, np.float32(1 / 0.7)}
  assert (mask == 0).mean() == pytest.approx(0.3, abs=0.005)  # 100,000 draws: sd 0.0015
  np.testing.assert_array_equal(
      mask, seeds.dropout_keep_mask([200, 500], 0.3, tf.constant([1, 2])).numpy())
  np.testing.assert_array_equal(seeds.dropout_keep_mask([3], 0.0, tf.constant([1, 2])), 1.0)
