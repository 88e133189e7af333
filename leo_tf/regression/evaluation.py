"""Scoring regression learners on held-out tasks: sampled predictions, MSE, band coverage.

Evaluation, on tasks drawn from the evaluation seed (never the training one),
each queried on evenly spaced inputs over the input range (both ends included):
  mse       per task, the mean over the grid of (mean prediction - f(x))^2, f the
            noiseless function. LEO's mean prediction is the average of its
            sampled functions (codes and parameters sampled, as the paper
            evaluates); MAML's is its one prediction.
  coverage  LEO only: per task, the fraction of grid points where f(x) lies
            within the 5th-95th percentile of the sampled predictions (the
            central 90% band).
Both are reported as the mean over tasks with 1.96 sd / sqrt(n)
(core.statistics). LEO's deterministic path (codes and parameters at their
means) is scored too (predict_means).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from leo_tf.core import seeds
from leo_tf.regression import tasks as tasks_lib


def make_predict_step(model, num_samples: int, jit_compile: bool
                      ) -> Callable[[tasks_lib.RegressionTasks, tf.Tensor], tf.Tensor]:
  """Returns predict(tasks, seed) -> sampled predictions [B, S, M, 1] (MAML: S = 1)."""

  @tf.function(jit_compile=jit_compile, reduce_retracing=True, autograph=False)
  def compiled_predict(tasks: tasks_lib.RegressionTasks, noise) -> tf.Tensor:
    return model(tasks, training=False, num_samples=num_samples, noise=noise).val_predictions

  @tf.function(reduce_retracing=True, autograph=False)
  def predict(tasks: tasks_lib.RegressionTasks, seed: tf.Tensor) -> tf.Tensor:
    return compiled_predict(tasks, model.draw_noise(tasks, seed, num_samples))

  return predict


def make_means_step(model, jit_compile: bool
                    ) -> Callable[[tasks_lib.RegressionTasks], tf.Tensor]:
  """Returns predict(tasks) -> the deterministic prediction [B, 1, M, 1] (means throughout)."""

  @tf.function(jit_compile=jit_compile, reduce_retracing=True, autograph=False)
  def predict(tasks: tasks_lib.RegressionTasks) -> tf.Tensor:
    return model(tasks, training=False, use_means=True).val_predictions

  return predict


def predict_tasks(predict, tasks: tasks_lib.RegressionTasks, chunk_size: int, seed: int
                  ) -> np.ndarray:
  """Runs predict over the tasks in chunks: [N, S, M, 1] float64.

  Chunk c draws with the stateless seed (seed, c): the same tasks, chunking
  and seed give the same samples.
  """
  num_tasks = tasks.tr_input.shape[0]
  outputs = []
  for c, start in enumerate(range(0, num_tasks, chunk_size)):
    chunk = tasks_lib.RegressionTasks(*(a[start:start + chunk_size] for a in tasks))
    outputs.append(np.asarray(predict(chunk, seeds.step_seed(seed, c)), np.float64))
  return np.concatenate(outputs, axis=0)


def mse_of_mean(samples: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """Per-task MSE of the mean prediction: samples [N, S, M, 1], targets [N, M, 1] -> [N]."""
  mean = np.mean(samples, axis=1)  # [N, S, M, 1] -> [N, M, 1]
  return np.mean((mean - targets) ** 2, axis=(1, 2))  # [N]


def band_coverage(samples: np.ndarray, targets: np.ndarray, level: float = 0.9) -> np.ndarray:
  """Per-task fraction of points whose target lies in the central `level` band: [N].

  The band at a point is [q_(1-level)/2, q_(1+level)/2] of the S sampled
  predictions there (numpy's linear interpolation between order statistics).
  """
  low, high = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)], axis=1)  # [N, M, 1]
  inside = (targets >= low) & (targets <= high)  # [N, M, 1]
  return np.mean(inside, axis=(1, 2))  # [N]


def predict_means(model, tasks: tasks_lib.RegressionTasks, chunk_size: int, jit_compile: bool
                   ) -> np.ndarray:
  """The deterministic path's predictions [N, 1, M, 1] (no randomness, no seed)."""
  predict = make_means_step(model, jit_compile)
  num_tasks = tasks.tr_input.shape[0]
  return np.concatenate([
      np.asarray(predict(tasks_lib.RegressionTasks(*(a[s:s + chunk_size] for a in tasks))),
                 np.float64) for s in range(0, num_tasks, chunk_size)], axis=0)
