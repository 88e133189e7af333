"""Meta-training with checkpoints, meta-validation, early stopping and meta-test.

`train(config)` meta-trains (resuming from the last checkpoint in
`checkpoint_path` when there is one), keeps the best checkpoint by
meta-validation accuracy, and evaluates it on meta-test; `evaluate(config)` is
the `--evaluation_mode` path. Both return a results dictionary and write it as
JSON beside the checkpoints.

Layout of `checkpoint_path`:
  config.json             the run's configuration (written once; checked on resume)
  ckpt/                   tf.train.CheckpointManager: the latest checkpoints
  best/best.json          pointer to the best checkpoint (replaced atomically)
  best/ckpt-<step>.*      the best checkpoint's files
  train/, valid/          TensorBoard summaries
  results_test.json       meta-test accuracy with its 95% confidence interval

Everything a run needs to continue is in a checkpoint: the model, Adam's
slots, the step, the best accuracy so far and the early-stopping counter. The
random state is the step itself: episodes for step s come from
np.random.default_rng([seed, stream, s]) and the model's samples and dropout
from the stateless seed (seed, s); so an interrupted run (kill -9 included)
restarted with the same flags ends with the same weights as an uninterrupted
one (tested).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from typing import Any

import numpy as np
import tensorflow as tf

from leo_tf.outer import distribute
from leo_tf.data import embeddings
from leo_tf.data import episodes
from leo_tf.classification import metasgd
from leo_tf.outer import step as outer
from leo_tf.classification import prototypes
from leo_tf.core import seeds
from leo_tf.core.config import DataConfig, ModelConfig, OuterConfig
from leo_tf.data.embeddings import write_json_atomically  # re-exported for the run's files
from leo_tf.classification.leo import LEO, ProblemInstance

BEST_POINTER = "best.json"
# --model: LEO, or a baseline on the same features with the same interface.
MODEL_NAMES = ("leo", "metasgd", "prototypes")


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Everything one run needs."""

  model: ModelConfig = ModelConfig()
  data: DataConfig = DataConfig()
  outer: OuterConfig = OuterConfig()
  summary_steps: int = 10  # TensorBoard and progress every so many steps
  eval_chunk_mb: int = 256  # evaluation memory bound: features per chunk of tasks
  progress: bool = True  # progress bar on stderr
  model_name: str = "leo"  # leo, metasgd (Meta-SGD) or prototypes (nearest class mean)
  strategy: str = "default"  # tf.distribute: default, mirrored or multi_worker

  def __post_init__(self):
    if self.strategy not in distribute.STRATEGIES:
      raise ValueError(f"strategy must be one of {distribute.STRATEGIES}, got {self.strategy!r}.")
    if self.model_name not in MODEL_NAMES:
      raise ValueError(f"model_name must be one of {MODEL_NAMES}, got {self.model_name!r}.")
    if self.summary_steps < 1:
      raise ValueError(f"summary_steps must be >= 1, got {self.summary_steps}.")
    if self.eval_chunk_mb < 1:
      raise ValueError(f"eval_chunk_mb must be >= 1, got {self.eval_chunk_mb}.")

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
    return cls(model=ModelConfig(**d["model"]), data=DataConfig(**d["data"]),
               outer=OuterConfig(**d["outer"]),
               **{k: v for k, v in d.items() if k not in ("model", "data", "outer")})


# Fields that, changed between a run and its resumption, make the checkpoint
# meaningless or the resumed run different from an uninterrupted one.
_RESUME_FIELDS = {
    "model": [f.name for f in dataclasses.fields(ModelConfig)],
    "data": ["dataset_name", "embedding_crop", "train_on_val", "num_classes",
             "num_tr_examples_per_class", "num_val_examples_per_class"],
    "outer": ["metatrain_batch_size", "outer_lr", "gradient_threshold",
              "gradient_norm_threshold", "seed", "jit_compile"],
}


def build_model(config: RunConfig):
  """The model that config.model_name selects, with LEO's interface (see metasgd.py)."""
  if config.model_name == "metasgd":
    return metasgd.MetaSGD(
        metasgd.MetaSGDConfig.from_model_config(config.model, config.data.num_classes))
  if config.model_name == "prototypes":
    return prototypes.Prototypes(prototypes.PrototypesConfig(config.model.embedding_dim))
  return LEO(config.model, seed=config.outer.seed)


def confidence_interval(accuracies: np.ndarray) -> tuple[float, float, float]:
  """(mean, 95% half-width 1.96 sd / sqrt(n), sd) of per-task accuracies (sd: ddof=1)."""
  accuracies = np.asarray(accuracies, np.float64)
  n = accuracies.size
  if n == 0:
    raise ValueError("No tasks were evaluated: num_tasks must be >= 1.")
  sd = float(np.std(accuracies, ddof=1)) if n > 1 else 0.0
  return float(np.mean(accuracies)), 1.96 * sd / math.sqrt(n), sd


class Progress:
  """A one-line progress bar with tasks/s and ETA (plain lines when not a TTY)."""

  def __init__(self, total_steps: int, start_step: int, tasks_per_step: int, enabled: bool):
    self.total, self.start, self.tasks_per_step = total_steps, start_step, tasks_per_step
    self.enabled = enabled
    self.t0 = time.time()
    self.tty = sys.stderr.isatty()
    self._last_line = 0.0

  def update(self, step: int, text: str) -> None:
    if not self.enabled:
      return
    elapsed = max(time.time() - self.t0, 1e-9)
    done = step - self.start
    rate = done * self.tasks_per_step / elapsed
    steps_per_s = done / elapsed
    eta = (self.total - step) / steps_per_s if steps_per_s > 0 else float("inf")
    width = 24
    filled = int(width * step / max(self.total, 1))
    line = (f"[{'#' * filled}{'.' * (width - filled)}] step {step}/{self.total} "
            f"{rate:7.1f} tasks/s ETA {eta:6.0f}s {text}")
    if self.tty:
      sys.stderr.write("\r" + line)
      sys.stderr.flush()
    elif time.time() - self._last_line > 10 or step == self.total:
      self._last_line = time.time()
      print(line, file=sys.stderr, flush=True)

  def message(self, text: str) -> None:
    if self.enabled and self.tty:
      sys.stderr.write("\n")
    print(text, flush=True)


class Run:
  """The model, optimiser and checkpoint state of one training run."""

  def __init__(self, config: RunConfig, strategy: tf.distribute.Strategy | None = None):
    """Builds the model and optimiser (under `strategy`'s scope when given).

    Only the chief writes into checkpoint_path; other workers of a
    multi-worker run take part in every save (as tf.distribute requires) but
    write into a scratch folder of their own, removed as they go.
    """
    self.config = config
    self.strategy = strategy or tf.distribute.get_strategy()
    self.chief = distribute.is_chief(self.strategy)
    self.path = config.outer.checkpoint_path
    if not self.chief:
      resolver = self.strategy.cluster_resolver
      self.path = os.path.join(config.outer.checkpoint_path,
                               f".scratch-{resolver.task_type}-{resolver.task_id}")
    with self.strategy.scope():
      self.model = build_model(config)
      self.optimizer = outer.make_optimizer(self.model, config.outer)
      self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
      self.best_accuracy = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best")
      self.evals_without_improvement = tf.Variable(0, dtype=tf.int64, trainable=False,
                                                   name="evals_without_improvement")
    self.checkpoint = tf.train.Checkpoint(
        model=self.model, optimizer=self.optimizer, step=self.step,
        best_accuracy=self.best_accuracy,
        evals_without_improvement=self.evals_without_improvement)
    self.manager = tf.train.CheckpointManager(self.checkpoint, os.path.join(self.path, "ckpt"),
                                              max_to_keep=3)

  def restore_latest(self) -> bool:
    """Restores the latest checkpoint of the run (the chief's), if any."""
    latest = tf.train.latest_checkpoint(os.path.join(self.config.outer.checkpoint_path, "ckpt"))
    if latest is None:
      return False
    self.checkpoint.restore(latest).assert_existing_objects_matched()
    return True

  def remove_scratch(self) -> None:
    """Deletes a non-chief worker's scratch folder."""
    if not self.chief and os.path.isdir(self.path):
      shutil.rmtree(self.path, ignore_errors=True)

  def save_latest(self) -> str:
    return self.manager.save(checkpoint_number=int(self.step.numpy()))

  def save_best(self, accuracy: float) -> str:
    """Writes the best checkpoint, then points best/best.json at it atomically.

    The checkpoint's files get a new prefix; only when they are complete is the
    pointer replaced (os.replace), so a crash leaves the previous best intact
    and pointed to. Older best checkpoints are removed afterwards.
    """
    best_dir = os.path.join(self.path, "best")
    os.makedirs(best_dir, exist_ok=True)
    step = int(self.step.numpy())
    prefix = self.checkpoint.write(os.path.join(best_dir, f"ckpt-{step}"))
    write_json_atomically(os.path.join(best_dir, BEST_POINTER), {
        "checkpoint": os.path.basename(prefix), "step": step, "metavalid_accuracy": accuracy})
    keep = os.path.basename(prefix)
    for name in os.listdir(best_dir):
      if name.startswith("ckpt-") and not name.startswith(keep + "."):
        os.remove(os.path.join(best_dir, name))
    return prefix


def best_checkpoint(checkpoint_path: str) -> tuple[str, dict[str, Any]]:
  """The best checkpoint's prefix and its record; a clear error when there is none."""
  pointer = os.path.join(checkpoint_path, "best", BEST_POINTER)
  if not os.path.isfile(pointer):
    raise FileNotFoundError(
        f"No best checkpoint in {checkpoint_path!r} ({pointer} is missing). Train first "
        "(python -m leo_tf.train with the same flags, evaluation_mode=False), or point "
        "--checkpoint_path at a finished training run.")
  with open(pointer) as f:
    record = json.load(f)
  return os.path.join(checkpoint_path, "best", record["checkpoint"]), record


def _check_resume_config(config: RunConfig) -> None:
  """Writes config.json on the first start; on a restart, refuses changed settings."""
  path = os.path.join(config.outer.checkpoint_path, "config.json")
  current = config.to_dict()
  if not os.path.isfile(path):
    write_json_atomically(path, current)
    return
  with open(path) as f:
    saved = json.load(f)
  # A setting that a run's config.json predates has its default there.
  defaults = {group: {f.name: f.default for f in dataclasses.fields(cls)}
              for group, cls in (("model", ModelConfig), ("data", DataConfig),
                                 ("outer", OuterConfig))}

  def saved_value(group, name):
    return saved.get(group, {}).get(name, defaults[group].get(name))

  changed = [f"{group}.{name}: {saved_value(group, name)!r} -> {current[group][name]!r}"
             for group, names in _RESUME_FIELDS.items() for name in names
             if saved_value(group, name) != current[group][name]]
  if saved.get("model_name", "leo") != config.model_name:
    changed.append(f"model_name: {saved.get('model_name', 'leo')!r} -> {config.model_name!r}")
  if changed:
    raise ValueError(
        f"{config.outer.checkpoint_path!r} holds a run with other settings ({'; '.join(changed)}). "
        "Resume with the same flags, or use a new --checkpoint_path.")


def _eval_sampler(config: RunConfig, split: embeddings.EmbeddingSplit, stream: str
                  ) -> episodes.EpisodeSampler:
  d = config.data
  num_val = episodes.num_eval_val_examples(split, d.num_tr_examples_per_class)
  return episodes.EpisodeSampler(split, d.num_classes, d.num_tr_examples_per_class, num_val,
                                 seed=config.outer.seed, stream=stream)


def eval_chunk_size(config: RunConfig, sampler: episodes.EpisodeSampler, batch_size: int) -> int:
  """Tasks per evaluation chunk: at most batch_size, and at most eval_chunk_mb of features."""
  per_class = sampler.num_tr_examples_per_class + sampler.num_val_examples_per_class
  task_bytes = sampler.num_classes * per_class * sampler.split.embedding_dim * 4
  return max(1, min(batch_size, (config.eval_chunk_mb << 20) // task_bytes))


def evaluate_tasks(eval_step, sampler: episodes.EpisodeSampler, num_tasks: int,
                   chunk_size: int) -> np.ndarray:
  """Per-task query accuracy [num_tasks] of the sampler's first tasks, by gathering them.

  The straightforward path (any model): chunks of gathered features through
  eval_step(problem) -> (accuracy [B], loss [B]).
  """
  accuracies = []
  for chunk in episodes.iterate_tasks(sampler, num_tasks, chunk_size):
    accuracy, _ = eval_step(ProblemInstance(*chunk))
    accuracies.append(accuracy.numpy())
  return np.concatenate(accuracies)


def make_task_evaluator(config: RunConfig, model, sampler: episodes.EpisodeSampler,
                        batch_size: int):
  """Returns evaluate(num_tasks) -> per-task query accuracy [num_tasks].

  Models with a linear adapted classifier (LEO: adapted_class_weights) take
  the fast path, outer.SplitEvaluator: indices instead of gathered features,
  logits from class-blocked products with the split's embeddings; chunks are
  bounded by eval_chunk_mb of those products. Other models
  gather their tasks' features in chunks bounded by eval_chunk_mb. Both see
  the same tasks (task t is the sampler's step-t task).
  """
  jit = config.outer.jit_compile
  if not hasattr(model, "adapted_class_weights"):
    eval_step = outer.make_eval_step(model, jit)
    chunk = eval_chunk_size(config, sampler, batch_size)
    return lambda num_tasks: evaluate_tasks(eval_step, sampler, num_tasks, chunk)
  step = outer.SplitEvaluator(model, sampler.split, sampler.num_tr_examples_per_class, jit)
  # The product holds at most (images of the largest class) x N floats per task
  # and class it holds: N (S N) floats per task.
  product_bytes = sampler.split.class_image_indices.shape[1] * sampler.num_classes ** 2 * 4
  chunk = max(1, min(batch_size, (config.eval_chunk_mb << 20) // product_bytes))

  def evaluate_fast(num_tasks: int) -> np.ndarray:
    if num_tasks < 1:
      raise ValueError(f"num_tasks must be >= 1, got {num_tasks}.")
    accuracies = []
    for first in range(0, num_tasks, chunk):
      indices = sampler.sample_task_indices(first, min(chunk, num_tasks - first))  # [B, N, K+V]
      accuracies.append(step(indices).numpy())
    return np.concatenate(accuracies)

  return evaluate_fast


def write_summaries(writer, step: int, scalars: dict[str, float]) -> None:
  """Writes float32 scalars; values beyond float32's range (a diverging run) become +-Inf.

  (tf.summary.scalar refuses a Python float that does not fit in float32, which
  would stop training at the very step whose loss one wants to see.)
  """
  with writer.as_default(step=step), np.errstate(over="ignore"):
    for name, value in scalars.items():
      tf.summary.scalar(name, np.float32(value))


def train(config: RunConfig) -> dict[str, Any]:
  """Meta-trains, keeps the best checkpoint, evaluates it on meta-test.

  Returns:
    The meta-test results (see `evaluate`) plus where everything was written.
  """
  d, o = config.data, config.outer
  if config.model_name == "prototypes":
    # Nothing to meta-train: meta-validate and meta-test the nearest class mean.
    evaluate(config, "val")
    return evaluate(config)
  train_split = embeddings.load_split(d, "train", config.model.embedding_dim)
  val_split = embeddings.load_split(d, "val", config.model.embedding_dim)
  train_sampler = episodes.EpisodeSampler(
      train_split, d.num_classes, d.num_tr_examples_per_class, d.num_val_examples_per_class,
      seed=o.seed, stream="train")
  val_sampler = _eval_sampler(config, val_split, "val")
  strategy = distribute.make_strategy(config.strategy)
  num_replicas = strategy.num_replicas_in_sync
  if o.metatrain_batch_size % num_replicas:
    raise ValueError(f"metatrain_batch_size {o.metatrain_batch_size} must be a multiple of the "
                     f"{num_replicas} replicas of strategy={config.strategy}.")
  run = Run(config, strategy)
  if run.chief:
    os.makedirs(o.checkpoint_path, exist_ok=True)
    _check_resume_config(config)
  resumed = run.restore_latest()
  start = int(run.step.numpy())
  if num_replicas == 1 and config.strategy == "default":
    train_step = outer.make_train_step(run.model, run.optimizer, o)
    replica_samplers = None
  else:
    train_step, _ = distribute.make_distributed_train_step(run.model, run.optimizer, o, strategy)
    # Each replica draws its own tasks from its own episode stream.
    replica_samplers = [episodes.EpisodeSampler(
        train_split, d.num_classes, d.num_tr_examples_per_class, d.num_val_examples_per_class,
        seed=o.seed, stream=f"train/replica-{r}") for r in range(num_replicas)]
  evaluate_val = make_task_evaluator(config, run.model, val_sampler, o.metavalid_batch_size)
  if run.chief:
    train_writer = tf.summary.create_file_writer(os.path.join(o.checkpoint_path, "train"))
    valid_writer = tf.summary.create_file_writer(os.path.join(o.checkpoint_path, "valid"))
  else:
    train_writer = valid_writer = tf.summary.create_noop_writer()

  progress = Progress(o.num_steps_limit, start, o.metatrain_batch_size,
                      config.progress and run.chief)
  progress.message(
      f"{'Resuming at' if resumed else 'Starting'} step {start} of {o.num_steps_limit}: "
      f"{d.num_classes}-way {d.num_tr_examples_per_class}-shot on {d.dataset_name}/"
      f"{d.embedding_crop} ({train_split.num_classes} train classes, {val_split.num_classes} "
      f"validation classes), meta-batch {o.metatrain_batch_size}.")

  def validate(step: int) -> bool:
    """Meta-validates, keeps the best; returns whether to stop early."""
    accuracies = evaluate_val(o.num_metavalid_tasks)
    mean, ci, _ = confidence_interval(accuracies)
    improved = mean > float(run.best_accuracy.numpy())
    if improved:
      run.best_accuracy.assign(mean)
      run.evals_without_improvement.assign(0)
      run.save_best(mean)
    else:
      run.evals_without_improvement.assign_add(1)
    write_summaries(valid_writer, step, {"accuracy": mean, "accuracy_ci95": ci})
    progress.message(
        f"step {step}: meta-valid accuracy {100 * mean:.2f}% +- {100 * ci:.2f}% over "
        f"{accuracies.size} tasks{' (best so far)' if improved else ''}")
    patience = o.early_stopping_patience
    return bool(patience) and int(run.evals_without_improvement.numpy()) >= patience

  pending: list[outer.StepMetrics] = []
  fallbacks = 0
  warned_nan = False
  step = start
  stopped_early = False
  if step < o.num_steps_limit:
    if replica_samplers is None:
      batches = (ProblemInstance(*p) for p in episodes.make_dataset(
          train_sampler, o.metatrain_batch_size, step, o.num_steps_limit - step))
    else:
      per_replica = o.metatrain_batch_size // num_replicas
      batches = (distribute.split_for_replicas(
          strategy, lambda r, s=s: ProblemInstance(*replica_samplers[r].sample(s, per_replica)))
                 for s in range(step, o.num_steps_limit))
    for problem in batches:
      pending.append(train_step(problem, seeds.step_seed(o.seed, step)))
      step += 1
      run.step.assign(step)
      if step % config.summary_steps == 0 or step == o.num_steps_limit:
        means = {name: float(np.mean([getattr(m, name).numpy() for m in pending]))
                 for name in outer.StepMetrics._fields}
        interval = len(pending)
        num_fallbacks = int(round(means["fallback"] * interval))
        fallbacks += num_fallbacks
        means["fallback"] = float(num_fallbacks)  # count in the interval
        rates = [name for name in ("inner_lr", "finetuning_lr") if hasattr(run.model, name)]
        for name in rates:  # Meta-SGD has only inner_lr (its alpha)
          means[f"{name}_mean"] = float(tf.reduce_mean(getattr(run.model, name)).numpy())
        write_summaries(train_writer, step, means)
        with train_writer.as_default(step=step):
          for name in rates:
            tf.summary.histogram(name, getattr(run.model, name))
        pending.clear()
        text = f"loss {means['loss']:.3f} acc {100 * means['accuracy']:.1f}%"
        if num_fallbacks:
          text += f" NaN fallback {num_fallbacks}/{interval}"
          if not warned_nan:
            warned_nan = True
            progress.message(
                f"Step {step}: a meta-batch had a NaN or Inf loss or gradient; its update was "
                "the L2 fallback's. If this goes on, training has stalled: bound the weight "
                "stddev (--max_weights_stddev, e.g. 10) or lower --inner_lr_init.")
        progress.update(step, text)
      if step % o.checkpoint_steps == 0 or step == o.num_steps_limit:
        stopped_early = validate(step)
        run.save_latest()
        if stopped_early:
          progress.message(f"Early stopping at step {step}: no better meta-validation "
                           f"accuracy in {o.early_stopping_patience} evaluations.")
          break
  train_writer.flush()
  valid_writer.flush()
  if not os.path.isfile(os.path.join(run.path, "best", BEST_POINTER)):
    validate(step)  # e.g. num_steps_limit = 0: the initial model is the best there is
  checksum = float(sum(tf.reduce_sum(tf.abs(tf.cast(v, tf.float64))).numpy()
                       for v in run.model.meta_variables))
  print(f"Meta-trained weights at step {step}: checksum {checksum:.12g}", flush=True)
  if not run.chief:
    run.remove_scratch()
    return {"chief": False, "step": step, "weights_checksum": checksum}
  results = evaluate(config)
  results["weights_checksum"] = checksum
  results.update(stopped_early=stopped_early, nan_fallbacks=fallbacks,
                 checkpoints=os.path.join(o.checkpoint_path, "ckpt"),
                 best_checkpoint=os.path.join(o.checkpoint_path, "best"),
                 summaries=o.checkpoint_path)
  progress.message(
      f"Checkpoints: {results['checkpoints']}\nBest checkpoint: {results['best_checkpoint']}\n"
      f"TensorBoard: tensorboard --logdir {o.checkpoint_path}\nResults: {results['results_file']}")
  return results


def evaluate(config: RunConfig, split: str = "test") -> dict[str, Any]:
  """Evaluates the best checkpoint on `split` (num_metatest_tasks tasks).

  Returns and writes (results_<split>.json beside the checkpoints) the mean
  accuracy and its 95% confidence interval 1.96 sd / sqrt(n).
  """
  d, o = config.data, config.outer
  model = build_model(config)
  if model.meta_variables:
    prefix, record = best_checkpoint(o.checkpoint_path)
    tf.train.Checkpoint(model=model).restore(prefix).expect_partial()
  else:  # the nearest class mean has nothing to restore
    prefix, record = None, {"step": None, "metavalid_accuracy": None}
  eval_split = embeddings.load_split(d, split, config.model.embedding_dim)
  sampler = _eval_sampler(config, eval_split, split)
  evaluate_split = make_task_evaluator(config, model, sampler, o.metatest_batch_size)
  t0 = time.time()
  accuracies = evaluate_split(o.num_metatest_tasks)
  seconds = time.time() - t0
  mean, ci, sd = confidence_interval(accuracies)
  results_file = os.path.join(o.checkpoint_path, f"results_{split}.json")
  results = {
      "split": split, "model_name": config.model_name, "dataset_name": d.dataset_name,
      "embedding_crop": d.embedding_crop,
      "num_classes": d.num_classes, "num_tr_examples_per_class": d.num_tr_examples_per_class,
      "num_val_examples_per_class": sampler.num_val_examples_per_class,
      "num_tasks": int(accuracies.size), "mean_accuracy": mean, "ci95": ci, "sd": sd,
      "checkpoint": prefix, "checkpoint_step": record["step"],
      "metavalid_accuracy": record["metavalid_accuracy"], "seconds": seconds,
      "results_file": results_file,
  }
  write_json_atomically(results_file, results)
  print(f"meta-{split} accuracy {100 * mean:.2f}% +- {100 * ci:.2f}% (95% CI) over "
        f"{accuracies.size} {d.num_classes}-way {d.num_tr_examples_per_class}-shot tasks "
        f"({config.model_name}, best checkpoint step {record['step']}); written to "
        f"{results_file}", flush=True)
  return results
