"""Tests for leo_tf.classification.latent_figure: the projection of figure 4."""

import numpy as np
import pytest

from leo_tf.classification import latent_figure


def test_pca_2d_by_hand():
  # Points on the line y = 2x (plus a constant z): all variance on (1, 2, 0)/sqrt(5).
  t = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
  points = np.stack([t, 2 * t, np.full_like(t, 3.0)], axis=1)
  projected, components, explained = latent_figure.pca_2d(points)
  np.testing.assert_allclose(components[0], np.array([1, 2, 0]) / np.sqrt(5), atol=1e-12)
  np.testing.assert_allclose(projected[:, 0], t * np.sqrt(5), atol=1e-12)
  np.testing.assert_allclose(explained, [1.0, 0.0], atol=1e-12)
  with pytest.raises(ValueError, match=r"\[M, d\]"):
    latent_figure.pca_2d(np.zeros((1, 3)))

