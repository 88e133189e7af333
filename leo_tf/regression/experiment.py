"""Meta-training, evaluation, figure and export for sines and lines (section 4.1).

`train(config)` meta-trains LEO and/or MAML on the same stream of training
tasks (resuming from the last checkpoint of each), keeps each model's best
checkpoint by meta-validation MSE, then `evaluate(config)` scores the best
checkpoints on the same held-out tasks and draws the figure. The machinery is
the classification trainer's and outer loop's: tf.train.CheckpointManager,
the atomically replaced best pointer, the progress bar, TensorBoard summaries,
atomic JSON, confidence intervals, the NaN/Inf fallback and the clipping.

Layout of `checkpoint_path`:
  config.json            the run's configuration, "problem": "regression"
  leo/, maml/            per model: ckpt/ (latest), best/ (best.json + files),
                         train/ and valid/ (TensorBoard)
  results_test.json      both models on the same held-out tasks, 95% intervals
  figure3.png            held-out tasks: truth, the five points, sampled functions

Evaluation, on `num_metatest_tasks` tasks drawn from the evaluation seed
(never the training one), each queried on `num_eval_points` evenly spaced
inputs over [-5, 5] (both ends included):
  mse       per task, the mean over the grid of (mean prediction - f(x))^2, f the
            noiseless function. LEO's mean prediction is the average of its
            `num_eval_samples` sampled functions (codes and parameters sampled,
            as the paper evaluates); MAML's is its one prediction.
  coverage  LEO only: per task, the fraction of grid points where f(x) lies
            within the 5th-95th percentile of the sampled predictions (the
            central 90% band).
  Both are reported as the mean over tasks with 1.96 sd / sqrt(n). LEO's
  deterministic path (codes and parameters at their means) is reported too,
  as mse_means.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from leo_tf.data import embeddings
from leo_tf.serving import export as export_lib
from leo_tf.regression import maml as maml_lib
from leo_tf.outer import step as outer
from leo_tf.regression import leo as regression
from leo_tf.core import seeds
from leo_tf.regression import tasks as sinusoid
from leo_tf.classification import experiment as trainer
from leo_tf.core.config import OuterConfig

PROBLEM = "regression"
MODELS = ("leo", "maml")
FIGURE_FILE = "figure3.png"
RESULTS_FILE = "results_{split}.json"


@dataclasses.dataclass(frozen=True)
class RegressionRunConfig:
  """Everything one regression run needs."""

  model: regression.RegressionConfig = regression.RegressionConfig()
  maml: maml_lib.MAMLConfig = maml_lib.MAMLConfig()
  tasks: sinusoid.SinusoidConfig = sinusoid.SinusoidConfig()
  outer: OuterConfig = OuterConfig(metatrain_batch_size=25, num_steps_limit=20_000,
                                   outer_lr=1e-3, gradient_threshold=0.0,
                                   gradient_norm_threshold=1.0, checkpoint_path="runs/sines",
                                   checkpoint_steps=2000, num_metavalid_tasks=200,
                                   num_metatest_tasks=1000, metavalid_batch_size=50,
                                   metatest_batch_size=20)  # LEO's outer loop, and the run's
  maml_num_steps_limit: int = 20_000  # MAML's meta-training steps
  maml_outer_lr: float = 1e-3  # MAML's Adam learning rate
  maml_batch_size: int = 25  # MAML's tasks per meta-training step
  models: tuple[str, ...] = MODELS  # which models to train and evaluate
  num_eval_points: int = 100  # query grid per evaluation task
  num_eval_samples: int = 100  # LEO's sampled functions per evaluation task
  num_valid_samples: int = 20  # LEO's sampled functions per meta-validation task
  eval_seed: int = 1  # seeds the held-out (validation, test, figure) tasks
  summary_steps: int = 50  # TensorBoard and progress every so many steps
  progress: bool = True  # progress bar on stderr

  def __post_init__(self):
    if not self.models or any(m not in MODELS for m in self.models):
      raise ValueError(f"models must be a non-empty subset of {MODELS}, got {self.models!r}.")
    for name in ("maml_num_steps_limit",):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
    for name in ("num_eval_points", "num_eval_samples", "summary_steps", "maml_batch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
    if self.num_valid_samples < 2:
      raise ValueError(f"num_valid_samples must be >= 2, got {self.num_valid_samples}.")
    if self.maml_outer_lr <= 0:
      raise ValueError(f"maml_outer_lr must be > 0, got {self.maml_outer_lr}.")
    if self.eval_seed == self.outer.seed:
      raise ValueError(f"eval_seed ({self.eval_seed}) must differ from the training seed "
                       f"({self.outer.seed}): held-out tasks come from a separate seed.")
    if self.eval_seed < 0:
      raise ValueError(f"eval_seed must be >= 0, got {self.eval_seed}.")

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

    def tuples(group: dict[str, Any]) -> dict[str, Any]:
      return {k: tuple(v) if isinstance(v, list) else v for k, v in group.items()}

    return cls(model=regression.RegressionConfig(**tuples(d.pop("model"))),
               maml=maml_lib.MAMLConfig(**tuples(d.pop("maml"))),
               tasks=sinusoid.SinusoidConfig(**tuples(d.pop("tasks"))),
               outer=OuterConfig(**d.pop("outer")), **tuples(d))


# Settings that, changed between a run and its resumption, make the checkpoints
# meaningless or the resumed run different from an uninterrupted one.
_RESUME_FIELDS = {
    "model": [f.name for f in dataclasses.fields(regression.RegressionConfig)],
    "maml": [f.name for f in dataclasses.fields(maml_lib.MAMLConfig)],
    "tasks": [f.name for f in dataclasses.fields(sinusoid.SinusoidConfig)],
    "outer": ["metatrain_batch_size", "outer_lr", "gradient_threshold", "gradient_norm_threshold",
              "seed", "jit_compile"],
    "": ["maml_outer_lr", "maml_batch_size", "eval_seed"],
}


def _check_resume_config(config: RegressionRunConfig) -> None:
  """Writes config.json on the first start; on a restart, refuses changed settings."""
  path = os.path.join(config.outer.checkpoint_path, "config.json")
  current = json.loads(json.dumps(config.to_dict()))  # tuples as JSON lists, as saved
  if not os.path.isfile(path):
    embeddings.write_json_atomically(path, current)
    return
  with open(path) as f:
    saved = json.load(f)
  if saved.get("problem") != PROBLEM:
    raise ValueError(f"{config.outer.checkpoint_path!r} holds a {saved.get('problem', 'classification')} "
                     "run; use a new --checkpoint_path for the regression.")
  changed = []
  for group, names in _RESUME_FIELDS.items():
    old, new = (saved.get(group, {}), current[group]) if group else (saved, current)
    changed += [f"{group + '.' if group else ''}{n}: {old.get(n)!r} -> {new[n]!r}"
                for n in names if old.get(n) != new[n]]
  if changed:
    raise ValueError(
        f"{config.outer.checkpoint_path!r} holds a run with other settings ({'; '.join(changed)}). "
        "Resume with the same flags, or use a new --checkpoint_path.")


def build_model(name: str, config: RegressionRunConfig):
  """A fresh LEORegression ("leo") or MAML ("maml"), initialised from the run seed."""
  if name == "leo":
    return regression.LEORegression(config.model, seed=config.outer.seed)
  if name == "maml":
    return maml_lib.MAML(config.maml, seed=config.outer.seed)
  raise ValueError(f"model name must be one of {MODELS}, got {name!r}.")


# ----------------------------------------------------------------------------
# The compiled steps.


def _draw_noise(model, tasks: sinusoid.RegressionTasks, seed: tf.Tensor, num_samples=None):
  """The model's random draws for a pass (LEO), None for a model that draws none (MAML)."""
  if not hasattr(model, "draw_noise"):
    return None
  return model.draw_noise(tasks, seed, num_samples)


def make_train_step(model, optimizer, config: OuterConfig
                    ) -> Callable[[sinusoid.RegressionTasks, tf.Tensor], dict[str, tf.Tensor]]:
  """Returns step(tasks, seed) -> metrics: second-order meta-gradient, fallback, clip, Adam.

  The outer loop of outer.meta_gradients, for a model whose outputs are
  RegressionOutputs: NaN/Inf in the loss or a gradient replaces the gradients
  by those of the small weight decay (outer.fallback_gradients), then each is
  clipped (outer.clip_gradients). As outer.make_train_step, the random draws
  are made first, outside the XLA cluster, so XLA on and off draw the same.
  """

  @tf.function(jit_compile=config.jit_compile, reduce_retracing=True)
  def compiled_step(tasks: sinusoid.RegressionTasks, noise) -> dict[str, tf.Tensor]:
    variables = model.meta_variables
    with tf.GradientTape() as tape:
      outputs = model(tasks, training=True, noise=noise)
      loss = model.meta_loss(outputs)
    grads = tape.gradient(loss.total, variables)
    grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
    finite = outer.all_finite(loss.total, grads)
    safe = outer.fallback_gradients(model)
    grads = [tf.where(finite, g, s) for g, s in zip(grads, safe)]
    gradient_norm = tf.linalg.global_norm(grads)
    grads = outer.clip_gradients(grads, config.gradient_threshold, config.gradient_norm_threshold)
    optimizer.apply_gradients(zip(grads, variables))
    return {"loss": loss.total, "val_loss": loss.val_loss,
            "tr_loss": tf.reduce_mean(outputs.tr_loss), "kl": loss.kl,
            "encoder_penalty": loss.encoder_penalty, "l2": loss.l2,
            "orthogonality": loss.orthogonality, "gradient_norm": gradient_norm,
            "fallback": 1.0 - tf.cast(finite, loss.total.dtype)}

  @tf.function(reduce_retracing=True)
  def train_step(tasks: sinusoid.RegressionTasks, seed: tf.Tensor) -> dict[str, tf.Tensor]:
    return compiled_step(tasks, _draw_noise(model, tasks, seed))

  return train_step


def make_predict_step(model, num_samples: int, jit_compile: bool
                      ) -> Callable[[sinusoid.RegressionTasks, tf.Tensor], tf.Tensor]:
  """Returns predict(tasks, seed) -> sampled predictions [B, S, M, 1] (MAML: S = 1)."""

  @tf.function(jit_compile=jit_compile, reduce_retracing=True)
  def compiled_predict(tasks: sinusoid.RegressionTasks, noise) -> tf.Tensor:
    return model(tasks, training=False, num_samples=num_samples, noise=noise).val_predictions

  @tf.function(reduce_retracing=True)
  def predict(tasks: sinusoid.RegressionTasks, seed: tf.Tensor) -> tf.Tensor:
    return compiled_predict(tasks, _draw_noise(model, tasks, seed, num_samples))

  return predict


def make_means_step(model, jit_compile: bool
                    ) -> Callable[[sinusoid.RegressionTasks], tf.Tensor]:
  """Returns predict(tasks) -> the deterministic prediction [B, 1, M, 1] (means throughout)."""

  @tf.function(jit_compile=jit_compile, reduce_retracing=True)
  def predict(tasks: sinusoid.RegressionTasks) -> tf.Tensor:
    return model(tasks, training=False, use_means=True).val_predictions

  return predict


# ----------------------------------------------------------------------------
# Scores.


def predict_tasks(predict, tasks: sinusoid.RegressionTasks, chunk_size: int, seed: int
                  ) -> np.ndarray:
  """Runs predict over the tasks in chunks: [N, S, M, 1] float64.

  Chunk c draws with the stateless seed (seed, c): the same tasks, chunking
  and seed give the same samples.
  """
  num_tasks = tasks.tr_input.shape[0]
  outputs = []
  for c, start in enumerate(range(0, num_tasks, chunk_size)):
    chunk = sinusoid.RegressionTasks(*(a[start:start + chunk_size] for a in tasks))
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


def _interval(values: np.ndarray) -> dict[str, float]:
  mean, ci, sd = trainer.confidence_interval(values)
  return {"mean": mean, "ci95": ci, "sd": sd}


# ----------------------------------------------------------------------------
# Training.


class _ModelRun:
  """The model, optimiser and checkpoint state of one model of a run."""

  def __init__(self, name: str, config: RegressionRunConfig):
    self.name = name
    self.path = os.path.join(config.outer.checkpoint_path, name)
    self.outer = config.outer_config(name)
    self.model = build_model(name, config)
    self.optimizer = outer.make_optimizer(self.model, self.outer)
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    self.best_mse = tf.Variable(np.inf, dtype=tf.float64, trainable=False, name="best_mse")
    self.evals_without_improvement = tf.Variable(0, dtype=tf.int64, trainable=False,
                                                 name="evals_without_improvement")
    self.checkpoint = tf.train.Checkpoint(
        model=self.model, optimizer=self.optimizer, step=self.step, best_mse=self.best_mse,
        evals_without_improvement=self.evals_without_improvement)
    self.manager = tf.train.CheckpointManager(self.checkpoint, os.path.join(self.path, "ckpt"),
                                              max_to_keep=2)

  def restore_latest(self) -> bool:
    latest = self.manager.latest_checkpoint
    if latest is None:
      return False
    self.checkpoint.restore(latest).assert_existing_objects_matched()
    return True

  def save_best(self, mse: float) -> str:
    """Writes the best checkpoint, then replaces best/best.json atomically (as trainer.Run)."""
    best_dir = os.path.join(self.path, "best")
    os.makedirs(best_dir, exist_ok=True)
    step = int(self.step.numpy())
    prefix = self.checkpoint.write(os.path.join(best_dir, f"ckpt-{step}"))
    embeddings.write_json_atomically(os.path.join(best_dir, trainer.BEST_POINTER), {
        "checkpoint": os.path.basename(prefix), "step": step, "metavalid_mse": mse})
    keep = os.path.basename(prefix)
    for name in os.listdir(best_dir):
      if name.startswith("ckpt-") and not name.startswith(keep + "."):
        os.remove(os.path.join(best_dir, name))
    return prefix


def _train_model(name: str, config: RegressionRunConfig) -> dict[str, Any]:
  """Meta-trains one model to its num_steps_limit; returns wall time, steps and fallbacks."""
  run = _ModelRun(name, config)
  o = run.outer
  resumed = run.restore_latest()
  start = int(run.step.numpy())
  train_step = make_train_step(run.model, run.optimizer, o)
  num_samples = config.num_valid_samples if name == "leo" else 1
  predict = make_predict_step(run.model, num_samples, o.jit_compile)
  val_tasks, _ = sinusoid.heldout_tasks(config.eval_seed, "val", o.num_metavalid_tasks,
                                        config.num_eval_points, config.tasks)
  train_writer = tf.summary.create_file_writer(os.path.join(run.path, "train"))
  valid_writer = tf.summary.create_file_writer(os.path.join(run.path, "valid"))
  progress = trainer.Progress(o.num_steps_limit, start, o.metatrain_batch_size, config.progress)
  progress.message(
      f"[{name}] {'Resuming at' if resumed else 'Starting'} step {start} of {o.num_steps_limit}: "
      f"{config.tasks.num_tr_examples}-shot regression on sines and lines, meta-batch "
      f"{o.metatrain_batch_size}.")

  def validate(step: int) -> bool:
    samples = predict_tasks(predict, val_tasks, o.metavalid_batch_size, config.eval_seed)
    mse = mse_of_mean(samples, val_tasks.val_target)
    mean, ci, _ = trainer.confidence_interval(mse)
    scalars = {"mse": mean, "mse_ci95": ci}
    if name == "leo":
      scalars["coverage90"] = float(np.mean(band_coverage(samples, val_tasks.val_target)))
    improved = bool(np.isfinite(mean)) and mean < float(run.best_mse.numpy())
    if improved:
      run.best_mse.assign(mean)
      run.evals_without_improvement.assign(0)
      run.save_best(mean)
    else:
      run.evals_without_improvement.assign_add(1)
    trainer.write_summaries(valid_writer, step, scalars)
    extra = f", 90% band coverage {100 * scalars['coverage90']:.1f}%" if name == "leo" else ""
    progress.message(f"[{name}] step {step}: meta-valid MSE {mean:.4f} +- {ci:.4f} over "
                     f"{mse.size} tasks{extra}{' (best so far)' if improved else ''}")
    patience = o.early_stopping_patience
    return bool(patience) and int(run.evals_without_improvement.numpy()) >= patience

  t0, cpu0 = time.time(), time.process_time()
  pending: list[dict[str, tf.Tensor]] = []
  fallbacks = 0
  step = start
  stopped_early = False
  while step < o.num_steps_limit:
    tasks, _ = sinusoid.sample_tasks(sinusoid.task_rng(o.seed, "train", step),
                                     o.metatrain_batch_size, config.tasks)
    pending.append(train_step(tasks, seeds.step_seed(o.seed, step)))
    step += 1
    run.step.assign(step)
    if step % config.summary_steps == 0 or step == o.num_steps_limit:
      means = {k: float(np.mean([m[k].numpy() for m in pending])) for k in pending[0]}
      fallbacks += int(round(means["fallback"] * len(pending)))
      means["fallback"] *= len(pending)  # count in the interval
      if name == "leo":
        means["inner_lr_mean"] = float(tf.reduce_mean(run.model.inner_lr).numpy())
      trainer.write_summaries(train_writer, step, means)
      pending.clear()
      progress.update(step, f"loss {means['loss']:.3f} query MSE {means['val_loss']:.3f}")
    if step % o.checkpoint_steps == 0 or step == o.num_steps_limit:
      stopped_early = validate(step)
      run.manager.save(checkpoint_number=step)
      if stopped_early:
        progress.message(f"[{name}] Early stopping at step {step}: no better meta-validation "
                         f"MSE in {o.early_stopping_patience} evaluations.")
        break
  seconds, cpu_seconds = time.time() - t0, time.process_time() - cpu0
  train_writer.flush()
  valid_writer.flush()
  if not os.path.isfile(os.path.join(run.path, "best", trainer.BEST_POINTER)):
    validate(step)  # e.g. num_steps_limit = 0: the initial model is the best there is
  # CPU seconds of all the process's threads: on a shared machine, what the
  # training cost, whatever else ran (wall time / CPU time ~ 1 / cores used).
  return {"train_seconds": seconds, "train_cpu_seconds": cpu_seconds,
          "steps_run": step - start, "final_step": step,
          "nan_fallbacks": fallbacks, "stopped_early": stopped_early}


def train(config: RegressionRunConfig) -> dict[str, Any]:
  """Meta-trains config.models in turn, then evaluates their best checkpoints.

  Returns:
    evaluate()'s results, plus "training": per model, the wall time of this
    call's training (seconds), the steps run and the NaN fallbacks.
  """
  os.makedirs(config.outer.checkpoint_path, exist_ok=True)
  _check_resume_config(config)
  training = {name: _train_model(name, config) for name in config.models}
  results = evaluate(config)
  results["training"] = training
  embeddings.write_json_atomically(results["results_file"], results)
  print(f"Checkpoints: {config.outer.checkpoint_path}/<model>/ckpt\nTensorBoard: tensorboard "
        f"--logdir {config.outer.checkpoint_path}\nResults: {results['results_file']}\n"
        f"Figure: {results.get('figure')}", flush=True)
  return results


# ----------------------------------------------------------------------------
# Evaluation.


def load_best(name: str, config: RegressionRunConfig):
  """The model `name` with its best checkpoint's variables, and the best record."""
  prefix, record = trainer.best_checkpoint(os.path.join(config.outer.checkpoint_path, name))
  model = build_model(name, config)
  tf.train.Checkpoint(model=model).read(prefix).expect_partial().assert_existing_objects_matched()
  return model, prefix, record


def evaluate(config: RegressionRunConfig, split: str = "test", figure: bool = True
             ) -> dict[str, Any]:
  """Scores the best checkpoints of config.models on the same held-out tasks.

  Returns and writes (results_<split>.json) per model the MSE of the mean
  prediction (and LEO's 90% band coverage and deterministic-path MSE) with
  95% intervals, and for LEO against MAML the paired per-task difference and
  the MSE ratio. Draws figure3.png when `figure` (and LEO was evaluated).
  """
  o = config.outer
  tasks, params = sinusoid.heldout_tasks(config.eval_seed, split, o.num_metatest_tasks,
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
  for name in config.models:
    model, prefix, record = load_best(name, config)
    num_samples = config.num_eval_samples if name == "leo" else 1
    predict = make_predict_step(model, num_samples, o.jit_compile)
    t0 = time.time()
    samples = predict_tasks(predict, tasks, o.metatest_batch_size, config.eval_seed)
    seconds = time.time() - t0
    mse = mse_of_mean(samples, tasks.val_target)
    entry = {"mse": _interval(mse), "checkpoint": prefix, "checkpoint_step": record["step"],
             "metavalid_mse": record["metavalid_mse"], "eval_seconds": seconds,
             "nonfinite_tasks": int(np.sum(~np.isfinite(mse)))}
    if name == "leo":
      entry["coverage90"] = _interval(band_coverage(samples, tasks.val_target))
      deterministic = _predict_means(model, tasks, o.metatest_batch_size, o.jit_compile)
      entry["mse_means"] = _interval(mse_of_mean(deterministic, tasks.val_target))
    results[name] = entry
    per_task[name] = mse
    predictions[name] = samples
    print(f"[{name}] meta-{split} MSE {entry['mse']['mean']:.4f} +- {entry['mse']['ci95']:.4f} "
          f"(95% CI) over {mse.size} tasks"
          + (f"; 90% band coverage {100 * entry['coverage90']['mean']:.1f}% +- "
             f"{100 * entry['coverage90']['ci95']:.1f}%" if name == "leo" else ""), flush=True)
  if "leo" in per_task and "maml" in per_task:
    results["leo_vs_maml"] = {
        "mse_ratio": results["leo"]["mse"]["mean"] / results["maml"]["mse"]["mean"],
        "paired_difference": _interval(per_task["leo"] - per_task["maml"]),
        "intervals_overlap": bool(
            results["leo"]["mse"]["mean"] + results["leo"]["mse"]["ci95"]
            >= results["maml"]["mse"]["mean"] - results["maml"]["mse"]["ci95"]),
    }
  if figure and "leo" in predictions:
    path = os.path.join(o.checkpoint_path, FIGURE_FILE)
    results["figure"] = path
    results["figure_tasks"] = draw_figure(path, tasks, params, predictions, config)
  results_file = os.path.join(o.checkpoint_path, RESULTS_FILE.format(split=split))
  results["results_file"] = results_file
  embeddings.write_json_atomically(results_file, results)
  return results


def _predict_means(model, tasks: sinusoid.RegressionTasks, chunk_size: int, jit_compile: bool
                   ) -> np.ndarray:
  """The deterministic path's predictions [N, 1, M, 1] (no randomness, no seed)."""
  predict = make_means_step(model, jit_compile)
  num_tasks = tasks.tr_input.shape[0]
  return np.concatenate([
      np.asarray(predict(sinusoid.RegressionTasks(*(a[s:s + chunk_size] for a in tasks))),
                 np.float64) for s in range(0, num_tasks, chunk_size)], axis=0)


# ----------------------------------------------------------------------------
# The figure.


def pick_figure_tasks(tasks: sinusoid.RegressionTasks, params: sinusoid.TaskParams,
                      noise_stddev: float) -> dict[str, list[int]]:
  """Indices of held-out tasks to draw: ambiguous sines, clear sines, lines (2 each).

  Ambiguous: sines of amplitude >= 1.5 whose five noisy points a straight line
  fits to within the noise (line_fit_rms <= noise_stddev), so that both
  families explain the data; the two that a line fits best. Clear sines: the
  first two whose line fit is off by more than 4 noise standard deviations.
  Lines: the first two line tasks. The choice is deterministic.
  """
  rms = sinusoid.line_fit_rms(tasks)  # [N]
  sine = params.is_sine
  candidates = np.flatnonzero(sine & (params.amplitude >= 1.5) & (rms <= noise_stddev))
  ambiguous = candidates[np.argsort(rms[candidates], kind="stable")][:2]
  clear = np.flatnonzero(sine & (rms > 4 * noise_stddev))[:2]
  lines = np.flatnonzero(~sine)[:2]
  return {"ambiguous": ambiguous.tolist(), "sine": clear.tolist(), "line": lines.tolist()}


def draw_figure(path: str, tasks: sinusoid.RegressionTasks, params: sinusoid.TaskParams,
                predictions: dict[str, np.ndarray], config: RegressionRunConfig,
                num_curves: int = 10) -> dict[str, list[int]]:
  """Writes the figure-3-like PNG atomically; returns the drawn task indices by kind.

  Per panel: the noiseless function (black), the K noisy support points (red),
  `num_curves` of LEO's sampled functions (blue, thin), its 90% band (shaded)
  and, when evaluated, MAML's prediction (green, dashed).
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  chosen = pick_figure_tasks(tasks, params, config.tasks.noise_stddev)
  panels = [(kind, i) for kind in ("ambiguous", "sine", "line") for i in chosen[kind]]
  if not panels:
    raise ValueError("No held-out task to draw; raise num_metatest_tasks.")
  grid = tasks.val_input[0, :, 0]  # [M], the same grid for every task
  leo = predictions["leo"]  # [N, S, M, 1]
  columns = 3
  rows = -(-len(panels) // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
  titles = {"ambiguous": "ambiguous: sine, a line fits too", "sine": "sine", "line": "line"}
  for ax, (kind, i) in zip(axes.ravel(), panels):
    low, high = np.percentile(leo[i, :, :, 0], [5, 95], axis=0)  # [M] each
    ax.fill_between(grid, low, high, color="tab:blue", alpha=0.15, lw=0,
                    label="LEO 90% band")
    for s in range(min(num_curves, leo.shape[1])):
      ax.plot(grid, leo[i, s, :, 0], color="tab:blue", lw=0.7, alpha=0.6,
              label="LEO samples" if s == 0 else None)
    if "maml" in predictions:
      ax.plot(grid, predictions["maml"][i, 0, :, 0], color="tab:green", lw=1.4, ls="--",
              label="MAML")
    ax.plot(grid, tasks.val_target[i, :, 0], color="black", lw=1.8, label="true function")
    ax.scatter(tasks.tr_input[i, :, 0], tasks.tr_output[i, :, 0], color="tab:red", zorder=5,
               s=28, label=f"{tasks.tr_input.shape[1]} noisy points")
    if params.is_sine[i]:
      desc = f"A={params.amplitude[i]:.2f}, phi={params.phase[i]:.2f}"
    else:
      desc = f"a={params.slope[i]:.2f}, b={params.intercept[i]:.2f}"
    ax.set_title(f"task {i} ({titles[kind]})\n{desc}", fontsize=9)
    ax.set_xlim(*config.tasks.input_range)
    ax.grid(alpha=0.3)
  for ax in axes.ravel()[len(panels):]:
    ax.axis("off")
  axes.ravel()[0].legend(fontsize=7, loc="best")
  fig.suptitle(f"LEO on held-out {config.tasks.num_tr_examples}-shot sines and lines: "
               f"{min(num_curves, leo.shape[1])} of {leo.shape[1]} sampled functions", fontsize=11)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}.png"
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  os.replace(tmp, path)
  return chosen


# ----------------------------------------------------------------------------
# Export for TF Serving, through leo_tf.export's machinery.

_REGRESSION_SIGNATURE = (
    tf.TensorSpec([None, 1], tf.float32, name="support_x"),  # [K, 1]
    tf.TensorSpec([None, 1], tf.float32, name="support_y"),  # [K, 1]
    tf.TensorSpec([None, 1], tf.float32, name="query_x"),  # [Q, 1]
)
EXPORT_FORMAT = "leo_tf regression SavedModel export, version 1"
WARMUP_TASK = (5, 100)  # (K, Q) of the warmup request


class RegressionServingModule(tf.Module):
  """What is saved: serving_default and the tf.Variables it reads (see export.ServingModule).

  serving_default(support_x [K, 1], support_y [K, 1], query_x [Q, 1]) ->
    mean [Q, 1]: the average of the sampled functions at the queries;
    samples [S, Q, 1]: S sampled functions (codes and parameters sampled,
      adapted on the support set), as evaluation draws them.
  The draws use a stateless seed fixed at export, so a request always gets the
  same samples (reproducible answers; send the request again, get the same).
  """

  def __init__(self, model: regression.LEORegression, num_samples: int, seed: int):
    super().__init__(name="leo_regression_serving")
    # pylint: disable-next=protected-access
    self.served_variables = {getattr(v, "path", v.name.split(":")[0]).replace("/", "-"):
                             export_lib._tf_variable(v) for v in model.meta_variables}
    sample_seed = tf.constant([seed, 0], tf.int32)

    @tf.function(input_signature=_REGRESSION_SIGNATURE, jit_compile=False)
    def predict(support_x: tf.Tensor, support_y: tf.Tensor, query_x: tf.Tensor
                ) -> dict[str, tf.Tensor]:
      """support_x, support_y [K, 1], query_x [Q, 1] -> mean [Q, 1], samples [S, Q, 1]."""
      k = tf.shape(support_x)[0]
      checks = [
          lambda: tf.debugging.Assert(k > 0, ["support_x is empty; send K >= 1 support points "
                                              "as [K, 1]."]),
          lambda: tf.debugging.Assert(
              tf.equal(tf.shape(support_y)[0], k),
              ["support_y must have one target per support input, [K, 1] like support_x; "
               "shapes:", tf.shape(support_x), tf.shape(support_y)]),
          lambda: tf.debugging.assert_all_finite(
              support_x, message="support_x contains NaN or Inf; send finite inputs"),
          lambda: tf.debugging.assert_all_finite(
              support_y, message="support_y contains NaN or Inf; send finite targets"),
          lambda: tf.debugging.assert_all_finite(
              query_x, message="query_x contains NaN or Inf; send finite inputs"),
      ]
      done = []
      for check in checks:  # in order: the first problem is the one reported
        with tf.control_dependencies(done):
          done = [check()]
      with tf.control_dependencies(done):
        tasks = sinusoid.RegressionTasks(
            tr_input=tf.identity(support_x)[None], tr_output=support_y[None],  # [1, K, 1]
            val_input=query_x[None], val_output=None, val_target=None)  # [1, Q, 1]
      samples = model(tasks, training=False, seed=sample_seed,
                      num_samples=num_samples).val_predictions[0]  # [1, S, Q, 1] -> [S, Q, 1]
      samples = tf.cast(samples, tf.float32)
      return {"mean": tf.reduce_mean(samples, axis=0), "samples": samples}  # [Q, 1], [S, Q, 1]

    self.predict = predict


def _regression_warmup_requests(model_name: str = export_lib.DEFAULT_MODEL_NAME) -> list[Any]:
  """One PredictionLog (tensorflow_serving.apis) of a K = 5, Q = 100 request."""
  from tensorflow_serving.apis import model_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=g-import-not-at-top
  num_tr, num_queries = WARMUP_TASK
  rng = np.random.default_rng(0)
  request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(
      name=model_name, signature_name=export_lib.SERVING_SIGNATURE))
  inputs = {"support_x": rng.uniform(-5, 5, (num_tr, 1)), "support_y": rng.normal(size=(num_tr, 1)),
            "query_x": np.linspace(-5, 5, num_queries)[:, None]}
  for key, value in inputs.items():
    request.inputs[key].CopyFrom(tf.make_tensor_proto(value.astype(np.float32)))
  return [prediction_log_pb2.PredictionLog(
      predict_log=prediction_log_pb2.PredictLog(request=request))]


def export_model(model: regression.LEORegression, config: RegressionRunConfig, export_dir: str,
                 source: dict[str, Any], *, num_samples: int | None = None,
                 warmup: bool = True) -> str:
  """Writes the regression generator as the next version under export_dir (atomically).

  As export.export_model: written to <export_dir>/.tmp-<version>-<pid>, flushed,
  then renamed to <export_dir>/<version>; assets.extra/ holds leo_config.json
  and, when `warmup` (needs tensorflow-serving-api), the warmup request.

  Args:
    model: the trained LEORegression.
    config: the run's configuration (recorded).
    export_dir: the model base path.
    source: where the variables came from (recorded).
    num_samples: S, sampled functions per request (default config.num_eval_samples).
    warmup: write TF Serving's warmup record.

  Returns:
    <export_dir>/<version>.
  """
  num_samples = num_samples or config.num_eval_samples
  os.makedirs(export_dir, exist_ok=True)
  existing = export_lib.versions(export_dir)
  version = existing[-1] + 1 if existing else 1
  final_dir = os.path.join(export_dir, str(version))
  tmp_dir = os.path.join(export_dir, f".tmp-{version}-{os.getpid()}")
  if os.path.exists(tmp_dir):
    shutil.rmtree(tmp_dir)  # left by a crashed export of this same pid number
  module = RegressionServingModule(model, num_samples, config.eval_seed)
  try:
    tf.saved_model.save(module, tmp_dir,
                        signatures={export_lib.SERVING_SIGNATURE: module.predict})
    extra = os.path.join(tmp_dir, export_lib.EXTRA_DIR)
    os.makedirs(extra, exist_ok=True)
    if warmup:
      with tf.io.TFRecordWriter(os.path.join(extra, export_lib.WARMUP_FILE)) as writer:
        for log in _regression_warmup_requests():
          writer.write(log.SerializeToString())
    record = {
        "format": EXPORT_FORMAT, "version": version, "source": source,
        "run_config": config.to_dict(),
        "signatures": {
            export_lib.SERVING_SIGNATURE: "LEO regression generator: encoder + relation network, "
                                          f"{config.model.inner_unroll_length} latent steps, "
                                          f"{num_samples} sampled functions",
            "inputs": {"support_x": "float32 [K, 1]", "support_y": "float32 [K, 1]",
                       "query_x": "float32 [Q, 1]"},
            "outputs": {"mean": "float32 [Q, 1], average of the samples",
                        "samples": f"float32 [{num_samples}, Q, 1]"},
            "seed": f"stateless, fixed at export: [{config.eval_seed}, 0]"},
        "tensorflow_version": tf.__version__,
    }
    with open(os.path.join(extra, export_lib.CONFIG_FILE), "w") as f:
      json.dump(record, f, indent=2, sort_keys=True)
      f.write("\n")
    export_lib._fsync_tree(tmp_dir)  # pylint: disable=protected-access
    if os.path.exists(final_dir):
      raise FileExistsError(
          f"Version {version} appeared in {export_dir!r} during this export (another export "
          "running?); run the export again to write the next version.")
    os.rename(tmp_dir, final_dir)
  except BaseException:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    raise
  embeddings.fsync_dir(export_dir)
  return final_dir


def export_checkpoint(checkpoint_path: str, export_dir: str, checkpoint: str | None = None, *,
                      allow_duplicate: bool = False, warmup: bool = True) -> str:
  """Exports the best (or named) LEO checkpoint of a regression run as the next version.

  export.export_checkpoint hands a run whose config.json says "problem":
  "regression" to this function, so `python -m leo_tf.export` and
  `python -m leo_tf.train --export_dir=...` work for both problems.

  Raises:
    FileNotFoundError: no config.json or no LEO checkpoint in the run.
    FileExistsError: a version in export_dir already holds this checkpoint.
  """
  config_file = os.path.join(checkpoint_path, "config.json")
  if not os.path.isfile(config_file):
    raise FileNotFoundError(f"No {config_file}: --checkpoint_path must be the folder of a "
                            "regression run (python -m leo_tf.train --flagfile=sines.flags).")
  with open(config_file) as f:
    config = RegressionRunConfig.from_dict(json.load(f))
  if checkpoint is None:
    prefix, record = trainer.best_checkpoint(os.path.join(checkpoint_path, "leo"))
  else:
    prefix, record = checkpoint, {}
  sha256 = export_lib.checkpoint_sha256(prefix)
  if not allow_duplicate:
    for version in export_lib.versions(export_dir):
      try:
        held = export_lib.read_export_config(os.path.join(export_dir, str(version)))
        held = held["source"]["sha256"]
      except (OSError, ValueError, KeyError):
        continue
      if held == sha256:
        raise FileExistsError(
            f"Version {version} in {export_dir!r} already holds checkpoint {prefix}; pass "
            "--allow_duplicate (allow_duplicate=True) to export it again.")
  model = build_model("leo", config)
  tf.train.Checkpoint(model=model).read(prefix).expect_partial().assert_existing_objects_matched()
  source = {"checkpoint_path": os.path.abspath(checkpoint_path),
            "checkpoint": os.path.abspath(prefix), "sha256": sha256, "step": record.get("step"),
            "metavalid_mse": record.get("metavalid_mse")}
  return export_model(model, config, export_dir, source, warmup=warmup)
