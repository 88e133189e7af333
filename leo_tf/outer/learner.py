"""The meta-learner contract: what the one outer loop needs of any model.

LEO, Meta-SGD and the nearest class mean (classification), LEO for regression
and MAML implement it; outer.step, outer.distribute, outer.checkpoints and
outer.fit use nothing else, so a new meta-learner is one new module:

    score                 how its evaluations are scored (Score below)
    meta_variables        everything the outer loop trains, in a fixed order
    regularized_kernels   what the L2 term and the NaN/Inf fallback act on
    draw_noise(batch, seed)
                          every random draw of one meta-training pass, from an
                          int32 [2] stateless seed (a nest of tensors; () for a
                          learner that draws nothing). Drawn outside the
                          XLA-compiled step: see outer.step.
    __call__(batch, *, training, noise)
                          the forward pass; `training` is explicit and checked
    meta_loss(outputs)    equations 6-7 (objective.MetaLoss)
    step_scalars(outputs) the learner's own scalars of a meta-training step
                          beside MetaLoss's terms (e.g. the query accuracy)
    learned_rates         its learned inner learning rates by name, logged as
                          means and histograms ({} if none)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import tensorflow as tf

from leo_tf.core import objective


@dataclasses.dataclass(frozen=True)
class Score:
  """How an evaluation is scored: its name (in files and summaries) and its direction."""

  name: str  # "accuracy" or "mse": best/best.json says metavalid_<name>
  higher_is_better: bool
  label: str  # how messages call it, e.g. "accuracy", "MSE"
  percent: bool  # print as a percentage

  @property
  def worst(self) -> float:
    """The value every finite score improves on (the best score before any evaluation)."""
    return -math.inf if self.higher_is_better else math.inf

  def improves(self, value: float, best: float) -> bool:
    """Whether `value` beats `best`; a NaN or infinite value never does."""
    if not math.isfinite(value):
      return False
    return value > best if self.higher_is_better else value < best

  def format(self, mean: float, ci95: float) -> str:
    """'99.46% +- 0.05%' for accuracies, '1.0226 +- 0.2123' for MSEs."""
    if self.percent:
      return f"{100 * mean:.2f}% +- {100 * ci95:.2f}%"
    return f"{mean:.4f} +- {ci95:.4f}"


ACCURACY = Score(name="accuracy", higher_is_better=True, label="accuracy", percent=True)
MSE = Score(name="mse", higher_is_better=False, label="MSE", percent=False)


@runtime_checkable
class MetaLearner(Protocol):
  """The contract of outer.fit (see the module docstring)."""

  score: Score

  @property
  def meta_variables(self) -> Sequence[tf.Variable]: ...

  @property
  def regularized_kernels(self) -> Sequence[tf.Variable]: ...

  @property
  def learned_rates(self) -> Mapping[str, tf.Variable]: ...

  def draw_noise(self, batch: Any, seed: tf.Tensor) -> Any: ...

  def __call__(self, batch: Any, *, training: bool, noise: Any = None) -> Any: ...

  def meta_loss(self, outputs: Any) -> objective.MetaLoss: ...

  def step_scalars(self, outputs: Any) -> dict[str, tf.Tensor]: ...


def check_training_flag(training) -> bool:
  """The `training` argument of every stochastic call: an explicit bool, or a ValueError."""
  if training is None or not isinstance(training, bool):
    raise ValueError(f"Pass training=True or training=False explicitly, got {training!r}.")
  return training
