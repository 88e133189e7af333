"""regression.evaluation: the MSE of the mean prediction and the 90% band coverage, by hand."""

import numpy as np

from leo_tf.regression import evaluation


def test_scores_by_hand():
  # Two tasks, S = 3 samples at M = 2 points.
  samples = np.array([[[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]],
                      [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]])[..., None]  # [2, 3, 2, 1]
  targets = np.array([[1.0, 1.0], [1.0, 3.0]])[..., None]  # [2, 2, 1]
  # Means: task 0 (2, 1), task 1 (1, 1). MSE: ((2-1)^2 + 0) / 2 = 0.5; (0 + 4) / 2 = 2.
  np.testing.assert_allclose(evaluation.mse_of_mean(samples, targets), [0.5, 2.0])
  # 90% bands: task 0 point 0 [0.2, 3.8] holds 1; point 1 [1, 1] holds 1; task 1: 1 yes, 3 no.
  np.testing.assert_allclose(evaluation.band_coverage(samples, targets), [1.0, 0.5])
