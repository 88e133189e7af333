"""leo_tf.core.statistics: the 95% interval mean +- 1.96 sd / sqrt(n), derived by hand."""

import math

import numpy as np
import pytest

from leo_tf.core import statistics


def test_confidence_interval_by_hand():
  # Mean 0.5; squared deviations 0, 0.25, 0.25, 0 sum to 0.5, over n - 1 = 3: sd^2 = 1/6.
  mean, ci, sd = statistics.confidence_interval([0.5, 1.0, 0.0, 0.5])
  assert mean == pytest.approx(0.5, abs=1e-15)
  assert sd == pytest.approx(math.sqrt(1.0 / 6.0), rel=1e-12)  # 0.40825: ddof=1, not 0.35355
  assert ci == pytest.approx(1.96 * math.sqrt(1.0 / 6.0) / 2.0, rel=1e-12)  # sqrt(4) = 2
  assert ci == pytest.approx(0.4000833, abs=1e-7)


def test_one_value_has_no_width_and_no_values_is_an_error():
  assert statistics.confidence_interval([0.75]) == (0.75, 0.0, 0.0)
  with pytest.raises(ValueError, match="num_tasks must be >= 1"):
    statistics.confidence_interval([])


def test_interval_dict_names_the_three_numbers():
  got = statistics.interval_dict([0.5, 1.0, 0.0, 0.5])
  assert sorted(got) == ["ci95", "mean", "sd"]
  assert got == dict(zip(("mean", "ci95", "sd"),
                         statistics.confidence_interval([0.5, 1.0, 0.0, 0.5])))
  assert got["sd"] == pytest.approx(math.sqrt(1.0 / 6.0), rel=1e-12)
  assert all(type(v) is float for v in got.values())  # JSON-ready, not NumPy scalars
  with pytest.raises(ValueError):
    statistics.interval_dict([])


def test_confidence_interval_of_four_accuracies_by_hand():
  # (From the old tests/test_train.py.) Deviations -0.3, -0.1, 0.1, 0.3 from the mean 0.5.
  mean, ci, sd = statistics.confidence_interval(np.array([0.2, 0.4, 0.6, 0.8]))
  assert mean == pytest.approx(0.5)
  assert sd == pytest.approx(np.sqrt(((0.3 ** 2 + 0.1 ** 2) * 2) / 3))
  assert ci == pytest.approx(1.96 * sd / 2)
  with pytest.raises(ValueError, match="num_tasks"):
    statistics.confidence_interval(np.array([]))
