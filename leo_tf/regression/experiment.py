"""Few-shot regression on sines and lines (section 4.1): meta-train LEO and MAML, compare.

`train(config)` meta-trains LEO and/or MAML on the same stream of training
tasks with the one fit loop (outer.fit; each resuming from its own last
checkpoint), keeps each model's best checkpoint by meta-validation MSE, then
`evaluate(config)` scores the best checkpoints on the same held-out tasks
(regression.evaluation) and draws figure 3 (regression.figure).

Layout of `checkpoint_path`:
  config.json            the run's configuration, "problem": "regression"
  leo/, maml/            per model, a run folder (outer.checkpoints): ckpt/,
                         best/, train/ and valid/
  results_test.json      both models on the same held-out tasks, 95% intervals
  figure3.png            held-out tasks: truth, the five points, sampled functions
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import numpy as np
import tensorflow as tf

from leo_tf.core import statistics
from leo_tf.core.config import OuterConfig, check_at_least, check_positive
from leo_tf.data import atomic
from leo_tf.outer import checkpoints
from leo_tf.outer import fit as fit_lib
from leo_tf.outer import lock
from leo_tf.outer import step as outer_step
from leo_tf.regression import evaluation
from leo_tf.regression import figure as figure_lib
from leo_tf.regression import leo
from leo_tf.regression import maml as maml_lib
from leo_tf.regression import tasks as tasks_lib

PROBLEM = "regression"
MODELS = ("leo", "maml")
FIGURE_FILE = "figure3.png"
RESULTS_FILE = "results_{split}.json"


@dataclasses.dataclass(frozen=True)
class RegressionRunConfig:
  """Everything one regression run needs."""

  model: leo.RegressionConfig = leo.RegressionConfig()
  maml: maml_lib.MAMLConfig = maml_lib.MAMLConfig()
  tasks: tasks_lib.SinusoidConfig = tasks_lib.SinusoidConfig()
  outer: OuterConfig = OuterConfig(metatrain_batch_size=25, num_steps_limit=20_000,
                                   outer_lr=1e-3, gradient_threshold=0.0,
                                   gradient_norm_threshold=1.0, checkpoint_path="runs/sines",
                                   checkpoint_steps=2000, num_metavalid_tasks=200,
                                   num_metatest_tasks=1000, metavalid_batch_size=50,
                                   metatest_batch_size=20)  # LEO's outer loop, and the run's
  maml_steps_ratio: float = 1.0  # MAML's meta-training steps per LEO step (num_steps_limit)
  maml_outer_lr: float = 1e-3  # MAML's Adam learning rate
  maml_batch_size: int = 25  # MAML's tasks per meta-training step
  models: tuple[str, ...] = MODELS  # which models to train and evaluate
  num_eval_points: int = 100  # query grid per evaluation task
  num_eval_samples: int = 100  # LEO's sampled functions per evaluation task
  num_valid_samples: int = 20  # LEO's sampled functions per meta-validation task
  eval_seed: int = 1  # seeds the held-out (validation, test, figure) tasks
  summary_steps: int = 50  # TensorBoard and progress every so many steps
  progress: bool = True  # progress bar on stderr

  # Settings that, changed between a run and its resumption, make the checkpoints
  # meaningless or the resumed run different from an uninterrupted one.
  RESUME_FIELDS = {
      "model": [f.name for f in dataclasses.fields(leo.RegressionConfig)],
      "maml": [f.name for f in dataclasses.fields(maml_lib.MAMLConfig)],
      "tasks": [f.name for f in dataclasses.fields(tasks_lib.SinusoidConfig)],
      "outer": ["metatrain_batch_size", "outer_lr", "gradient_threshold", "gradient_norm_threshold",
                "seed", "jit_compile"],
      "": ["maml_outer_lr", "maml_batch_size", "eval_seed"],
  }

  def __post_init__(self):
    if not self.models or any(m not in MODELS for m in self.models):
      raise ValueError(f"models must be a non-empty subset of {MODELS}, got {self.models!r}.")
    check_at_least(self, 0, "eval_seed")
    check_positive(self, "maml_steps_ratio")
    check_at_least(self, 1, "num_eval_points", "num_eval_samples", "summary_steps",
                   "maml_batch_size")
    check_at_least(self, 2, "num_valid_samples")
    check_positive(self, "maml_outer_lr")
    if self.eval_seed == self.outer.seed:
      raise ValueError(f"eval_seed ({self.eval_seed}) must differ from the training seed "
                       f"({self.outer.seed}): held-out tasks come from a separate seed.")

  @property
  def maml_num_steps_limit(self) -> int:
    """MAML's steps: maml_steps_ratio x num_steps_limit, so one limit shortens both runs."""
    return int(round(self.maml_steps_ratio * self.outer.num_steps_limit))

  def outer_config(self, name: str) -> OuterConfig:
    """The outer loop of model `name`: LEO's as given; MAML's with its own steps, rate, batch."""
    if name == "leo":
      return self.outer
    return dataclasses.replace(self.outer, num_steps_limit=self.maml_num_steps_limit,
                               outer_lr=self.maml_outer_lr,
                               metatrain_batch_size=self.maml_batch_size)

  def to_dict(self) -> dict[str, Any]:
    return {"problem": PROBLEM, **dataclasses.asdict(self)}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "RegressionRunConfig":
    """The inverse of to_dict (JSON lists back to tuples)."""
    d = {k: v for k, v in d.items() if k != "problem"}
    if "maml_num_steps_limit" in d:  # a config.json of before maml_steps_ratio
      d["maml_steps_ratio"] = d.pop("maml_num_steps_limit") / max(d["outer"]["num_steps_limit"], 1)

    def tuples(group: dict[str, Any]) -> dict[str, Any]:
      return {k: tuple(v) if isinstance(v, list) else v for k, v in group.items()}

    return cls(model=leo.RegressionConfig(**tuples(d.pop("model"))),
               maml=maml_lib.MAMLConfig(**tuples(d.pop("maml"))),
               tasks=tasks_lib.SinusoidConfig(**tuples(d.pop("tasks"))),
               outer=OuterConfig(**d.pop("outer")), **tuples(d))


def build_learner(name: str, config: RegressionRunConfig):
  """A fresh LEORegression ("leo") or MAML ("maml"), initialised from the run seed."""
  if name == "leo":
    return leo.LEORegression(config.model, seed=config.outer.seed)
  if name == "maml":
    return maml_lib.MAML(config.maml, seed=config.outer.seed)
  raise ValueError(f"model name must be one of {MODELS}, got {name!r}.")


def _train_model(name: str, config: RegressionRunConfig) -> fit_lib.FitReport:
  """Meta-trains one model of the run to its num_steps_limit (outer.fit)."""
  o = config.outer_config(name)
  run = checkpoints.RunState(os.path.join(config.outer.checkpoint_path, name),
                             lambda: build_learner(name, config), o)
  train_step = outer_step.make_train_step(run.model, run.optimizer, o)
  num_samples = config.num_valid_samples if name == "leo" else 1
  predict = evaluation.make_predict_step(run.model, num_samples, o.jit_compile)
  val_tasks, _ = tasks_lib.heldout_tasks(config.eval_seed, "val", o.num_metavalid_tasks,
                                         config.num_eval_points, config.tasks)

  def batches(start: int):
    for step in range(start, o.num_steps_limit):
      yield tasks_lib.sample_tasks(tasks_lib.task_rng(o.seed, "train", step),
                                   o.metatrain_batch_size, config.tasks)[0]

  def validate() -> fit_lib.Validation:
    samples = evaluation.predict_tasks(predict, val_tasks, o.metavalid_batch_size,
                                       config.eval_seed)
    mse = evaluation.mse_of_mean(samples, val_tasks.val_target)
    if name != "leo":
      return fit_lib.Validation(mse, {}, "")
    coverage = float(np.mean(evaluation.band_coverage(samples, val_tasks.val_target)))
    return fit_lib.Validation(mse, {"coverage90": coverage},
                              f", 90% band coverage {100 * coverage:.1f}%")

  spec = fit_lib.FitSpec(
      intro=(f"{config.tasks.num_tr_examples}-shot regression on sines and lines, meta-batch "
             f"{o.metatrain_batch_size}."),
      describe=lambda m: f"loss {m['loss']:.3f} query MSE {m['val_loss']:.3f}",
      nan_hint="lower --inner_lr_init or --regression_max_params_stddev",
      name=name, summary_steps=config.summary_steps, progress=config.progress)
  return fit_lib.fit(run, train_step, batches, validate, o, spec)


def train(config: RegressionRunConfig) -> dict[str, Any]:
  """Meta-trains config.models in turn, then evaluates their best checkpoints.

  Returns:
    evaluate()'s results, plus "training": per model, the wall and CPU time of
    this call's training (seconds), the steps run and the NaN fallbacks.
  """
  with lock.RunLock(config.outer.checkpoint_path, "training"):  # one writer per run folder
    checkpoints.check_resume_config(config.outer.checkpoint_path, config)
    training = {}
    for name in config.models:
      report = _train_model(name, config)
      training[name] = {"train_seconds": report.train_seconds,
                        "train_cpu_seconds": report.train_cpu_seconds,
                        "steps_run": report.steps_run, "final_step": report.final_step,
                        "nan_fallbacks": report.nan_fallbacks,
                        "stopped_early": report.stopped_early}
    results = evaluate(config)
    results["training"] = training
    atomic.write_json_atomically(results["results_file"], results)
  print(f"Checkpoints: {config.outer.checkpoint_path}/<model>/ckpt\nTensorBoard: tensorboard "
        f"--logdir {config.outer.checkpoint_path}\nResults: {results['results_file']}\n"
        f"Figure: {results.get('figure')}", flush=True)
  return results


def evaluate(config: RegressionRunConfig, split: str = "test", figure: bool = True
             ) -> dict[str, Any]:
  """Scores the best checkpoints of config.models on the same held-out tasks.

  Returns and writes (results_<split>.json) per model the MSE of the mean
  prediction (and LEO's 90% band coverage and deterministic-path MSE) with
  95% intervals, and for LEO against MAML the paired per-task difference and
  the MSE ratio. Draws figure3.png when `figure` (and LEO was evaluated).
  """
  with lock.RunLock(config.outer.checkpoint_path, f"evaluation on {split}", create=False):
    return _evaluate(config, split, figure)


def _evaluate(config: RegressionRunConfig, split: str, figure: bool) -> dict[str, Any]:
  """evaluate() once the run folder is locked."""
  o = config.outer
  tasks, params = tasks_lib.heldout_tasks(config.eval_seed, split, o.num_metatest_tasks,
                                         config.num_eval_points, config.tasks)
  results: dict[str, Any] = {
      "split": split, "num_tasks": o.num_metatest_tasks, "num_eval_points": config.num_eval_points,
      "num_eval_samples": config.num_eval_samples, "eval_seed": config.eval_seed,
      "query_points": f"{config.num_eval_points} evenly spaced x in "
                      f"[{config.tasks.input_range[0]}, {config.tasks.input_range[1]}]",
      "num_tr_examples": config.tasks.num_tr_examples,
      "mean_prediction": "LEO: average of the sampled functions; MAML: its prediction",
  }
  per_task: dict[str, np.ndarray] = {}
  predictions: dict[str, np.ndarray] = {}
  steps: dict[str, int] = {}
  for name in config.models:
    model = build_learner(name, config)
    prefix, record = checkpoints.restore_best(
        model, os.path.join(o.checkpoint_path, name),
        os.path.join(o.checkpoint_path, checkpoints.CONFIG_FILE))
    num_samples = config.num_eval_samples if name == "leo" else 1
    predict = evaluation.make_predict_step(model, num_samples, o.jit_compile)
    t0 = time.time()
    samples = evaluation.predict_tasks(predict, tasks, o.metatest_batch_size, config.eval_seed)
    seconds = time.time() - t0
    mse = evaluation.mse_of_mean(samples, tasks.val_target)
    entry = {"mse": statistics.interval_dict(mse), "checkpoint": prefix, "checkpoint_step": record["step"],
             "metavalid_mse": record["metavalid_mse"], "eval_seconds": seconds,
             "nonfinite_tasks": int(np.sum(~np.isfinite(mse)))}
    if name == "leo":
      entry["coverage90"] = statistics.interval_dict(
          evaluation.band_coverage(samples, tasks.val_target))
      deterministic = evaluation.predict_means(model, tasks, o.metatest_batch_size,
                                               o.jit_compile)
      entry["mse_means"] = statistics.interval_dict(
          evaluation.mse_of_mean(deterministic, tasks.val_target))
    results[name] = entry
    per_task[name] = mse
    predictions[name] = samples
    latest = tf.train.latest_checkpoint(os.path.join(o.checkpoint_path, name, "ckpt"))
    entry["steps_trained"] = checkpoints.checkpoint_step(latest) if latest else 0
    steps[name] = entry["steps_trained"]
    print(f"[{name}] meta-{split} MSE {entry['mse']['mean']:.4f} +- {entry['mse']['ci95']:.4f} "
          f"(95% CI) over {mse.size} tasks, after {entry['steps_trained']} meta-training steps "
          f"(best checkpoint: step {record['step']})"
          + (f"; 90% band coverage {100 * entry['coverage90']['mean']:.1f}% +- "
             f"{100 * entry['coverage90']['ci95']:.1f}%" if name == "leo" else ""), flush=True)
  if "leo" in per_task and "maml" in per_task:
    results["leo_vs_maml"] = {
        "mse_ratio": results["leo"]["mse"]["mean"] / results["maml"]["mse"]["mean"],
        "paired_difference": statistics.interval_dict(per_task["leo"] - per_task["maml"]),
        "intervals_overlap": bool(
            results["leo"]["mse"]["mean"] + results["leo"]["mse"]["ci95"]
            >= results["maml"]["mse"]["mean"] - results["maml"]["mse"]["ci95"]),
    }
  if figure and "leo" in predictions:
    path = os.path.join(o.checkpoint_path, FIGURE_FILE)
    results["figure"] = path
    results["figure_tasks"] = figure_lib.draw_figure(path, tasks, params, predictions,
                                                     config.tasks, steps)
  results_file = os.path.join(o.checkpoint_path, RESULTS_FILE.format(split=split))
  results["results_file"] = results_file
  atomic.write_json_atomically(results_file, results)
  return results
