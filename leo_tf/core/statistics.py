"""The one 95% confidence interval of the project: mean +- 1.96 sd / sqrt(n).

Every accuracy and MSE that leo_tf reports over tasks (meta-validation,
meta-test, stage 1's nearest class mean, the synthetic set's report) is a mean
over independent tasks with this normal-approximation interval, as in the
paper's tables.
"""

from __future__ import annotations

import math

import numpy as np


def confidence_interval(values) -> tuple[float, float, float]:
  """(mean, 95% half-width 1.96 sd / sqrt(n), sd) of per-task values [n] (sd with ddof=1).

  One value gives a half-width and sd of 0.

  Raises:
    ValueError: no values (nothing was evaluated).
  """
  values = np.asarray(values, np.float64)
  n = values.size
  if n == 0:
    raise ValueError("No tasks were evaluated: num_tasks must be >= 1.")
  sd = float(np.std(values, ddof=1)) if n > 1 else 0.0
  return float(np.mean(values)), 1.96 * sd / math.sqrt(n), sd


def interval_dict(values) -> dict[str, float]:
  """confidence_interval as {"mean", "ci95", "sd"}, the form results files hold."""
  mean, ci, sd = confidence_interval(values)
  return {"mean": mean, "ci95": ci, "sd": sd}
