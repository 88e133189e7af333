"""The one fit loop: meta-train a RunState's learner, meta-validate, keep the best.

Every learner of the project is trained by `fit` (classification's LEO and
Meta-SGD, regression's LEO and MAML): steps of the compiled outer step
(outer.step or outer.distribute) on the batches a problem supplies, summaries
and progress every `summary_steps`, and every `checkpoint_steps` a
meta-validation (the problem's own scoring, judged by the learner's Score), the
best checkpoint replaced atomically when it improves, the latest checkpoint,
and early stopping after `early_stopping_patience` evaluations without
improvement. The step's stateless seed is seeds.step_seed(seed, step).

SIGTERM (what a cluster scheduler sends before it preempts a job) and SIGINT
(Ctrl-C) stop the loop after the step in progress: it writes the latest
checkpoint at that step and raises Interrupted, so the same command started
again continues from there and ends with the weights of an uninterrupted run.

A caller that watches the meta-validations (leo_tf.search: a trial reports
them to its pruner) opens `validation_listener(listener)` around the call: fit
calls listener(step, score) after each meta-validation, once the best and latest
checkpoints and the summaries are written, and an exception the listener raises
(a pruned trial) stops training and passes through fit to its caller.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import signal
import threading
import time
from typing import Callable, Iterable, Iterator, Mapping, NamedTuple

import numpy as np
import tensorflow as tf

from leo_tf.core import seeds
from leo_tf.core import statistics
from leo_tf.core.config import OuterConfig
from leo_tf.outer import progress as progress_lib
from leo_tf.outer.checkpoints import RunState


class Validation(NamedTuple):
  """What a problem's meta-validation returns to the loop."""

  scores: np.ndarray  # [num_tasks] per-task score (accuracy, MSE, ...)
  scalars: dict[str, float]  # further summaries, e.g. {"coverage90": 0.87}
  text: str  # appended to the progress message, e.g. ", 90% band coverage 87.0%"


@dataclasses.dataclass(frozen=True)
class FitSpec:
  """How one run talks to a person: its name, its settings in words, its progress text."""

  intro: str  # e.g. "5-way 1-shot on synthetic/center (...), meta-batch 12."
  describe: Callable[[Mapping[str, float]], str]  # step means -> "loss 0.52 acc 81.0%"
  nan_hint: str  # what to change when meta-batches fall back on NaN
  name: str = ""  # messages start with "[name] " when given (several models per run)
  summary_steps: int = 10  # summaries and progress every so many steps
  progress: bool = True  # the progress bar on stderr


@dataclasses.dataclass(frozen=True)
class FitReport:
  """What a fit did."""

  final_step: int
  steps_run: int
  resumed: bool
  stopped_early: bool
  nan_fallbacks: int
  train_seconds: float  # wall time of this call's steps and validations
  train_cpu_seconds: float  # CPU seconds of all the process's threads meanwhile
  weights_checksum: float  # sum of |w| over the meta-variables


class Interrupted(Exception):
  """Training stopped on a signal, after writing a checkpoint at `step`."""

  def __init__(self, signum: int, step: int, checkpoint: str):
    self.signum, self.step, self.checkpoint = signum, step, checkpoint
    name = signal.Signals(signum).name
    super().__init__(f"stopped by {name} at step {step}; the checkpoint {checkpoint} holds "
                     "everything to continue: run the same command again.")


@contextlib.contextmanager
def _stop_requests() -> Iterator[list[int]]:
  """While open, SIGTERM and SIGINT are recorded in the yielded list instead of acting.

  Signals can only be caught in the main thread; elsewhere (a test runner's
  worker thread) the list stays empty and the signals act as usual.
  """
  requested: list[int] = []
  previous = {}
  if threading.current_thread() is threading.main_thread():
    for signum in (signal.SIGTERM, signal.SIGINT):
      previous[signum] = signal.signal(signum, lambda number, frame: requested.append(number))
  try:
    yield requested
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)


_VALIDATION_LISTENER: contextvars.ContextVar[Callable[[int, float], None] | None] = (
    contextvars.ContextVar("validation_listener", default=None))


@contextlib.contextmanager
def validation_listener(listener: Callable[[int, float], None]) -> Iterator[None]:
  """While open, every fit calls listener(step, score) after each meta-validation.

  score is the validation's mean (accuracy or MSE, the learner's Score). The
  call comes after the best and latest checkpoints are written and the
  summaries flushed, so a listener that raises (to stop a trailing trial)
  leaves a run folder that the same command resumes.
  """
  token = _VALIDATION_LISTENER.set(listener)
  try:
    yield
  finally:
    _VALIDATION_LISTENER.reset(token)


def weights_checksum(variables) -> float:
  """sum |w| over the variables in float64: equal for two runs with identical weights."""
  return float(sum(tf.reduce_sum(tf.abs(tf.cast(v, tf.float64))).numpy() for v in variables))


def fit(run: RunState, train_step, batches: Callable[[int], Iterable],
        validate: Callable[[], Validation], config: OuterConfig, spec: FitSpec) -> FitReport:
  """Meta-trains run.model from its latest checkpoint to config.num_steps_limit.

  Args:
    run: the learner, optimiser and counters (restored here from the latest
      checkpoint when there is one).
    train_step: (batch, seed int32 [2]) -> step metrics (outer.step.StepMetrics).
    batches: start_step -> the batches of steps start_step .. num_steps_limit - 1.
    validate: meta-validates run.model as it is now.
    config: the outer loop (steps, checkpoint_steps, patience, seed).
    spec: names and texts of the run.

  Returns:
    A FitReport. The best checkpoint exists afterwards (an untrained learner's
    when num_steps_limit is 0).
  """
  o = config
  score = run.model.score
  prefix = f"[{spec.name}] " if spec.name else ""
  resumed = run.restore_latest()
  start = int(run.step.numpy())
  if run.chief:
    train_writer = tf.summary.create_file_writer(os.path.join(run.path, "train"))
    valid_writer = tf.summary.create_file_writer(os.path.join(run.path, "valid"))
  else:
    train_writer = valid_writer = tf.summary.create_noop_writer()
  progress = progress_lib.Progress(o.num_steps_limit, start, o.metatrain_batch_size,
                                   spec.progress and run.chief)
  progress.message(f"{prefix}{'Resuming at' if resumed else 'Starting'} step {start} of "
                   f"{o.num_steps_limit}: {spec.intro}")

  def validation(step: int) -> tuple[bool, float]:
    """Meta-validates, keeps the best; returns whether to stop early, and the mean score."""
    result = validate()
    mean, ci, _ = statistics.confidence_interval(result.scores)
    improved = score.improves(mean, float(run.best.numpy()))
    if improved:
      run.best.assign(mean)
      run.evals_without_improvement.assign(0)
      run.save_best(mean)
    else:
      run.evals_without_improvement.assign_add(1)
    progress_lib.write_summaries(valid_writer, step, {score.name: mean,
                                                      f"{score.name}_ci95": ci, **result.scalars})
    progress.message(f"{prefix}step {step}: meta-valid {score.label} {score.format(mean, ci)} "
                     f"over {result.scores.size} tasks{result.text}"
                     f"{' (best so far)' if improved else ''}")
    patience = o.early_stopping_patience
    return bool(patience) and int(run.evals_without_improvement.numpy()) >= patience, mean

  t0, cpu0 = time.time(), time.process_time()
  pending: list[dict[str, tf.Tensor]] = []
  fallbacks = 0
  warned_nan = False
  step = start
  stopped_early = False
  rates = run.model.learned_rates
  listener = _VALIDATION_LISTENER.get()
  with _stop_requests() as stop_requests:
    if step < o.num_steps_limit:
      for batch in batches(step):
        pending.append(train_step(batch, seeds.step_seed(o.seed, step)))
        step += 1
        run.step.assign(step)
        if step == start + 1:
          progress.restart_clock(step)  # the first step compiled: leave it out of the ETA
        if step % spec.summary_steps == 0 or step == o.num_steps_limit:
          means = {name: float(np.mean([m[name].numpy() for m in pending])) for name in pending[0]}
          interval = len(pending)
          num_fallbacks = int(round(means["fallback"] * interval))
          fallbacks += num_fallbacks
          means["fallback"] = float(num_fallbacks)  # count in the interval
          for name, rate in rates.items():
            means[f"{name}_mean"] = float(tf.reduce_mean(rate).numpy())
          progress_lib.write_summaries(train_writer, step, means)
          with train_writer.as_default(step=step):
            for name, rate in rates.items():
              tf.summary.histogram(name, rate)
          pending.clear()
          text = spec.describe(means)
          if num_fallbacks:
            text += f" NaN fallback {num_fallbacks}/{interval}"
            if not warned_nan:
              warned_nan = True
              progress.message(
                  f"{prefix}Step {step}: a meta-batch had a NaN or Inf loss or gradient; its "
                  f"update was the L2 fallback's. If this goes on, training has stalled: "
                  f"{spec.nan_hint}.")
          progress.update(step, text)
        checkpoint_step = step % o.checkpoint_steps == 0 or step == o.num_steps_limit
        if checkpoint_step:
          stopped_early, mean = validation(step)
          run.save_latest()
          if listener is not None:  # may raise to stop training (validation_listener)
            train_writer.flush()
            valid_writer.flush()
            listener(step, mean)
          if stopped_early:
            progress.message(f"{prefix}Early stopping at step {step}: no better meta-validation "
                             f"{score.label} in {o.early_stopping_patience} evaluations.")
            break
        if stop_requests:  # SIGTERM or SIGINT arrived during this step
          checkpoint = run.manager.latest_checkpoint if checkpoint_step else run.save_latest()
          train_writer.flush()
          valid_writer.flush()
          interrupted = Interrupted(stop_requests[0], step, checkpoint)
          progress.message(f"{prefix}Training {interrupted}")
          raise interrupted
  seconds, cpu_seconds = time.time() - t0, time.process_time() - cpu0
  train_writer.flush()
  valid_writer.flush()
  if not run.has_best:
    validation(step)  # e.g. num_steps_limit = 0: the initial model is the best there is
  checksum = weights_checksum(run.model.meta_variables)
  print(f"{prefix}Meta-trained weights at step {step}: sum of |w| over the variables, a "
        f"checksum that runs ending with the same weights share: {checksum:.12g}", flush=True)
  return FitReport(final_step=step, steps_run=step - start, resumed=resumed,
                   stopped_early=stopped_early, nan_fallbacks=fallbacks, train_seconds=seconds,
                   train_cpu_seconds=cpu_seconds, weights_checksum=checksum)
