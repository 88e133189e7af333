"""Few-shot 1-D regression on sines and lines (section 4.1 and appendix A).

Each task is a function on [-5, 5]:

  sine (half the tasks):  y = A sin(x - phi),  A ~ U[0.1, 5],  phi ~ U[0, pi]
  line (the other half):  y = a x + b,         a, b ~ U[-3, 3]

observed through K = 5 support points with targets y + eps, eps ~ N(0, 0.3^2),
inputs x ~ U[-5, 5]. A task is its parameters (`TaskParams`); `sample_tasks`
draws a batch of tasks with their support and query points at once, vectorised
with numpy. Every draw takes an explicit numpy Generator, and `task_rng` makes
the Generator of (seed, stream, index) counter-based, as the classification
episodes do: meta-training batch s comes from stream "train", index s, so a
resumed run sees the same tasks; meta-validation and meta-test tasks come from
their own streams of a separate evaluation seed, so they never coincide with
training tasks and do not depend on the evaluation chunk size.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import numpy as np

# Streams of task_rng: one per use, so no two uses share random numbers.
STREAMS = {"train": 0, "val": 1, "test": 2, "figure": 3}


@dataclasses.dataclass(frozen=True)
class SinusoidConfig:
  """The task distribution; the defaults are appendix A's."""

  num_tr_examples: int = 5  # K, support points per task
  num_val_examples: int = 20  # query points per task in meta-training
  input_range: tuple[float, float] = (-5.0, 5.0)  # x ~ U[input_range]
  amplitude_range: tuple[float, float] = (0.1, 5.0)  # sine amplitude A
  phase_range: tuple[float, float] = (0.0, math.pi)  # sine phase phi
  slope_range: tuple[float, float] = (-3.0, 3.0)  # line slope a
  intercept_range: tuple[float, float] = (-3.0, 3.0)  # line intercept b
  sine_fraction: float = 0.5  # probability that a task is a sine
  noise_stddev: float = 0.3  # standard deviation of the Gaussian noise on targets

  def __post_init__(self):
    if self.num_tr_examples < 1:
      raise ValueError(f"num_tr_examples (K) must be >= 1, got {self.num_tr_examples}.")
    if self.num_val_examples < 1:
      raise ValueError(f"num_val_examples must be >= 1, got {self.num_val_examples}.")
    for name in ("input_range", "amplitude_range", "phase_range", "slope_range",
                 "intercept_range"):
      low, high = getattr(self, name)
      if not low <= high:
        raise ValueError(f"{name} must be (low, high) with low <= high, got {(low, high)}.")
    if not 0.0 <= self.sine_fraction <= 1.0:
      raise ValueError(f"sine_fraction must be in [0, 1], got {self.sine_fraction}.")
    if self.noise_stddev < 0:
      raise ValueError(f"noise_stddev must be >= 0, got {self.noise_stddev}.")


class TaskParams(NamedTuple):
  """The functions of B tasks; a line's sine fields and a sine's line fields are 0."""

  is_sine: np.ndarray  # bool [B]
  amplitude: np.ndarray  # float64 [B], A
  phase: np.ndarray  # float64 [B], phi
  slope: np.ndarray  # float64 [B], a
  intercept: np.ndarray  # float64 [B], b


class RegressionTasks(NamedTuple):
  """B regression tasks: support and query points, noisy and noiseless targets."""

  tr_input: np.ndarray  # float32 [B, K, 1], support x
  tr_output: np.ndarray  # float32 [B, K, 1], support y + noise
  val_input: np.ndarray  # float32 [B, M, 1], query x
  val_output: np.ndarray  # float32 [B, M, 1], query y + noise (what training fits)
  val_target: np.ndarray  # float32 [B, M, 1], query y without noise (what evaluation scores)


def task_rng(seed: int, stream: str, index: int) -> np.random.Generator:
  """The Generator of draw `index` of `stream` ("train", "val", "test", "figure")."""
  if stream not in STREAMS:
    raise ValueError(f"stream must be one of {sorted(STREAMS)}, got {stream!r}.")
  if seed < 0 or index < 0:
    raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}.")
  return np.random.default_rng([seed, STREAMS[stream], index])


def sample_params(rng: np.random.Generator, batch_size: int, config: SinusoidConfig
                  ) -> TaskParams:
  """Draws the functions of `batch_size` tasks (half sines, half lines in expectation)."""
  if batch_size < 0:
    raise ValueError(f"batch_size must be >= 0, got {batch_size}.")
  is_sine = rng.random(batch_size) < config.sine_fraction  # [B]
  amplitude = rng.uniform(*config.amplitude_range, size=batch_size)  # [B]
  phase = rng.uniform(*config.phase_range, size=batch_size)  # [B]
  slope = rng.uniform(*config.slope_range, size=batch_size)  # [B]
  intercept = rng.uniform(*config.intercept_range, size=batch_size)  # [B]
  # Both families are drawn for every task (a fixed number of draws per task);
  # the unused one is zeroed.
  return TaskParams(is_sine=is_sine, amplitude=np.where(is_sine, amplitude, 0.0),
                    phase=np.where(is_sine, phase, 0.0), slope=np.where(is_sine, 0.0, slope),
                    intercept=np.where(is_sine, 0.0, intercept))


def evaluate(params: TaskParams, inputs: np.ndarray) -> np.ndarray:
  """The noiseless functions at `inputs`: [B, M, 1] (or [B, M]) -> same shape, float64.

  Sine tasks: A sin(x - phi); line tasks: a x + b.
  """
  inputs = np.asarray(inputs, np.float64)
  if inputs.ndim not in (2, 3) or inputs.shape[0] != params.is_sine.shape[0]:
    raise ValueError(f"inputs must be [B, M] or [B, M, 1] with B = {params.is_sine.shape[0]} "
                     f"tasks, got shape {inputs.shape}.")
  extra = (None,) * (inputs.ndim - 1)  # [B] -> [B, 1] or [B, 1, 1]
  index = (slice(None), *extra)
  sine = params.amplitude[index] * np.sin(inputs - params.phase[index])
  line = params.slope[index] * inputs + params.intercept[index]
  return np.where(params.is_sine[index], sine, line)


def sample_tasks(rng: np.random.Generator, batch_size: int, config: SinusoidConfig, *,
                 val_input: np.ndarray | None = None) -> tuple[RegressionTasks, TaskParams]:
  """Draws `batch_size` tasks with K support and M query points each.

  Args:
    rng: the Generator to draw from (see task_rng).
    batch_size: B.
    config: the task distribution.
    val_input: fixed query inputs [M] for every task (e.g. a grid for
      evaluation); None draws M = config.num_val_examples uniform ones per task.

  Returns:
    (RegressionTasks of float32 arrays, the tasks' TaskParams).
  """
  params = sample_params(rng, batch_size, config)
  k = config.num_tr_examples
  tr_input = rng.uniform(*config.input_range, size=(batch_size, k, 1))  # [B, K, 1]
  if val_input is None:
    val_x = rng.uniform(*config.input_range, size=(batch_size, config.num_val_examples, 1))
  else:
    val_input = np.asarray(val_input, np.float64)
    if val_input.ndim != 1:
      raise ValueError(f"val_input must be a 1-D array of M query inputs, got shape "
                       f"{val_input.shape}.")
    val_x = np.broadcast_to(val_input[None, :, None], (batch_size, val_input.size, 1))  # [B, M, 1]
  tr_noise = config.noise_stddev * rng.standard_normal(tr_input.shape)  # [B, K, 1]
  val_noise = config.noise_stddev * rng.standard_normal(val_x.shape)  # [B, M, 1]
  val_clean = evaluate(params, val_x)  # [B, M, 1]
  tasks = RegressionTasks(
      tr_input=tr_input.astype(np.float32),
      tr_output=(evaluate(params, tr_input) + tr_noise).astype(np.float32),
      val_input=val_x.astype(np.float32),
      val_output=(val_clean + val_noise).astype(np.float32),
      val_target=val_clean.astype(np.float32))
  return tasks, params


def eval_grid(num_points: int, config: SinusoidConfig) -> np.ndarray:
  """num_points evenly spaced query inputs over the input range (both ends included): [M]."""
  if num_points < 1:
    raise ValueError(f"num_points must be >= 1, got {num_points}.")
  return np.linspace(*config.input_range, num_points)


def heldout_tasks(seed: int, stream: str, num_tasks: int, num_points: int,
                  config: SinusoidConfig) -> tuple[RegressionTasks, TaskParams]:
  """The evaluation set of `stream`: num_tasks tasks queried on the evaluation grid.

  Drawn in one piece from task_rng(seed, stream, 0), so the set does not depend
  on how it is later chunked.
  """
  return sample_tasks(task_rng(seed, stream, 0), num_tasks, config,
                      val_input=eval_grid(num_points, config))


def line_fit_rms(tasks: RegressionTasks) -> np.ndarray:
  """RMS residual of the least-squares line through each task's support points: [B].

  A sine task whose five noisy points a line fits about as well as the noise
  allows (RMS <= noise) is ambiguous: both families explain the data.
  """
  x = tasks.tr_input[..., 0].astype(np.float64)  # [B, K]
  y = tasks.tr_output[..., 0].astype(np.float64)  # [B, K]
  design = np.stack([x, np.ones_like(x)], axis=-1)  # [B, K, 2]
  # Per-task normal equations: (X^T X)^-1 X^T y, [B, 2, 2] and [B, 2].
  gram = np.einsum("bki,bkj->bij", design, design)  # [B, 2, 2]
  rhs = np.einsum("bki,bk->bi", design, y)  # [B, 2]
  solution = np.linalg.solve(gram, rhs[..., None])[..., 0]  # [B, 2]
  fitted = np.einsum("bki,bi->bk", design, solution)  # [B, K]
  return np.sqrt(np.mean((fitted - y) ** 2, axis=1))  # [B]
